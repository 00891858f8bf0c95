"""manifest.json: the one reader and writer of an export directory's index (export/FORMAT.md).

The manifest names every file of an export with its sha256 and size, and every model artifact with its
tower, precision (and INT8 variant). Nothing is opened before its size and hash are checked, so a
tampered, truncated or half-copied export fails loudly instead of producing wrong embeddings. Names
are plain file names inside the export directory: a manifest cannot point outside it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
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
MAKE_EXPORT_HINT = ("create one with `wavlink-edge export --size base --out DIR` (pip install 'wavlink-edge[export]'; "
                    "in a checkout: python export/to_onnx.py)")
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
    # the audio graph takes frame_lengths (mixed-length batches); exports made before it existed do not
    frame_lengths: bool = False


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


def artifacts_digest(artifacts: Iterable[ArtifactSpec], *settings: str) -> str:
    """sha256 over the artifacts' (tower, precision, sha256) and the settings that change their outputs: equal
    digests mean equal vectors for equal inputs (what an index and `--resume` compare)."""
    parts = sorted(f"{a.tower}:{a.precision_key}:{a.sha256}" for a in artifacts) + list(settings)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _FieldError(ValueError):
    """A manifest field with a wrong type or range; the message names the field."""


def _field(model: dict, key: str, kind: type, check=None, need: str = "", default=None):
    if key not in model and default is not None:
        return default
    if key not in model:
        raise _FieldError(f"model.{key} is missing")
    value = model[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (check is not None and not check(value)):
        raise _FieldError(f"model.{key} must be {need or kind.__name__}, got {value!r}")
    return value


def _model_spec(model: object) -> ModelSpec:
    """The "model" section, every field type- and range-checked (a lying manifest fails here, by field name)."""
    if not isinstance(model, dict):
        raise _FieldError("model must be an object")
    embed_dim = _field(model, "embed_dim", int, lambda v: 1 <= v <= 65536, "a positive integer")
    dims = model.get("matryoshka_dims")
    if not isinstance(dims, list) or not dims or any(isinstance(d, bool) or not isinstance(d, int) for d in dims) \
            or len(set(dims)) != len(dims) or embed_dim not in dims or not all(1 <= d <= embed_dim for d in dims):
        raise _FieldError(f"model.matryoshka_dims must be distinct integers in 1..embed_dim ({embed_dim}) including "
                          f"embed_dim, got {dims!r}")
    return ModelSpec(
        name=_field(model, "name", str, bool, "a non-empty string"),
        heads=_field(model, "heads", str, default="unknown"),
        embed_dim=embed_dim, matryoshka_dims=tuple(dims),
        n_mels=_field(model, "n_mels", int, lambda v: v in (80, 128), "80 or 128 (Whisper's mel bins)"),
        sample_rate=_field(model, "sample_rate", int, lambda v: v == 16000, "16000 (Whisper's rate)"),
        max_frames=_field(model, "max_frames", int, lambda v: 1 <= v <= 3000, "1..3000 (30 s of Whisper frames)"),
        # 0: an audio-only export (export/mean_pool.py) with no text tower
        text_max_length=_field(model, "text_max_length", int, lambda v: 0 <= v <= 8192, "an integer in 0..8192"),
        clip_policy=_field(model, "clip_policy", str, lambda v: v in ("pad", "trim"), "'pad' or 'trim'", default="pad"),
        frame_lengths=_flag(model, "frame_lengths"),
    )


def _flag(model: dict, key: str) -> bool:
    """An optional true/false field; absent is false."""
    value = model.get(key, False)
    if not isinstance(value, bool):
        raise _FieldError(f"model.{key} must be true or false, got {value!r}")
    return value


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
        self._verification: VerificationCache | None = None
        where = self.export_dir / FILENAME
        try:
            self.model = _model_spec(data["model"])
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
        except _FieldError as exc:
            raise ModelFilesError(f"{where}: {exc}") from None
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
        except RecursionError:
            raise ModelFilesError(f"{path}: nested too deeply to be a manifest") from None
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
            f"{', '.join(self.precisions(tower)) or 'none'}; add it with `wavlink-edge quantize --model {self.export_dir} "
            f"--precision {precision}` (in a checkout: python quantization/quantize.py {self.export_dir} --precision {precision})")

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
        """The bytes of a listed file, size- and hash-checked; loading these very bytes leaves no window for a
        swap. A file the verification cache vouches for (unchanged since it was hashed) is not re-hashed."""
        path, entry = self._listed(name)
        with open(path, "rb") as handle:
            if self.verification.vouches(name, os.fstat(handle.fileno()), entry["sha256"]):
                return handle.read()
            digest, payload = hashlib.sha256(), bytearray()
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
                payload += chunk
            self._compare(name, entry["sha256"], digest.hexdigest())
            self.verification.remember(name, os.fstat(handle.fileno()), entry["sha256"])
        return bytes(payload)

    def verified_path(self, name: str) -> Path:
        """Path of a listed file after checking its size and sha256 (for loaders that must open a path)."""
        path, entry = self._listed(name)
        status = path.stat()
        if not self.verification.vouches(name, status, entry["sha256"]):
            self._compare(name, entry["sha256"], sha256_file(path))
            self.verification.remember(name, status, entry["sha256"])
        return path

    def verify_artifact(self, name: str) -> None:
        """An artifact and its external-data files present and matching the manifest (size, sha256; the
        verification cache may vouch): what loading it would check. Raises ModelFilesError naming the file."""
        artifact = next((a for a in self.artifacts if a.file == name), None)
        for listed in (name, *(artifact.external_data if artifact else ())):
            self.verified_path(listed)

    def verify_all(self) -> list[str]:
        """Re-hash every listed file now, whatever the cache says; the names checked."""
        self.verification.forget()
        names = [name for name, entry in self.files.items() if isinstance(entry, dict) and "sha256" in entry]
        for name in names:
            self.verified_path(name)
        return names

    @property
    def verification(self) -> VerificationCache:
        if self._verification is None:
            self._verification = VerificationCache.for_export(self.export_dir, self.digest)
        return self._verification

    @property
    def digest(self) -> str:
        """sha256 of the manifest as saved: names the export (every artifact's hash is inside it)."""
        return hashlib.sha256((json.dumps(self.data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")).hexdigest()

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


class VerificationCache:
    """Which files were hashed and found right, and their (size, mtime, ctime, inode, device) then.

    Hashing ~170 MB of fp32 graphs costs more than the first embedding, so a file is hashed on first
    load and again only when its stat changes. ctime moves on every write and cannot be set back by a
    user, so an edited byte is always re-hashed. Kept as ``.verified.json`` beside the manifest, or in
    the user cache directory when the export is read-only; a cache that cannot be written only costs time.

    The cache is a shortcut past the sha256 check, so it must not be forgeable by whoever can write the
    export directory: each stamp is an HMAC-SHA256, under a random key private to this user
    (``<user cache>/wavlink-edge/verify.key``, mode 0600), of the file's name, stat, expected sha256 and
    the manifest's digest. Anyone can read a tampered file's stat, but without the key they cannot make
    the stamp that vouches for it, so a forged ``.verified.json`` only means the file is hashed (and
    refused). Without a usable key the cache is off: every load hashes.
    """

    NAME = ".verified.json"
    KEY_FILE = "verify.key"

    def __init__(self, path: Path, manifest_digest: str):
        self.path, self.manifest_digest = path, manifest_digest
        self.key = _user_key()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            valid = isinstance(data, dict) and data.get("manifest_sha256") == manifest_digest
            self.entries = data["files"] if valid and isinstance(data.get("files"), dict) else {}
        except (OSError, ValueError, RecursionError):
            self.entries = {}

    @classmethod
    def for_export(cls, export_dir: Path, manifest_digest: str) -> VerificationCache:
        if os.access(export_dir, os.W_OK):
            return cls(export_dir / cls.NAME, manifest_digest)
        key = hashlib.sha256(str(export_dir.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return cls(_user_cache_dir() / "verified" / f"{key}.json", manifest_digest)

    def _stamp(self, name: str, status: os.stat_result, sha256: str) -> str | None:
        if self.key is None:
            return None
        fields = [name, self.manifest_digest, status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino,
                  status.st_dev, sha256]
        # a digest name, not hashlib.sha256: hmac then runs OpenSSL's HMAC directly
        return hmac.digest(self.key, json.dumps(fields).encode("utf-8", "surrogateescape"), "sha256").hex()

    def vouches(self, name: str, status: os.stat_result, sha256: str) -> bool:
        stamp = self._stamp(name, status, sha256)
        entry = self.entries.get(name)
        return stamp is not None and isinstance(entry, str) and hmac.compare_digest(entry, stamp)

    def remember(self, name: str, status: os.stat_result, sha256: str) -> None:
        stamp = self._stamp(name, status, sha256)
        if stamp is None:
            return
        self.entries[name] = stamp
        self._save()

    def forget(self) -> None:
        self.entries = {}

    def _save(self) -> None:
        text = json.dumps({"manifest_sha256": self.manifest_digest, "files": self.entries}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda handle: handle.write(text.encode("utf-8")))
        except OSError:
            pass  # a read-only cache only means the next load hashes again


def _user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wavlink-edge"


def _user_key() -> bytes | None:
    """This user's verification key: read, or made once (32 random bytes, mode 0600, created exclusively so
    two first runs agree); None if it cannot be had (the cache is then off)."""
    path = _user_cache_dir() / VerificationCache.KEY_FILE
    for _ in range(2):
        try:
            key = path.read_bytes()
            return key if len(key) == 32 else None
        except FileNotFoundError:
            pass
        except OSError:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
            try:
                os.link(tmp, path)  # fails if another process made it first: theirs is used
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:
            return None
    return None
