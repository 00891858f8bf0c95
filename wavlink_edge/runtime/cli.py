"""``wavlink-edge`` command line: embed audio files or texts, quick similarity checks, benchmarks.

    wavlink-edge embed clips/*.flac --model exports/wavlink-base --dim 128 --out emb.npy
    wavlink-edge embed-text "a phone is ringing" --file captions.txt --out text.jsonl
    wavlink-edge similarity clip.flac "a phone is ringing" "a woman speaks"
    wavlink-edge bench latency --help

Exit codes: 0 every item embedded, 1 some items failed (each listed, with its reason), 2 usage, model or
output error, 130 interrupted. Outputs keep input order and name each row's source; failed items stay
in the output with their error (.jsonl: an "error" field; .npy: a NaN row, reason in the
`<out>.sources.jsonl` sidecar; .npz: an "errors" array). JSON lines are written and flushed as they
complete (an interrupt leaves every finished row); .npy/.npz appear whole or not at all.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavlink_edge.runtime.errors import InputError, WavLinkError
from wavlink_edge.runtime.files import atomic_write
from wavlink_edge.runtime.manifest import PRECISION_CHOICES
from wavlink_edge.runtime.model import WavLink

DEFAULT_MODEL_DIR = Path("exports/wavlink-base")
OUTPUT_SUFFIXES = (".npy", ".npz", ".jsonl")
# Later stages register their commands here (setup.py entry points), so the runtime imports none of them.
BENCH_ENTRY_POINTS = "wavlink_edge.bench"


class CliError(Exception):
    """A usage, model or output problem: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help=f"export directory (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dim (default: the full width)")
    parser.add_argument("--provider", action="append", dest="providers", metavar="NAME",
                        help="ORT execution provider, repeatable, in order (default TensorRT -> CUDA -> CPU)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log provider and artifact choices")


def _add_output_options(parser: argparse.ArgumentParser, default_batch: int) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=default_batch)
    parser.add_argument("--out", type=Path, help=f"output file {'|'.join(OUTPUT_SUFFIXES)} (default: JSON lines on stdout)")
    parser.add_argument("--resume", action="store_true",
                        help="with --out X.jsonl: keep its rows and embed only the sources it does not hold yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavlink-edge", description="WavLink audio-text embeddings, torch-free.")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed audio files")
    embed.add_argument("paths", nargs="+", help="audio files (wav, flac, ogg, mp3, ...)")
    _add_model_options(embed)
    embed.add_argument("--clip-policy", choices=("pad", "trim"), default=None,
                       help="pad: 30 s input (paper); trim: only frames holding audio (default: the model's)")
    embed.add_argument("--hop", type=float, default=None,
                       help="window hop in seconds for audio longer than one window (default: the window, 30 s)")
    _add_output_options(embed, 8)

    text = commands.add_parser("embed-text", help="embed texts")
    text.add_argument("texts", nargs="*", help="texts to embed")
    text.add_argument("--file", type=Path, help="UTF-8 file, one text per line (after the positional texts); "
                      "lines split on \\n or \\r\\n only, a blank line is an empty text (kept, so rows match lines)")
    _add_model_options(text)
    _add_output_options(text, 32)

    sim = commands.add_parser("similarity", help="cosine similarity of one audio file to each text")
    sim.add_argument("audio")
    sim.add_argument("texts", nargs="+")
    _add_model_options(sim)
    sim.add_argument("--clip-policy", choices=("pad", "trim"), default=None)

    add_lyrics_parser(commands)

    bench = commands.add_parser("bench", help="run a benchmark: bench latency|recall [ARGS...] (needs the bench extra)")
    bench.add_argument("benchmark", choices=("latency", "recall"))
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark")
    return parser


def _load_model(args: argparse.Namespace) -> WavLink:
    if not (args.model / "manifest.json").is_file():
        hint = ("create it with `python export/to_onnx.py --size base` (needs `pip install 'wavlink-edge[export]'`)"
                if args.model == DEFAULT_MODEL_DIR else "pass --model DIR, a directory written by export/to_onnx.py")
        raise CliError(f"no WavLink Edge export at {args.model}: {hint}")
    return WavLink.from_pretrained(args.model, precision=args.precision, providers=args.providers, dim=args.dim,
                                   clip_policy=getattr(args, "clip_policy", None),
                                   window_hop_seconds=getattr(args, "hop", None))


