"""manifest.json: the one reader and writer of an export directory's index (export/FORMAT.md).

The manifest names every file of an export with its sha256 and size, and every model artifact with its
tower, precision (and INT8 variant). Nothing is opened before its size and hash are checked, so a
tampered, truncated or half-copied export fails loudly instead of producing wrong embeddings. Names
are plain file names inside the export directory: a manifest cannot point outside it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from wavlink_edge.runtime.errors import ModelFilesError
from wavlink_edge.runtime.files import atomic_write

FILENAME = "manifest.json"
EXPORT_FORMAT = "wavlink-edge-export"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
TOWERS = ("audio", "text", "lyrics_encoder", "lyrics_decoder", "lyrics_head")  # lyrics: runtime/lyrics.py
INT8_VARIANTS = ("dynamic", "static")
# What a caller may ask for: plain precisions, or an explicit INT8 variant.
PRECISION_CHOICES = ("fp32", "fp16", "int8", "int8_dynamic", "int8_static")
MAKE_EXPORT_HINT = "create one with `python export/to_onnx.py --size base --out DIR` (pip install 'wavlink-edge[export]')"
_HASH_CHUNK = 1 << 20


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
    # ONNX external-data files the graph reads (exports over 2 GB), each listed in the manifest too
    external_data: tuple[str, ...] = ()
    # quantization/ wrote it under its fidelity gate only because --force was given
    below_fidelity_gate: bool = False

    @property
    def precision_key(self) -> str:
        """fp32, fp16, int8_dynamic or int8_static: what PRECISION_CHOICES calls this artifact."""
        return f"{self.precision}_{self.variant}" if self.variant else self.precision


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file_name(name: object) -> str:
    """A manifest key must be a plain file name: no directories, no '..', nothing absolute."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name)):
        raise ModelFilesError(f"manifest names {name!r}: artifact names must be plain file names inside the export directory")
    return name


class Manifest:
    """A validated manifest.json and the directory it describes; reads, verifies, records and saves."""

    def __init__(self, export_dir: str | Path, data: dict):
        self.export_dir = Path(export_dir)
        self.data = data
        where = self.export_dir / FILENAME
        try:
            model = data["model"]
            self.model = ModelSpec(
                name=str(model["name"]), heads=str(model.get("heads", "unknown")),
                embed_dim=int(model["embed_dim"]), matryoshka_dims=tuple(int(d) for d in model["matryoshka_dims"]),
                n_mels=int(model["n_mels"]), sample_rate=int(model["sample_rate"]),
                max_frames=int(model["max_frames"]), text_max_length=int(model["text_max_length"]),
                clip_policy=str(model.get("clip_policy", "pad")),
            )
            if not isinstance(data["artifacts"], dict):
                raise TypeError("'artifacts' is not an object")
            for name, entry in data["artifacts"].items():
                check_file_name(name)
                if not isinstance(entry, dict):
                    raise TypeError(f"entry {name!r} is not an object")
                for extra in entry.get("external_data", ()):
                    check_file_name(extra)
            for artifact in self.artifacts:
                if artifact.tower not in TOWERS or not isinstance(artifact.precision, str) \
                        or not isinstance(artifact.sha256, str) or len(artifact.sha256) != 64:
                    raise ValueError(f"artifact {artifact.file!r}: tower, precision or sha256 is invalid")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFilesError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None

    # -- reading -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, export_dir: str | Path) -> Manifest:
        export_dir = Path(export_dir)
        path = export_dir / FILENAME
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

    @property
    def files(self) -> dict[str, dict]:
        return self.data["artifacts"]

    @property
    def artifacts(self) -> list[ArtifactSpec]:
        return [
            ArtifactSpec(file=name, tower=entry["tower"], precision=entry["precision"], variant=entry.get("variant"),
                         sha256=entry["sha256"], external_data=tuple(entry.get("external_data", ())),
                         below_fidelity_gate=bool((entry.get("fidelity") or {}).get("forced", False)))
            for name, entry in self.files.items() if "tower" in entry
        ]

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

    def path(self, name: str) -> Path:
        """The listed file's path, which must resolve inside the export directory (symlinks included)."""
        check_file_name(name)
        path = self.export_dir / name
        root = self.export_dir.resolve()
        try:
            resolved = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loops
            raise ModelFilesError(f"{path}: cannot resolve ({exc})") from None
        if resolved.parent != root:
            raise ModelFilesError(f"{path}: resolves outside the export directory; refusing to open it")
        return path

    def read_verified(self, name: str) -> bytes:
        """The bytes of a listed file, size- and hash-checked; loading these very bytes leaves no window for a swap."""
        path, entry = self._listed(name)
        digest, payload = hashlib.sha256(), bytearray()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
                payload += chunk
        self._compare(name, entry["sha256"], digest.hexdigest())
        return bytes(payload)

    def verified_path(self, name: str) -> Path:
        """Path of a listed file after checking its size and sha256 (for loaders that must open a path)."""
        path, entry = self._listed(name)
        self._compare(name, entry["sha256"], sha256_file(path))
        return path

    def _listed(self, name: str) -> tuple[Path, dict]:
        entry = self.files.get(name)
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ModelFilesError(f"{self.export_dir}: {name} is not listed with a sha256 in {FILENAME}")
        path = self.path(name)
        if not path.is_file():
            raise ModelFilesError(f"{path} is missing (listed in {FILENAME}); re-export or copy the whole directory")
        # The size first: a manifest pointing at a huge or wrong file fails before anything is read.
        expected, actual = entry.get("bytes"), path.stat().st_size
        if expected is not None and int(expected) != actual:
            raise ModelFilesError(f"{path}: {actual} bytes, the manifest records {expected}: the file was modified "
                                  "or is incomplete; re-export it")
        return path, entry

    def _compare(self, name: str, expected: str, actual: str) -> None:
        if actual != expected:
            raise ModelFilesError(f"{self.export_dir / name}: sha256 mismatch with {FILENAME}: the file was modified "
                                  "or is incomplete; re-export it")

    # -- writing -----------------------------------------------------------------------------------

    @classmethod
    def new(cls, export_dir: str | Path, model: dict, **sections) -> Manifest:
        """An empty manifest for a new export: format header, the model spec, further top-level sections."""
        data = {"format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, **sections, "model": model, "artifacts": {}}
        return cls(export_dir, data)

    def record(self, name: str, payload: bytes | None = None, **fields) -> dict:
        """List a file with its sha256 and size: of ``payload`` (the bytes that were validated) when given,
        else of the file on disk. Replaces an earlier entry of that name."""
        check_file_name(name)
        if payload is None:
            path = self.path(name)
            entry = {**fields, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        else:
            entry = {**fields, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
        self.files[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self.files.pop(name, None)

    def save(self) -> Path:
        """Write manifest.json atomically (a reader sees the old or the new one, never half of one)."""
        text = json.dumps(self.data, indent=2, ensure_ascii=False) + "\n"
        return atomic_write(self.export_dir / FILENAME, lambda handle: handle.write(text.encode("utf-8")))
