"""WavLink reference model in PyTorch: the source of truth every exported artifact is checked against.

Audio tower (arXiv 2601.15118): Whisper conv front end + positional embedding, one learnable global
token joining the frame sequence, the Whisper transformer stack, final LayerNorm, the token's state
through a linear projector, L2 normalisation. Text tower: a BERT-style sentence encoder (mean pooling)
or CLIP text (EOS pooling), each with a projector.

Audio layer and parameter names follow transformers' `WhisperEncoder`, so HF checkpoints, CTranslate2
files (see ct2.py) and our own checkpoints share one loader.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIZES = ("base", "small", "large")
HEADS_UNTRAINED = "untrained"
HEADS_TRAINED = "trained"


@dataclass
class AudioDims:
    n_mels: int = 80
    n_ctx: int = 1500  # positions after the stride-2 conv: 3000 frames -> 1500
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    ffn_dim: int = 2048


@dataclass
class TextSpec:
    kind: str = "bert"  # "bert" (mean pooling) or "clip" (EOS pooling)
    backbone: dict = field(default_factory=dict)  # the transformers config of the backbone, as a dict
    max_length: int = 256
    pad_token_id: int = 0


@dataclass
class WavLinkConfig:
    size: str = "base"
    name: str = "wavlink-base"
    embed_dim: int = 512
    matryoshka_dims: list = field(default_factory=lambda: [512, 256, 128, 64])
    audio: AudioDims = field(default_factory=AudioDims)
    text: TextSpec = field(default_factory=TextSpec)
    global_token_position: str = "first"  # "first" (the paper's "prepended") or "last"
    # Index of the encoder layer at whose input the token joins the frames: 0 = the paper's (whole stack);
    # n_layers - 1 = only the last layer sees it, so trained heads can sit on frozen, cached frame states.
    global_token_layer: int = 0
    heads: str = HEADS_UNTRAINED  # "untrained" until trained heads are loaded
    clip_policy: str = "pad"  # input-length policy the heads were trained for: "pad" or "trim"
    sources: list = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.audio, dict):
            self.audio = AudioDims(**self.audio)
        if isinstance(self.text, dict):
            self.text = TextSpec(**self.text)
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        if self.global_token_position not in ("first", "last"):
            raise ValueError(f"global_token_position must be 'first' or 'last', not {self.global_token_position!r}")
        if not 0 <= self.global_token_layer < self.audio.n_layers:
            raise ValueError(f"global_token_layer must be in [0, {self.audio.n_layers}), not {self.global_token_layer!r}")
        if self.text.kind not in ("bert", "clip"):
            raise ValueError(f"text kind must be 'bert' or 'clip', not {self.text.kind!r}")
        if self.matryoshka_dims[0] != self.embed_dim or any(d > self.embed_dim for d in self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims} must start at embed_dim {self.embed_dim}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WavLinkConfig:
        d = {k: v for k, v in d.items() if k != "model_type"}
        return cls(**d)


# Backbone shapes per size (the published Whisper encoders). The text backbone config comes from the checkpoint.
AUDIO_DIMS = {
    "base": AudioDims(n_mels=80, d_model=512, n_heads=8, n_layers=6, ffn_dim=2048),
    "small": AudioDims(n_mels=80, d_model=768, n_heads=12, n_layers=12, ffn_dim=3072),
    "large": AudioDims(n_mels=128, d_model=1280, n_heads=20, n_layers=32, ffn_dim=5120),
}
EMBED_DIM = {"base": 512, "small": 512, "large": 768}


def matryoshka_dims(embed_dim: int) -> list[int]:
    return [embed_dim // k for k in (1, 2, 4, 8)]


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)  # Whisper's key projection has no bias
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys [B, h, d_head, T] (pre-scaled) and values [B, h, T, d_head] of `context`."""
        b, _, d = context.shape
        # Scale q and k by d_head^-1/4 each (as openai/whisper does) so q.k stays small in fp16.
        k = (self.k_proj(context) * (d // self.n_heads) ** -0.25).view(b, -1, self.n_heads, d // self.n_heads)
        v = self.v_proj(context).view(b, -1, self.n_heads, d // self.n_heads)
        return k.permute(0, 2, 3, 1), v.transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None, key_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Attention of `query` positions [B, Q, d] over all `context` positions [B, T, d].

        `key_mask` [B, T] (True = real position) serves padded batches: cached training batches and the
        exported graph's `frame_lengths`; precomputed `kv` exists for training only.
        """
        b, q_len, d = query.shape
        h = self.n_heads
        q = (self.q_proj(query) * (d // h) ** -0.25).view(b, q_len, h, -1).transpose(1, 2)
        k, v = kv if kv is not None else self.keys_values(context)
        scores = (q @ k).float()
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).to(q.dtype)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, q_len, d))


class EncoderLayer(nn.Module):
    def __init__(self, dims: AudioDims):
        super().__init__()
        self.self_attn = MultiHeadAttention(dims.d_model, dims.n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dims.d_model)
        self.fc1 = nn.Linear(dims.d_model, dims.ffn_dim)
        self.fc2 = nn.Linear(dims.ffn_dim, dims.d_model)
        self.final_layer_norm = nn.LayerNorm(dims.d_model)

    def forward(self, x: torch.Tensor, query_index: int | None = None, key_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Pre-LN block. With `query_index`, only that position is computed (keys/values from all, or
        the given `kv`, in which case `x` may hold just the query position)."""
        normed = self.self_attn_layer_norm(x)
        if query_index is None:
            residual, query = x, normed
        else:
            residual = x[:, query_index : query_index + 1] if query_index >= 0 else x[:, query_index:]
            query = normed[:, query_index : query_index + 1] if query_index >= 0 else normed[:, query_index:]
        h = residual + self.self_attn(query, normed, key_mask, kv)
        return h + self.fc2(F.gelu(self.fc1(self.final_layer_norm(h))))


class AudioTower(nn.Module):
    def __init__(self, dims: AudioDims, embed_dim: int, global_token_position: str = "first", global_token_layer: int = 0):
        super().__init__()
        self.dims = dims
        self.token_layer = global_token_layer
        self.token_index = 0 if global_token_position == "first" else -1
        self.conv1 = nn.Conv1d(dims.n_mels, dims.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.d_model, dims.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(dims.n_ctx, dims.d_model)
        self.layers = nn.ModuleList(EncoderLayer(dims) for _ in range(dims.n_layers))
        self.layer_norm = nn.LayerNorm(dims.d_model)
        self.global_token = nn.Parameter(torch.randn(dims.d_model) * 0.02)
        self.projector = nn.Linear(dims.d_model, embed_dim)

    def embed_frames(self, mel: torch.Tensor) -> torch.Tensor:
        """Conv front end + positional embedding sliced to the frame count: [B, n_mels, F] -> [B, F/2, d]."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        return x + self.embed_positions.weight[: x.shape[1]]

    def frame_states(self, mel: torch.Tensor) -> torch.Tensor:
        """Plain Whisper encoder output (no global token): checks against HF and CTranslate2."""
        x = self.embed_frames(mel)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)

    def with_global_token(self, frames: torch.Tensor) -> torch.Tensor:
        token = self.global_token.to(frames.dtype).expand(frames.shape[0], 1, -1)
        return torch.cat([token, frames] if self.token_index == 0 else [frames, token], dim=1)

    def penultimate_states(self, mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input of the last layer, global token included: what the last-layer pooler is trained on."""
        x = self.frames_before_token(mel, frame_mask)
        x = self.with_global_token(x)
        key_mask = self.with_token_mask(frame_mask)
        for layer in self.layers[self.token_layer : -1]:
            x = layer(x, key_mask=key_mask)
        return x

    def frames_before_token(self, mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Frame states at the input of layer `token_layer`: they do not depend on the token."""
        x = self.embed_frames(mel)
        for layer in self.layers[: self.token_layer]:
            x = layer(x, key_mask=frame_mask)
        return x

    def masked_input(self, mel: torch.Tensor, frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch as each clip alone sees it: (mel zeroed past each clip's length, key mask [B, F/2]).

        Alone, conv1 (kernel 3, padding 1) reads one zero frame past a clip's end: zeroing the padded mel
        frames makes that frame zero in the batch too. For an even length conv2 (stride 2) never reads
        past conv1's valid outputs, so a clip's first length/2 positions are exactly its own; odd lengths
        are not exact (the runtime batches them only with their own length). Every layer then masks the
        padded positions as keys (frames attend each other in all layers, not only the token); the rest
        (LayerNorm, GELU, projector) is per position.
        """
        frames = torch.arange(mel.shape[-1], device=mel.device)
        mel = mel * (frames < frame_lengths[:, None]).to(mel.dtype)[:, None, :]
        positions = torch.arange((mel.shape[-1] + 1) // 2, device=mel.device)
        return mel, positions < (frame_lengths[:, None] + 1) // 2

    def with_token_mask(self, frame_mask: torch.Tensor | None) -> torch.Tensor | None:
        if frame_mask is None:
            return None
        token = torch.ones_like(frame_mask[:, :1])
        return torch.cat([token, frame_mask] if self.token_index == 0 else [frame_mask, token], dim=1)

    def pooled_state(self, penultimate: torch.Tensor, prune_last_layer: bool = True,
                     key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The global token's final state (after the last layer and LayerNorm), before the projector."""
        if prune_last_layer:
            token = self.layers[-1](penultimate, query_index=self.token_index, key_mask=key_mask)[:, 0]
        else:
            token = self.layers[-1](penultimate, key_mask=key_mask)[:, self.token_index]
        return self.layer_norm(token)

    def pool(self, penultimate: torch.Tensor, prune_last_layer: bool = True,
             key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last layer + final LayerNorm + projector + L2 from the penultimate states."""
        return F.normalize(self.projector(self.pooled_state(penultimate, prune_last_layer, key_mask)), dim=-1)

    def forward(self, mel: torch.Tensor, prune_last_layer: bool = True,
                frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of a batch of log-mels; `frame_lengths` [B] (mel frames) makes a padded batch of
        clips of different lengths give each clip its own embedding (see `masked_input`)."""
        if mel.shape[-1] > 2 * self.dims.n_ctx:
            raise ValueError(f"at most {2 * self.dims.n_ctx} frames, got {mel.shape[-1]}")
        frame_mask = None
        if frame_lengths is not None:
            mel, frame_mask = self.masked_input(mel, frame_lengths)
        penultimate = self.penultimate_states(mel, frame_mask)
        return self.pool(penultimate, prune_last_layer, self.with_token_mask(frame_mask))


class TextTower(nn.Module):
    def __init__(self, spec: TextSpec, embed_dim: int):
        super().__init__()
        from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

        self.kind = spec.kind
        if spec.kind == "bert":
            self.backbone = BertModel(BertConfig(**spec.backbone), add_pooling_layer=False)
            hidden = self.backbone.config.hidden_size
            self.projector = nn.Linear(hidden, embed_dim)
        else:  # CLIP: its own text_projection (no bias) is the projector
            self.backbone = CLIPTextModel(CLIPTextConfig(**spec.backbone))
            self.projector = nn.Linear(self.backbone.config.hidden_size, embed_dim, bias=False)
        self.backbone.config._attn_implementation = "eager"  # plain MatMul/Softmax graph for ONNX

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence vector before the projector: masked mean (BERT) or the EOS state (CLIP)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        if self.kind == "clip":
            return out.pooler_output
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.pooled(input_ids, attention_mask)), dim=-1)


class WavLinkModel(nn.Module):
    def __init__(self, config: WavLinkConfig):
        super().__init__()
        self.config = config
        self.audio = AudioTower(config.audio, config.embed_dim, config.global_token_position, config.global_token_layer)
        self.text = TextTower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.audio(mel)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)

    # --- checkpoints: config.json + model.safetensors + tokenizer.json ---------------------------

    def save_pretrained(self, directory: str | Path, tokenizer_json: str | Path | None = None) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"model_type": "wavlink", **self.config.to_dict()}, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        if tokenizer_json is not None:
            (directory / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WavLinkModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        for required in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (directory / required).is_file():
                raise FileNotFoundError(
                    f"{directory} is not a WavLink checkpoint: {required} is missing "
                    "(expected config.json, model.safetensors, tokenizer.json)"
                )
        raw = json.loads((directory / "config.json").read_text())
        if raw.get("model_type") != "wavlink":
            raise ValueError(f"{directory}/config.json has model_type {raw.get('model_type')!r}, expected 'wavlink'")
        model = cls(WavLinkConfig.from_dict(raw))
        missing, unexpected = model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {directory} does not fit its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model.eval()

    def load_weights(self, state: dict, prefix_map: dict[str, str] | None = None, strict_keys: bool = True) -> list[str]:
        """Copy numpy/torch tensors into the model by name; returns the names loaded."""
        own = self.state_dict()
        loaded = []
        for name, value in state.items():
            target = name
            for src, dst in (prefix_map or {}).items():
                if name.startswith(src):
                    target = dst + name[len(src):]
                    break
            if target not in own:
                if strict_keys:
                    raise KeyError(f"weight {name!r} (-> {target!r}) has no place in this model")
                continue
            tensor = torch.as_tensor(value)
            if tuple(tensor.shape) != tuple(own[target].shape):
                raise ValueError(f"weight {name!r}: shape {tuple(tensor.shape)} != model's {tuple(own[target].shape)}")
            own[target].copy_(tensor.to(own[target].dtype))
            loaded.append(target)
        return loaded