def _check_out(out: Path | None, resume: bool) -> None:
    """Every output problem is found before any work is done."""
    if out is None:
        if resume:
            raise CliError("--resume needs --out FILE.jsonl")
        return
    if out.is_dir():
        raise CliError(f"--out {out} is a directory")
    if out.suffix not in OUTPUT_SUFFIXES:
        raise CliError(f"--out {out}: unsupported extension; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if resume and out.suffix != ".jsonl":
        raise CliError(f"--resume works with .jsonl outputs (rows are appended); {out} is {out.suffix}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CliError(f"--out {out}: not writable")


# Characters that str.splitlines() and some JSON-lines readers treat as line ends, though JSON allows them raw.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_row(row: dict) -> str:
    """One JSON line; a name that is not valid UTF-8 (a non-UTF-8 file name) is kept exactly by \\u escapes."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(row)
    for char, escape in _LINE_BREAKS.items():
        text = text.replace(char, escape)
    return text


class RowWriter:
    """Rows in input order, each naming its source. JSON lines go out as they complete, flushed; .npy and
    .npz are assembled in memory and written to a temporary file renamed into place at the end."""

    def __init__(self, out: Path | None, dim: int, source_key: str, resume: bool = False):
        self.out, self.dim, self.source_key = out, dim, source_key
        self.rows = 0
        self.sources, self.embeddings, self.errors = [], [], []
        self.done: set[str] = set()
        self.stream = None
        if out is None:
            self.stream = sys.stdout
        elif out.suffix == ".jsonl":
            if resume and out.is_file():
                self.done = self._finished_sources(out)
            self.stream = open(out, "a" if resume else "w", encoding="utf-8")

    def _finished_sources(self, out: Path) -> set[str]:
        done = set()
        with open(out, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    # A row cut by an earlier interrupt: drop it, so the file stays one row per line.
                    raise CliError(f"--resume: {out} line {number} is not a complete JSON row; "
                                   "remove that line and run again") from None
                if "embedding" in row:
                    done.add(row.get(self.source_key))
        return done

    def write(self, source: str, embedding: np.ndarray | None, error: str | None) -> None:
        self.rows += 1
        if self.stream is not None:
            row = {self.source_key: source}
            row.update({"error": error} if error else {"embedding": [round(float(v), 7) for v in embedding]})
            self.stream.write(_json_row(row) + "\n")
            self.stream.flush()
            return
        self.sources.append(source)
        self.embeddings.append(embedding)
        self.errors.append(error)

    def close(self) -> None:
        """Finish the output (npy/npz: written now, atomically); JSON lines are already out."""
        if self.stream is not None:
            if self.stream is not sys.stdout:
                self.stream.close()
            return
        matrix = np.full((len(self.sources), self.dim), np.nan, np.float32)
        for row, embedding in enumerate(self.embeddings):
            if embedding is not None:
                matrix[row] = embedding
        if self.out.suffix == ".npz":
            atomic_write(self.out, lambda handle: np.savez(
                handle, embeddings=matrix, sources=np.array(self.sources, dtype=str),
                errors=np.array([e or "" for e in self.errors], dtype=str)))
            return
        # Row i of the .npy <-> line i of the sidecar, a JSON row per line: any name round-trips.
        sidecar = self.out.with_name(self.out.name + ".sources.jsonl")
        atomic_write(sidecar, lambda handle: handle.write("".join(
            _json_row({self.source_key: s, **({"error": e} if e else {})}) + "\n"
            for s, e in zip(self.sources, self.errors)).encode("utf-8", "surrogateescape")))
        atomic_write(self.out, lambda handle: np.save(handle, matrix))

    def abandon(self) -> None:
        """After an interrupt: JSON lines keep what finished; nothing half-written is left behind."""
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()


def _run_rows(args, writer: RowWriter, total: int, unit: str, results) -> int:
    """Drive one embedding job: every result becomes a row; report failures and the summary."""
    failed = 0
    where = f" -> {args.out}" if args.out else ""
    with tqdm(total=total, unit=unit, desc="embedding", file=sys.stderr, disable=None) as progress:
        try:
            for source, embedding, error in results:
                writer.write(source, embedding, error)
                if error:
                    failed += 1
                    progress.write(f"failed: {_printable(error)}", file=sys.stderr)
                progress.update(1)
        except KeyboardInterrupt:
            writer.abandon()
            kept = f"; {args.out} holds the {writer.rows} finished rows (--resume continues)" \
                if args.out and args.out.suffix == ".jsonl" else "; nothing was written"
            print(f"interrupted after {writer.rows} of {total}{kept}", file=sys.stderr)
            return 130
    writer.close()
    print(f"{writer.rows - failed} ok, {failed} failed{where}", file=sys.stderr)
    return 0 if failed == 0 else 1


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cmd_embed(args: argparse.Namespace) -> int:
    _check_out(args.out, args.resume)
    model = _load_model(args)
    writer = RowWriter(args.out, model.dim, "source", args.resume)
    paths = [p for p in args.paths if p not in writer.done]
    if writer.done:
        print(f"--resume: {len(args.paths) - len(paths)} sources already in {args.out}", file=sys.stderr)
    results = ((r.source, r.embedding, r.error)
               for r in model.iter_embed_audio(paths, dim=args.dim, batch_size=args.batch_size))
    return _run_rows(args, writer, len(paths), "file", results)


def read_text_lines(path: Path) -> list[str]:
    """One text per line: split on \\n (and \\r\\n) only -- form feeds, U+2028 and the like stay inside
    a text -- with a leading UTF-8 BOM removed. A blank line is an empty text, so rows match lines."""
    try:
        data = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--file {path}: {exc}") from None
    data = data.removeprefix("\ufeff")
    if data.endswith("\n"):
        data = data[:-1]
    return [line.removesuffix("\r") for line in data.split("\n")] if data else []


def cmd_embed_text(args: argparse.Namespace) -> int:
    _check_out(args.out, args.resume)
    texts = list(args.texts) + (read_text_lines(args.file) if args.file else [])
    if not texts:
        raise CliError("no texts given (positional TEXTS or --file)")
    model = _load_model(args)
    writer = RowWriter(args.out, model.dim, "text", args.resume)
    texts = [t for t in texts if _printable(t) not in writer.done]

    def results():
        for start in range(0, len(texts), args.batch_size):
            batch = texts[start:start + args.batch_size]
            for text, (embedding, error) in zip(batch, _embed_texts_per_item(model, batch)):
                yield _printable(text), embedding, error

    return _run_rows(args, writer, len(texts), "text", results())


def _embed_texts_per_item(model: WavLink, texts: list[str]) -> list[tuple[np.ndarray | None, str | None]]:
    """Embed a batch; if one text is unusable (e.g. undecodable argv bytes), redo it item by item."""
    try:
        return [(row, None) for row in model.embed_text(texts, batch_size=len(texts))]
    except InputError:
        pass
    results = []
    for text in texts:
        try:
            results.append((model.embed_text([text])[0], None))
        except InputError as exc:
            results.append((None, str(exc).replace("text[0]", repr(_printable(text)))))
    return results


def cmd_similarity(args: argparse.Namespace) -> int:
    model = _load_model(args)
    audio = model.embed_audio([args.audio])
    texts = model.embed_text(args.texts)
    for text, score in zip(args.texts, model.similarity(audio, texts)[0]):
        print(f"{score:+.4f}  {text}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    found = [ep for ep in entry_points(group=BENCH_ENTRY_POINTS) if ep.name == args.benchmark]
    if not found:
        raise CliError(f"no '{args.benchmark}' benchmark is registered in this install; the benchmarks come with "
                       f"a source checkout: python bench/{args.benchmark}.py")
    try:
        run = found[0].load()
    except ImportError as exc:
        raise CliError(f"the {args.benchmark} benchmark is not in this install ({exc}): the wheel carries the runtime "
                       f"only; from a checkout, pip install -c constraints-cpu.txt '.[bench]' and run "
                       f"python bench/{args.benchmark}.py") from None
    try:
        code = run([a for a in args.args if a != "--"])
    except SystemExit as exc:
        code = exc.code
    return code if isinstance(code, int) else (0 if code is None else 1)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool):
    """Decoder libraries (libmpg123 inside libsndfile) print resync chatter straight to file descriptor 2,
    next to our one-line errors. Point fd 2 at /dev/null and give Python's own stderr the terminal.
    Only when sys.stderr is the process's real stderr (not when a caller or test captures it)."""
    if not enabled or sys.stderr is not sys.__stderr__:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        yield
        return
    original = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = original
        os.dup2(saved, 2)
        os.close(saved)


def add_lyrics_parser(commands) -> None:
    lyrics = commands.add_parser("lyrics", help="WEALY lyrics embeddings of audio files (export written with --lyrics)")
    lyrics.add_argument("paths", nargs="+", help="audio files; the first 5 minutes are decoded")
    lyrics.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help=f"export directory (default {DEFAULT_MODEL_DIR})")
    lyrics.add_argument("--verbose", "-v", action="store_true")
    _add_output_options(lyrics, 1)


def cmd_lyrics(args: argparse.Namespace) -> int:
    """Same rows, order, errors and formats as `embed`; the embedding is the lyrics head's."""
    from wavlink_edge.runtime.lyrics import Lyrics

    _check_out(args.out, args.resume)
    model = Lyrics.from_pretrained(args.model)
    writer = RowWriter(args.out, model.dim, "source", args.resume)
    paths = [p for p in args.paths if p not in writer.done]
    results = ((r.source, r.embedding, r.error) for r in model.iter_embed_lyrics(paths))
    return _run_rows(args, writer, len(paths), "file", results)


COMMANDS = {"embed": cmd_embed, "embed-text": cmd_embed_text, "similarity": cmd_similarity, "bench": cmd_bench,
            "lyrics": cmd_lyrics}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with native_stderr_silenced(args.command != "bench" and not getattr(args, "verbose", False)):
            return COMMANDS[args.command](args)
    except (CliError, WavLinkError, InputError, ValueError) as exc:
        print(f"error: {_printable(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output device failing under us (disk full, /dev/full, a vanished mount)
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
