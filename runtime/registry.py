"""Model specs from an export directory's manifest.json (export/FORMAT.md), with integrity checks.

The manifest is the registry: it names every artifact with its tower, precision (and INT8 variant) and
sha256. Nothing is opened before its hash is checked, so a tampered or half-copied export fails loudly
instead of producing wrong embeddings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from wavlink_edge.runtime.errors import ModelFilesError

EXPORT_FORMAT = "wavlink-edge-export"
SUPPORTED_FORMAT_VERSIONS = (1,)
TOWERS = ("audio", "text")
INT8_VARIANTS = ("dynamic", "static")
# What a caller may ask for: plain precisions, or an explicit INT8 variant.
PRECISION_CHOICES = ("fp32", "fp16", "int8", "int8_dynamic", "int8_static")
MAKE_EXPORT_HINT = "create one with `python export/to_onnx.py --size base --out DIR` (pip install 'wavlink-edge[export]')"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    heads: str
    embed_dim: int
    matryoshka_dims: tuple[int, ...]
    n_mels: int
    sample_rate: int
    max_frames: int
    text_max_length: int
    clip_policy: str


@dataclass(frozen=True)
class ArtifactSpec:
    file: str
    tower: str
    precision: str  # fp32 | fp16 | int8
    variant: str | None  # dynamic | static for int8
    sha256: str
    # quantization/ wrote it under its fidelity gate only because --force was given
    below_fidelity_gate: bool = False

    @property
    def precision_key(self) -> str:
        """fp32, fp16, int8_dynamic or int8_static: what PRECISION_CHOICES calls this artifact."""
        return f"{self.precision}_{self.variant}" if self.variant else self.precision


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ExportManifest:
    """A validated manifest.json plus the directory it describes."""

    def __init__(self, export_dir: Path, data: dict):
        self.export_dir = export_dir
        self.data = data
        try:
            model = data["model"]
            self.model = ModelSpec(
                name=str(model["name"]), heads=str(model.get("heads", "unknown")),
                embed_dim=int(model["embed_dim"]), matryoshka_dims=tuple(int(d) for d in model["matryoshka_dims"]),
                n_mels=int(model["n_mels"]), sample_rate=int(model["sample_rate"]),
                max_frames=int(model["max_frames"]), text_max_length=int(model["text_max_length"]),
                clip_policy=str(model.get("clip_policy", "pad")),
            )
            self.files = {name: dict(entry) for name, entry in data["artifacts"].items()}
            self.artifacts = [
                ArtifactSpec(file=name, tower=entry["tower"], precision=entry["precision"],
                             variant=entry.get("variant"), sha256=entry["sha256"],
                             below_fidelity_gate=bool((entry.get("fidelity") or {}).get("forced", False)))
                for name, entry in self.files.items() if "tower" in entry
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFilesError(f"{export_dir / 'manifest.json'}: malformed manifest ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, export_dir: str | Path) -> "ExportManifest":
        export_dir = Path(export_dir)
        path = export_dir / "manifest.json"
        if not export_dir.is_dir():
            raise ModelFilesError(f"export directory {export_dir} does not exist: {MAKE_EXPORT_HINT}")
        if not path.is_file():
            raise ModelFilesError(f"{path} is missing: {export_dir} is not a WavLink Edge export ({MAKE_EXPORT_HINT})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFilesError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ModelFilesError(f"{path}: format {found!r} is not {EXPORT_FORMAT!r}")
        version = data.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ModelFilesError(
                f"{path}: format_version {version!r} is not supported by this runtime "
                f"(supports {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); re-export the model with a matching "
                "wavlink-edge version or upgrade the runtime")
        return cls(export_dir, data)

    def precisions(self, tower: str) -> list[str]:
        return sorted({a.precision_key for a in self.artifacts if a.tower == tower})

    def find_artifact(self, tower: str, precision: str, variant: str | None = None) -> ArtifactSpec:
        for artifact in self.artifacts:
            if artifact.tower == tower and artifact.precision == precision and (variant is None or artifact.variant == variant):
                return artifact
        wanted = f"{precision}_{variant}" if variant else precision
        raise ModelFilesError(
            f"{self.export_dir}: no {tower} artifact with precision {wanted!r}; the manifest has "
            f"{', '.join(self.precisions(tower)) or 'none'} (add others with the quantization step)")

    def verified_path(self, name: str) -> Path:
        """Path of a listed file after checking its sha256 (for loaders that must open a path)."""
        path, expected = self._listed(name)
        actual = sha256_file(path)
        self._compare(name, expected, actual)
        return path

    def read_verified(self, name: str) -> bytes:
        """The bytes of a listed file, hash-checked; loading these very bytes leaves no window for a swap."""
        path, expected = self._listed(name)
        payload = path.read_bytes()
        self._compare(name, expected, hashlib.sha256(payload).hexdigest())
        return payload

    def _listed(self, name: str) -> tuple[Path, str]:
        entry = self.files.get(name)
        if not entry or "sha256" not in entry:
            raise ModelFilesError(f"{self.export_dir}: {name} is not listed with a sha256 in manifest.json")
        path = self.export_dir / name
        if not path.is_file():
            raise ModelFilesError(f"{path} is missing (listed in manifest.json); re-export or copy the whole directory")
        return path, entry["sha256"]

    def _compare(self, name: str, expected: str, actual: str) -> None:
        if actual != expected:
            raise ModelFilesError(f"{self.export_dir / name}: sha256 mismatch (manifest {expected[:12]}…, file "
                                  f"{actual[:12]}…): the file was modified or is incomplete; re-export it")
