"""A searchable index of a sound library: ``WavLinkIndex`` and the ``wavlink-edge index`` / ``search`` commands.

    wavlink-edge index sounds/ --model exports/wavlink-base --out sounds.idx      # again later: only what changed
    wavlink-edge search sounds.idx "a dog barking" -k 10 [--json]
    wavlink-edge search sounds.idx --audio clip.wav                            # audio -> audio

An index directory holds
  index.json     the model it was built with (name, heads, digest of the artifacts in use, precision, clip
                 policy, window hop, export directory), the dims, the ANN parameters and every other file's sha256
  entries.jsonl  row i: {"source", "size", "mtime_ns", "ctime_ns", "inode"} (absolute paths; any of them moving
                 says "changed": ctime moves on every write and cannot be set back, so an edit that keeps size
                 and mtime is still seen). JSON escapes keep every name: a file name that is not valid UTF-8
                 is stored as its surrogate escapes (\udc80-\udcff), os.fsencode(source) gives its bytes back
  checkpoint.jsonl  while `index` runs: every embedded file's row and vector, flushed per batch, so a killed
                 run's vectors are reused by the next; removed once the index is saved
  .<dir>.lock    beside the directory: one writer at a time (a second `index` refuses, or waits with --wait)
  vectors.npy    [N, full dim] float32, the truth: re-ranking, exact search and ANN rebuilds read it
  ann.faiss      a faiss HNSW graph over the first ``search_dim`` dims (re-normalised), ids = rows, in
                 faiss's own serialisation (no pickle anywhere)
Matryoshka: the graph may index a prefix (say 128 of 512 dims, a quarter of the memory and distance cost);
its ``candidates`` best hits are re-ranked at full width from vectors.npy.
faiss-cpu is an extra (`pip install 'wavlink-edge[index]'`, wheels for x86-64 and aarch64), imported when an
ANN graph is built or searched; exact search needs numpy only.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wavlink_edge.runtime.errors import UsageError, WavLinkError
from wavlink_edge.runtime.features import SAMPLE_RATE
from wavlink_edge.runtime.files import atomic_write, hold_point
from wavlink_edge.runtime.inputs import expand_inputs
from wavlink_edge.runtime.manifest import PRECISION_CHOICES
from wavlink_edge.runtime.model import WavLink
from wavlink_edge.runtime.outputs import exclusive_lock, json_row
from wavlink_edge.runtime.vectors import normalize

INDEX_FORMAT = "wavlink-edge-index"
INDEX_VERSION = 1
FILES = ("entries.jsonl", "vectors.npy", "ann.faiss")
# HNSW parameters (faiss defaults: M 32, efConstruction 40, efSearch 16). On 100 000 vectors (bench/results/scale.md)
# efSearch 128 gave recall@10 0.975 at 0.8 ms p50 (64: 0.942 at 0.6 ms); a 128-dim graph needed 400 candidates
# re-ranked at full width for 0.961 (100: 0.761).
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 128, 128
RERANK_CANDIDATES = 40  # per wanted hit, when the graph holds a Matryoshka prefix


class IndexFileError(WavLinkError):
    """The index directory is missing, damaged, or from another model than the query's."""


def _faiss(searching: bool = True):
    try:
        import faiss
    except ImportError:
        advice = " (or search with --exact, numpy only)" if searching else ""
        raise IndexFileError(f"the vector index needs faiss-cpu: pip install 'wavlink-edge[index]'{advice}") from None
    return faiss


REBUILD = "rebuild it with `wavlink-edge index PATHS --out DIR --rebuild`"
CHECKPOINT = "checkpoint.jsonl"


def file_state(source: str) -> dict:
    """What says "this file changed" (os.stat's size, mtime, ctime, inode); raises OSError."""
    status = os.stat(source)
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns,
            "inode": status.st_ino}


def same_state(entry: dict, state: dict) -> bool:
    """Entries written before ctime and inode were recorded compare by size and mtime alone."""
    return all(entry[key] == state[key] for key in state if key in entry)


@dataclass
class Hit:
    source: str
    score: float
    row: int


@dataclass
class UpdateReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)  # one line per file that could not be embedded
    reused: int = 0  # vectors a killed run had checkpointed, not embedded again
    seconds: float = 0.0


