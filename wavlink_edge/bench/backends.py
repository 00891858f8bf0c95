"""Every embedder the benchmark compares, behind one interface: `runner.audio(waves, policy)` / `runner.text(texts)`.

Rows are discovered, not hard-coded: ONNX artifacts come from the export's manifest (tower, precision,
variant), execution providers from what this onnxruntime build offers, so quantized files and CUDA /
TensorRT rows appear as soon as they exist. Peers (CTranslate2's Whisper encoder on the same weights,
sentence-transformers MiniLM) answer "what would I get without WavLink Edge".

All audio rows start from 16 kHz waveforms and share one numpy log-mel front end, so the front end's
cost is in every row alike; text rows include tokenization.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wavlink_edge.runtime import WavLink, vectors
from wavlink_edge.runtime.errors import ModelFilesError
from wavlink_edge.runtime.features import (
    CHUNK_FRAMES,
    SAMPLE_RATE,  # noqa: E402,F401  (the one definition; re-exported for bench)
    clip_features,
    trim_frames,
)
from wavlink_edge.runtime.manifest import Manifest
from wavlink_edge.runtime.session import OnnxSession
from wavlink_edge.runtime.text import TextTokenizer

CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@dataclass(frozen=True)
class Spec:
    key: str  # stable id, also the file-name-safe row id
    label: str  # what tables show
    tower: str  # audio | text
    engine: str  # pytorch | onnxruntime | ctranslate2 | sentence-transformers
    precision: str  # fp32 | fp16 | int8
    variant: str | None = None  # int8: dynamic | static; ct2: compute_type
    device: str = "cpu"  # cpu | cuda | tensorrt
    artifact: str | None = None  # export file (onnxruntime rows)
    reference: bool = False  # the PyTorch row every ratio is taken against
    peer: bool = False  # not WavLink's graph: a different model or encoder pass (FLOPs differ)

    def to_dict(self) -> dict:
        return asdict(self)


def load_manifest(export_dir: Path) -> dict:
    """The export's manifest (read and validated by the runtime's Manifest) as a dict."""

    return Manifest.load(export_dir).data


def onnx_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return [p for p in (CPU_EP, CUDA_EP, TRT_EP) if p in ort.get_available_providers()]


def _cuda_devices() -> tuple[bool, bool]:
    """(torch sees CUDA, CTranslate2 sees CUDA) without importing torch in the parent process."""
    import subprocess
    import sys

    if shutil.which("nvidia-smi") is None:
        return False, False
    code = "import torch, ctranslate2; print(torch.cuda.is_available(), ctranslate2.get_cuda_device_count() > 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    parts = out.stdout.split()
    return (parts[:1] == ["True"], parts[1:2] == ["True"]) if len(parts) == 2 else (False, False)


def discover(export_dir: Path, towers=("audio", "text"), peers: bool = True, gpu: bool | None = None) -> list[Spec]:
    """The backend rows for an export on this host, reference first."""
    manifest = load_manifest(export_dir)
    providers = onnx_providers()
    torch_cuda, ct2_cuda = _cuda_devices() if gpu is not False else (False, False)
    specs: list[Spec] = []
    for tower in towers:
        specs.append(Spec(f"pytorch-{tower}-fp32", "PyTorch eager fp32 (reference)", tower, "pytorch", "fp32",
                          reference=True))
        if torch_cuda:
            specs.append(Spec(f"pytorch-{tower}-fp32-cuda", "PyTorch eager fp32 CUDA", tower, "pytorch", "fp32",
                              device="cuda"))
        artifacts = [(name, a) for name, a in manifest["artifacts"].items() if a.get("tower") == tower]
        order = {"fp32": 0, "fp16": 1, "int8": 2}
        artifacts.sort(key=lambda item: (order.get(item[1]["precision"], 9), item[1].get("variant") or ""))
        for provider in providers:
            device = {CPU_EP: "cpu", CUDA_EP: "cuda", TRT_EP: "tensorrt"}[provider]
            for name, a in artifacts:
                precision, variant = a["precision"], a.get("variant")
                label = f"ORT {precision}{'-' + variant if variant else ''} {provider.replace('ExecutionProvider', '')}"
                key = f"ort-{device}-{tower}-{precision}{'-' + variant if variant else ''}"
                specs.append(Spec(key, label, tower, "onnxruntime", precision, variant,
                                  device, artifact=name))
        if peers and tower == "audio":
            types = [("int8", "int8"), ("float32", "fp32")] + ([("int8_float16", "int8"), ("float16", "fp16")]
                                                                 if ct2_cuda else [])
            for compute_type, precision in types:
                for device in ("cpu", "cuda") if ct2_cuda else ("cpu",):
                    if device == "cpu" and "16" in compute_type:
                        continue
                    specs.append(Spec(f"ct2-{device}-{compute_type}", f"CTranslate2 Whisper.encode {compute_type}"
                                      f"{' CUDA' if device == 'cuda' else ''} (peer)", "audio", "ctranslate2",
                                      precision, compute_type, device, peer=True))
        if peers and tower == "text":
            specs.append(Spec("st-text-fp32", "sentence-transformers MiniLM fp32 (peer)", "text",
                              "sentence-transformers", "fp32", peer=True))
    return specs


# --- shared inputs --------------------------------------------------------------------------------

def mel_batch(waves: list[np.ndarray], n_mels: int, policy: str) -> np.ndarray:

    mels = [clip_features(w, n_mels, policy) for w in waves]
    if len({m.shape[-1] for m in mels}) != 1:
        raise ValueError("a batch must share one frame count (embed trim-policy clips of other lengths one by one)")
    return np.stack(mels)


def frames_for(seconds: float, policy: str) -> int:

    return trim_frames(int(round(seconds * SAMPLE_RATE))) if policy == "trim" else CHUNK_FRAMES


# --- the PyTorch reference -----------------------------------------------------------------------

def load_reference(export_dir: Path, checkpoint: Path | None = None):
    """The PyTorch model the export was made from: a checkpoint, or the built-in default base.

    Refuses a model whose config differs from the export's config.json: ratios and fidelity against
    the wrong reference would be meaningless.
    """
    from wavlink_edge.export.model import WavLinkModel  # optional dependency: torch, for the PyTorch rows only

    export_dir = Path(export_dir)
    if checkpoint is None and (export_dir / "model.safetensors").is_file():
        checkpoint = export_dir
    if checkpoint is not None:
        model = WavLinkModel.from_pretrained(checkpoint)
    else:
        from wavlink_edge.export.backbones import build_default_base  # optional dependency: torch, for the PyTorch rows only

        model, _ = build_default_base()
    exported = {k: v for k, v in json.loads((export_dir / "config.json").read_text()).items() if k != "model_type"}
    if json.loads(json.dumps(model.config.to_dict())) != exported:
        raise ModelFilesError(f"the PyTorch reference ({'checkpoint ' + str(checkpoint) if checkpoint else 'built-in default base'}) "
                         f"does not match {export_dir}/config.json (name/heads/policy differ): pass --checkpoint DIR, "
                         "the checkpoint the export was made from")
    check_reference_matches(model.eval(), export_dir)
    return model


def check_reference_matches(model, export_dir: Path, min_cosine: float = 0.9999) -> None:
    """Same config is not same weights (e.g. an export made before a backbone fix): compare the reference
    with the fp32 audio.onnx on one input, so a stale export fails here instead of skewing every figure."""
    import torch

    mel = np.random.default_rng(0).standard_normal((1, model.config.audio.n_mels, 200)).astype(np.float32)
    with torch.inference_mode():
        ref = model.audio(torch.from_numpy(mel)).numpy()[0]
    got = OnnxSession(Path(export_dir) / "audio.onnx", name="audio.onnx").run({"input_features": mel})[0]
    cosine = float(vectors.cosine(ref, got))
    if cosine < min_cosine:
        raise ModelFilesError(f"{export_dir}/audio.onnx does not match the PyTorch reference (cosine {cosine:.5f} < "
                         f"{min_cosine}): re-export, or pass --checkpoint with the checkpoint it was made from")


def ct2_whisper_dir() -> Path:
    """The split CTranslate2 whisper-base joined once into a cache dir (a faster-whisper user has it whole)."""
    from wavlink_edge.export.backbones import ct2_whisper_base_dir  # optional dependency: torch (export stage), for the CTranslate2 rows only

    return ct2_whisper_base_dir(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wavlink-edge" / "ct2-whisper-base")


def minilm_dir() -> Path:
    from wavlink_edge.export.backbones import minilm_dir as _minilm  # optional dependency: torch (export stage)

    return _minilm()


def model_bytes(spec: Spec, export_dir: Path) -> tuple[int, str]:
    """Size on disk of what the row loads, and what that size covers."""
    export_dir = Path(export_dir)
    if spec.engine == "onnxruntime":
        return (export_dir / spec.artifact).stat().st_size, spec.artifact
    if spec.engine == "ctranslate2":
        return (ct2_whisper_dir() / "model.bin").stat().st_size, "CT2 model.bin (fp16-stored; includes the Whisper decoder)"
    if spec.engine == "sentence-transformers":
        return (minilm_dir() / "model.safetensors").stat().st_size, "MiniLM model.safetensors"
    fp32 = export_dir / f"{spec.tower}.onnx"  # same fp32 weights as the PyTorch tower holds
    return fp32.stat().st_size, f"fp32 weights of the {spec.tower} tower (= {spec.tower}.onnx)"


# --- runners ---------------------------------------------------------------------------------------

class Runner:
    """Loaded backend. `audio(waves, policy)` -> [B, D] or frame states (peers); `text(texts)` -> [B, D]."""

    def __init__(self, spec: Spec, export_dir: Path, threads: int, checkpoint: Path | None = None):
        self.spec, self.export_dir, self.threads = spec, Path(export_dir), threads
        self.manifest = load_manifest(export_dir)
        self.n_mels = self.manifest["model"]["n_mels"]
        self.checkpoint = checkpoint
        self.notes: list[str] = []
        getattr(self, f"_load_{spec.engine.replace('-', '_')}")()

    # pytorch
    def _load_pytorch(self):
        import torch

        torch.set_num_threads(self.threads)
        self._torch = torch
        self.model = load_reference(self.export_dir, self.checkpoint).to(self.spec.device)

        self.tokenizer = TextTokenizer.from_json((self.export_dir / "tokenizer.json").read_text(encoding="utf-8"))

    def _torch_audio(self, waves, policy):
        mel = self._torch.from_numpy(mel_batch(waves, self.n_mels, policy)).to(self.spec.device)
        with self._torch.inference_mode():
            out = self.model.audio(mel)
        return out.float().cpu().numpy()

    def _torch_text(self, texts):
        feeds = self.tokenizer.feeds(list(texts))
        ids = self._torch.from_numpy(feeds["input_ids"]).to(self.spec.device)
        mask = self._torch.from_numpy(feeds["attention_mask"]).to(self.spec.device)
        with self._torch.inference_mode():
            return self.model.text(ids, mask).float().cpu().numpy()

    # onnxruntime, through the runtime users call
    def _load_onnxruntime(self):

        provider = {"cpu": CPU_EP, "cuda": CUDA_EP, "tensorrt": TRT_EP}[self.spec.device]
        precision = f"int8_{self.spec.variant}" if self.spec.precision == "int8" else self.spec.precision
        # threads pins ORT's intra-op pool to the benchmark's thread count (all backends get the same)
        self.wavlink = WavLink.from_pretrained(self.export_dir, precision=precision, providers=[provider],
                                               threads=self.threads if self.spec.device == "cpu" else None)

    def _model(self, policy):
        """The policy is a plain attribute of the runtime model: switch it instead of loading twice."""
        self.wavlink.clip_policy = policy or self.manifest["model"]["clip_policy"]
        return self.wavlink

    def _ort_audio(self, waves, policy):
        return self._model(policy).embed_audio([(w, SAMPLE_RATE) for w in waves], batch_size=len(waves))

    def _ort_text(self, texts):
        return self._model(None).embed_text(list(texts), batch_size=len(texts))

    # peers
    def _load_ctranslate2(self):
        import ctranslate2

        self._ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(str(ct2_whisper_dir()), device=self.spec.device,
                                                compute_type=self.spec.variant, intra_threads=self.threads,
                                                inter_threads=1)

    def _ct2_audio(self, waves, policy):
        out = self.model.encode(self._ct2.StorageView.from_array(mel_batch(waves, self.n_mels, policy)))
        return np.asarray(out) if self.spec.device == "cpu" else np.asarray(out.to_device(self._ct2.Device.cpu))

    def _load_sentence_transformers(self):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.threads)
        self.model = SentenceTransformer(str(minilm_dir()), device=self.spec.device, local_files_only=True)

    def _st_text(self, texts):
        return self.model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True,
                                 show_progress_bar=False)

    # dispatch
    def audio(self, waves, policy: str) -> np.ndarray:
        return {"pytorch": self._torch_audio, "onnxruntime": self._ort_audio,
                "ctranslate2": self._ct2_audio}[self.spec.engine](waves, policy)

    def text(self, texts) -> np.ndarray:
        return {"pytorch": self._torch_text, "onnxruntime": self._ort_text,
                "sentence-transformers": self._st_text}[self.spec.engine](texts)