def model_identity(model: WavLink) -> dict:
    return {"name": model.spec.name, "heads": model.spec.heads, "digest": model.digest, "precision": model.precision,
            "clip_policy": model.clip_policy, "window_hop_seconds": model.window_hop_samples / SAMPLE_RATE,
            "export_dir": str(Path(model.manifest.export_dir).resolve()), "dim": model.spec.embed_dim}


def audio_files(paths: list[str | os.PathLike]) -> list[str]:
    """Files as given and audio files under given directories (as ``embed`` finds them), absolute, each once."""
    return list(dict.fromkeys(os.path.abspath(p) for p in expand_inputs([os.fspath(p) for p in paths])))


class WavLinkIndex:
    """Audio embeddings of a set of files, searchable by text or audio through the model that made them."""

    def __init__(self, path: str | Path, meta: dict, entries: list[dict], vectors: np.ndarray, ann=None):
        self.path, self.meta, self.entries, self.vectors, self.ann = Path(path), meta, entries, vectors, ann

    @property
    def dim(self) -> int:
        return self.meta["model"]["dim"]

    @property
    def search_dim(self) -> int:
        return self.meta["search_dim"]

    def __len__(self) -> int:
        return len(self.entries)

    # -- making and opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, model: WavLink, search_dim: int | None = None) -> WavLinkIndex:
        """An empty index for ``model``'s vectors; nothing is written until ``save`` (``update`` saves)."""
        search_dim = model.spec.embed_dim if search_dim is None else model.check_dim(search_dim)
        meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model": model_identity(model),
                "search_dim": search_dim, "ann": {"library": "faiss", "kind": "HNSWFlat", "metric": "inner_product",
                                                  "M": HNSW_M, "ef_construction": EF_CONSTRUCTION,
                                                  "ef_search": EF_SEARCH}, "files": {}}
        return cls(path, meta, [], np.zeros((0, model.spec.embed_dim), np.float32))

    @classmethod
    def open(cls, path: str | Path) -> WavLinkIndex:
        """Open an index, checking its format and every file's sha256 before use. Readers take no lock: a
        writer replaces each file atomically, index.json last, so a file whose hash disagrees while
        index.json has changed since it was read was caught mid-update, and is read again."""
        for _ in range(5):
            before = _read_or_none(Path(path) / "index.json")
            try:
                return cls._open(path)
            except IndexFileError:
                if _read_or_none(Path(path) / "index.json") == before:
                    raise
        return cls._open(path)

    @classmethod
    def _open(cls, path: str | Path) -> WavLinkIndex:
        path = Path(path)
        try:
            meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexFileError(f"{path}: not a wavlink-edge index (no index.json); make one with wavlink-edge index") from None
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"{path}/index.json: unreadable ({exc}); {REBUILD}") from None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION \
                or not isinstance(meta.get("files"), dict) or not isinstance(meta.get("model"), dict):
            raise IndexFileError(f"{path}: not a {INDEX_FORMAT} version {INDEX_VERSION} index; {REBUILD}")
        data = {}
        for name in FILES:
            expected = meta["files"].get(name)
            if expected is None:
                continue
            try:
                data[name] = (path / name).read_bytes()
            except OSError as exc:
                raise IndexFileError(f"{path}/{name}: {exc.strerror or exc}; {REBUILD}") from None
            if hashlib.sha256(data[name]).hexdigest() != expected:
                raise IndexFileError(f"{path}/{name}: sha256 differs from index.json (damaged or half-written); "
                                     f"{REBUILD}")
        # surrogateescape: indexes written before names were escaped hold raw non-UTF-8 bytes; they read too
        entries = [json.loads(line) for line in
                   data.get("entries.jsonl", b"").decode("utf-8", "surrogateescape").split("\n") if line]
        vectors = _npy_view(data["vectors.npy"]) if "vectors.npy" in data else np.zeros((0, meta["model"]["dim"]), np.float32)
        if vectors.shape != (len(entries), meta["model"]["dim"]):
            raise IndexFileError(f"{path}: vectors.npy is {vectors.shape}, expected ({len(entries)}, {meta['model']['dim']}); {REBUILD}")
        index = cls(path, meta, entries, vectors)
        if "ann.faiss" in data:
            index.ann = _faiss().deserialize_index(np.frombuffer(data["ann.faiss"], np.uint8))
        return index

    def save(self) -> None:
        """Write every file atomically, index.json last (it names the others' sha256)."""
        self.path.mkdir(parents=True, exist_ok=True)
        # ASCII JSON: a non-UTF-8 name is kept as its surrogate escapes, and the file stays valid UTF-8
        entries = "".join(json.dumps(e) + "\n" for e in self.entries).encode("ascii")
        writers = {"entries.jsonl": lambda out: out.write(entries),
                   # np.save writes a non-file in 16 MB pieces: a GB-sized matrix is never copied whole
                   "vectors.npy": lambda out: np.save(out, np.ascontiguousarray(self.vectors, np.float32),
                                                      allow_pickle=False)}
        if self.ann is not None:
            writers["ann.faiss"] = lambda out: out.write(_faiss().serialize_index(self.ann))
        self.meta["files"] = {}
        for name, write in writers.items():
            digest = hashlib.sha256()

            def hashed(handle, write=write, digest=digest):
                write(_HashingWriter(handle, digest))

            atomic_write(self.path / name, hashed)
            self.meta["files"][name] = digest.hexdigest()
        self.meta["count"] = len(self.entries)
        atomic_write(self.path / "index.json", lambda h: h.write(json.dumps(self.meta, indent=1).encode("utf-8")))

    # -- the model check -----------------------------------------------------------------------------

    def check_model(self, model: WavLink) -> None:
        """Refuse vectors from any model other than the one that built the index: their spaces differ."""
        built = self.meta["model"]
        if model.spec.name != built["name"] or model.digest != built["digest"]:
            mine = model_identity(model)
            raise IndexFileError(
                f"{self.path} was built with {built['name']} ({built['precision']}, clip policy {built['clip_policy']}, "
                f"digest {built['digest'][:12]}); the query model is {mine['name']} ({mine['precision']}, clip policy "
                f"{mine['clip_policy']}, digest {mine['digest'][:12]}): vectors of different models are not comparable")

    # -- updating ------------------------------------------------------------------------------------

    def update(self, model: WavLink, paths: list[str | os.PathLike], batch_size: int = 8, embed=None,
               progress=None) -> UpdateReport:
        """Make the index hold ``paths`` (files, or directories searched for audio): embed new and changed
        files (size, mtime, ctime or inode differ), drop entries whose file was deleted, keep the rest. Saves
        at the end, and also when interrupted (what was embedded so far is kept, so a re-run continues);
        each embedded vector also goes to ``checkpoint.jsonl`` as it comes, so even a killed run (SIGKILL,
        the OOM killer) leaves them for the next run to reuse. One writer at a time: the CLI holds
        ``index_lock``; a program updating an index that others may update should too.

        ``embed(paths) -> iterator of (source, embedding | None, error | None)`` in input order, full width
        (default: ``model.iter_embed_audio``; the CLI passes its multi-process runner).
        """
        self.check_model(model)
        started = time.perf_counter()
        report = UpdateReport()
        wanted = {}
        for source in audio_files(paths):
            try:
                wanted[source] = file_state(source)
            except OSError as exc:
                report.failed.append(f"{_printable(source)}: {exc.strerror or exc}")
        keep, drop = [], 0
        for row, entry in enumerate(self.entries):
            source = entry["source"]
            if source in wanted:
                if same_state(entry, wanted[source]):
                    keep.append(row)
                    report.unchanged += 1
                    del wanted[source]
                else:
                    report.changed += 1
                    drop += 1
            elif os.path.lexists(source):
                keep.append(row)  # not named this time, still on disk: stays (an index may grow by parts)
            else:
                report.removed += 1
                drop += 1
        if drop:
            self.entries = [self.entries[row] for row in keep]
            self.vectors = self.vectors[keep]
            self.ann = None  # an HNSW graph cannot forget nodes: rebuilt from vectors.npy below
        new_entries, new_vectors = [], []
        for entry, vector in self._read_checkpoint():
            source = entry["source"]
            if source in wanted and same_state(entry, wanted[source]):
                del wanted[source]
                new_entries.append(entry)
                new_vectors.append(vector)
                report.reused += 1
        todo = list(wanted)
        if embed is None:
            def embed(items):
                for r in model.iter_embed_audio(items, dim=model.spec.embed_dim, batch_size=batch_size):
                    yield r.source, r.embedding, r.error
        checkpoint = _Checkpoint(self.path / CHECKPOINT, self.meta["model"], new_entries, new_vectors, batch_size)
        try:
            for source, embedding, error in embed(todo):
                if error:
                    report.failed.append(_printable(error))
                else:
                    new_entries.append({"source": source, **wanted[source]})
                    new_vectors.append(np.asarray(embedding, np.float32))
                    checkpoint.add(new_entries[-1], new_vectors[-1])
                if progress is not None:
                    progress(source, error)
        finally:
            # Also on Ctrl-C: keep what was embedded; the next run embeds only the rest.
            checkpoint.close()
            self.add_vectors(new_entries, new_vectors)
            report.added = len(new_entries) - report.changed
            report.seconds = time.perf_counter() - started
            self.save()
            checkpoint.remove()  # everything in it is in the saved index now
        return report

    def _read_checkpoint(self) -> list[tuple[dict, np.ndarray]]:
        """(entry, vector) rows a killed run left in checkpoint.jsonl, if it was this model's; a row cut by the
        kill (the last one) is skipped."""
        try:
            lines = (self.path / CHECKPOINT).read_bytes().split(b"\n")
        except OSError:
            return []
        rows = []
        try:
            head = json.loads(lines[0])
        except ValueError:
            return []
        if head.get("model") != self.meta["model"]:
            return []
        for line in lines[1:]:
            try:
                row = json.loads(line)
                vector = np.frombuffer(base64.b64decode(row.pop("vector"), validate=True), np.float32)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if vector.shape == (self.dim,) and isinstance(row.get("source"), str):
                rows.append((row, vector))
        return rows

    def add_vectors(self, entries: list[dict], vectors) -> None:
        """Append rows (entries {"source", "size", "mtime_ns"} and their full-width vectors from this index's
        model) and put them in the graph; ``save`` writes them. ``update`` is the usual way in."""
        first = len(self.entries)
        if len(entries):
            self.entries += list(entries)
            self.vectors = np.concatenate([self.vectors, np.asarray(vectors, np.float32).reshape(len(entries), -1)])
        if not self.entries:
            self.ann = None
        elif self.ann is None:
            self.ann = self._build_ann(self.vectors)
        elif len(entries):
            self.ann.add(self._graph_vectors(self.vectors[first:]))

    def _graph_vectors(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(normalize(vectors[:, : self.search_dim]))

    def _build_ann(self, vectors: np.ndarray):
        faiss = _faiss()
        ann = faiss.IndexHNSWFlat(self.search_dim, self.meta["ann"]["M"], faiss.METRIC_INNER_PRODUCT)
        ann.hnsw.efConstruction = self.meta["ann"]["ef_construction"]
        ann.add(self._graph_vectors(vectors))
        return ann

    # -- searching -----------------------------------------------------------------------------------

    def search_vectors(self, queries: np.ndarray, k: int = 10, exact: bool = False,
                       candidates: int | None = None, ef_search: int | None = None) -> list[list[Hit]]:
        """The ``k`` best entries for each full-width query vector, best first, scored by full-width cosine.

        exact: brute force over vectors.npy. Otherwise the HNSW graph gives ``candidates`` rows (default
        k, or k x RERANK_CANDIDATES when the graph holds a Matryoshka prefix) and they are re-ranked at
        full width.
        """
        queries = normalize(np.atleast_2d(np.asarray(queries, np.float32)))
        if queries.shape[1] != self.dim:
            raise UsageError(f"query vectors have {queries.shape[1]} dims; this index holds {self.dim}-dim vectors")
        k = min(int(k), len(self))
        if k < 1:
            return [[] for _ in queries]
        if exact or self.ann is None:
            scores = queries @ self.vectors.T
            rows = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            wanted = min(len(self), candidates or (k if self.search_dim == self.dim else k * RERANK_CANDIDATES))
            faiss = _faiss()
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search or self.meta["ann"]["ef_search"], wanted))
            _, rows = self.ann.search(self._graph_vectors(queries), wanted, params=params)
            scores = None
        hits = []
        for q, candidates_row in enumerate(rows):
            candidates_row = candidates_row[candidates_row >= 0]
            full = self.vectors[candidates_row] @ queries[q] if scores is None else scores[q, candidates_row]
            order = np.argsort(-full, kind="stable")[:k]
            hits.append([Hit(self.entries[r]["source"], float(full[i]), int(r))
                         for i, r in zip(order, candidates_row[order])])
        return hits

    def search_text(self, model: WavLink, texts: str | list[str], k: int = 10, **options) -> list[list[Hit]]:
        self.check_model(model)
        texts = [texts] if isinstance(texts, str) else texts
        return self.search_vectors(model.embed_text(texts, dim=self.dim), k, **options)

    def search_audio(self, model: WavLink, items: list, k: int = 10, **options) -> list[list[Hit]]:
        self.check_model(model)
        return self.search_vectors(model.embed_audio(items, dim=self.dim), k, **options)

    def load_model(self, export_dir: str | Path | None = None, precision: str | None = None, providers=None) -> WavLink:
        """The model this index was built with (its recorded export directory, precision and clip policy)."""
        built = self.meta["model"]
        export_dir, precision = export_dir or built["export_dir"], precision or built["precision"]
        try:
            return WavLink.from_pretrained(export_dir, precision=precision, providers=providers,
                                           clip_policy=built["clip_policy"], window_hop_seconds=built["window_hop_seconds"])
        except ValueError:
            # Another model whose windows cannot take this index's settings: load it as it is, so that
            # check_model names both models instead of a hop error.
            return WavLink.from_pretrained(export_dir, precision=precision, providers=providers)

    def memory_bytes(self) -> dict:
        return {"vectors": int(self.vectors.nbytes),
                "ann": int(_faiss().serialize_index(self.ann).nbytes) if self.ann is not None else 0}


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class _Checkpoint:
    """checkpoint.jsonl: a header naming the model, then one row per embedded file with its float32 vector
    (base64), appended and fsync'd every ``batch_size`` rows: a kill loses at most one batch."""

    def __init__(self, path: Path, model: dict, entries: list[dict], vectors: list[np.ndarray], batch_size: int):
        self.path, self.batch_size, self.pending, self.handle = path, max(1, batch_size), 0, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "wb")
            self.handle.write(json.dumps({"model": model}).encode("ascii") + b"\n")
            for entry, vector in zip(entries, vectors):  # rows reused from an earlier checkpoint stay in it
                self._write(entry, vector)
            self._sync()
        except OSError:
            self.close()  # no checkpoint only costs a killed run its vectors; the index itself is saved as before

    def _write(self, entry: dict, vector: np.ndarray) -> None:
        row = dict(entry, vector=base64.b64encode(np.ascontiguousarray(vector, np.float32).tobytes()).decode("ascii"))
        self.handle.write(json.dumps(row).encode("ascii") + b"\n")

    def add(self, entry: dict, vector: np.ndarray) -> None:
        if self.handle is None:
            return
        try:
            self._write(entry, vector)
            self.pending += 1
            if self.pending >= self.batch_size:
                self._sync()
                hold_point("index-checkpoint")  # tests kill a run here: a batch is on disk
        except OSError:
            self.close()

    def _sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.pending = 0

    def close(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
                self.handle.close()
            self.handle = None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _printable(text: str) -> str:
    """UTF-8 text for a terminal, a UTF-8 stream or Arrow: a non-UTF-8 name's bytes shown as \\xNN escapes."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _HashingWriter:
    """A write-only file that hashes what passes through it on its way to ``handle``."""

    def __init__(self, handle, digest):
        self.handle, self.digest = handle, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def _npy_view(data: bytes) -> np.ndarray:
    """A float32 .npy read as a view of its (already verified) bytes: no second copy, no pickle."""
    stream = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if fortran or dtype != np.float32 or len(shape) != 2:
        raise IndexFileError(f"vectors.npy holds {dtype} {shape}; expected a C-order float32 matrix")
    return np.frombuffer(data, np.float32, count=shape[0] * shape[1], offset=stream.tell()).reshape(shape)


# -- command line (hooked into runtime/cli.py) ---------------------------------------------------------


def add_commands(commands, add_model_options, positive_int) -> dict:
    """Add ``index`` and ``search`` to the CLI's subparsers; returns their handlers for its COMMANDS table."""
    index = commands.add_parser("index", help="embed audio files into a searchable index (again: only what changed)")
    index.add_argument("paths", nargs="+", help="audio files or directories (searched recursively)")
    add_model_options(index)  # its --dim: the Matryoshka dim the ANN graph holds (results re-ranked at full width)
    index.add_argument("--out", type=Path, required=True, help="index directory (created, or updated if it exists)")
    index.add_argument("--batch-size", type=positive_int, default=8)
    index.add_argument("--clip-policy", choices=("pad", "trim"), default=None)
    index.add_argument("--workers", type=positive_int, default=1, help="embedding processes (see embed --workers)")
    index.add_argument("--wait", action="store_true", help="if another run is writing this index, wait for it "
                       "instead of refusing")
    index.add_argument("--rebuild", action="store_true", help="make the index anew from PATHS, replacing a damaged "
                       "or unreadable one (vectors a killed run checkpointed are still reused)")

    search = commands.add_parser("search", help="search an index by text (or --audio FILE)")
    search.add_argument("index", type=Path)
    search.add_argument("query", nargs="?", help="text query")
    search.add_argument("--audio", help="an audio file as the query (audio -> audio)")
    search.add_argument("-k", type=positive_int, default=10, help="hits to return (default 10)")
    search.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    search.add_argument("--exact", action="store_true", help="brute force at full width (no ANN)")
    search.add_argument("--model", type=Path, default=None, help="export directory (default: the one the index records)")
    search.add_argument("--precision", default=None, choices=PRECISION_CHOICES,
                        help="(default: the precision the index was built with)")
    search.add_argument("--provider", action="append", dest="providers", metavar="NAME")
    return {"index": cmd_index, "search": cmd_search}


def index_lock(path: str | Path, wait: bool = False):
    """The writer's lock of an index directory (``.<name>.lock`` beside it, as every output's): a second
    writer refuses in one line, or with ``wait`` blocks until the first is done."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(path, f"the index {path}", wait=wait, hint=" (--wait waits for it)")


def cmd_index(args: argparse.Namespace) -> int:
    from wavlink_edge.runtime.parallel import cap_workers, embed_parallel  # only the CLI's --workers needs it

    if args.out.exists() and not (args.out / "index.json").is_file():
        ours = {CHECKPOINT, *FILES} if args.rebuild else {CHECKPOINT}  # --rebuild: what is left of an index
        if not args.out.is_dir() or any(p.name not in ours and not p.name.startswith(".") for p in args.out.iterdir()):
            raise IndexFileError(f"--out {args.out}: exists and is not a wavlink-edge index")
    _faiss(searching=False)  # before any embedding: the graph is built at save, and a save that fails keeps nothing
    with index_lock(args.out, args.wait):
        model = WavLink.from_pretrained(args.model, precision=args.precision, providers=args.providers,
                                        clip_policy=args.clip_policy)
        if (args.out / "index.json").is_file() and not args.rebuild:
            index = WavLinkIndex.open(args.out)
            if args.dim not in (None, index.search_dim):
                raise IndexFileError(f"{args.out} holds a {index.search_dim}-dim graph; --dim cannot change it "
                                     "(make a new index, or --rebuild)")
        else:
            index = WavLinkIndex.create(args.out, model, args.dim)  # --rebuild: the damaged files are replaced at save
        workers = cap_workers(args.workers, args.model, args.precision)

        def embed(paths):
            return embed_parallel(args.model, paths, workers=workers, batch_size=args.batch_size,
                                  precision=args.precision, providers=args.providers, clip_policy=model.clip_policy,
                                  model=model if workers == 1 else None)

        try:
            report = index.update(model, args.paths, args.batch_size, embed=embed)
        except KeyboardInterrupt:
            print(f"interrupted: {args.out} keeps the {len(index)} files embedded so far (run again to continue)",
                  file=sys.stderr)
            return 130
    for line in report.failed:
        print(f"failed: {line}", file=sys.stderr)
    reused = f", {report.reused} reused from a killed run's checkpoint" if report.reused else ""
    print(f"{args.out}: {len(index)} files ({report.added} added, {report.changed} changed, {report.removed} removed, "
          f"{report.unchanged} unchanged, {len(report.failed)} failed{reused}) in {report.seconds:.1f} s", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.audio is None):
        raise UsageError("give a text query or --audio FILE (one of them)")
    index = WavLinkIndex.open(args.index)
    model = index.load_model(args.model, args.precision, args.providers)
    if args.audio is not None:
        hits = index.search_audio(model, [args.audio], args.k, exact=args.exact)[0]
    else:
        hits = index.search_text(model, args.query, args.k, exact=args.exact)[0]
    if args.json:
        # json_row: a non-UTF-8 name stays lossless (its surrogate escapes; os.fsencode gives the bytes back)
        print(json_row({"query": args.query, "audio": args.audio, "index": str(args.index), "model": model.spec.name,
                        "hits": [{"source": h.source, "score": round(h.score, 6)} for h in hits]}))
    else:
        for hit in hits:
            print(f"{hit.score:+.4f}  {_printable(hit.source)}")
    return 0


__all__ = ["WavLinkIndex", "IndexFileError", "Hit", "UpdateReport", "audio_files"]
