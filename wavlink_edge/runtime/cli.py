"""``wavlink-edge`` command line: embed audio files or texts, quick similarity checks, benchmarks.

    wavlink-edge embed clips/ more.m4a --model exports/wavlink-base --dim 128 --out emb.npy
    find /data -name '*.wav' | wavlink-edge embed - --out emb.jsonl --resume
    wavlink-edge info exports/wavlink-base
    wavlink-edge verify exports/wavlink-base
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
from glob import escape as glob_escape
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavlink_edge import __version__
from wavlink_edge.runtime import index as index_commands
from wavlink_edge.runtime import parallel
from wavlink_edge.runtime.errors import InputError, WavLinkError
from wavlink_edge.runtime.inputs import expand_inputs
from wavlink_edge.runtime.manifest import PRECISION_CHOICES, Manifest
from wavlink_edge.runtime.model import WavLink
from wavlink_edge.runtime.outputs import OUTPUT_SUFFIXES, RowWriter, check_output, exclusive_lock, sidecar_path
from wavlink_edge.runtime.session import quiet_onnxruntime

DEFAULT_MODEL_DIR = Path("exports/wavlink-base")
# Later stages register their commands here (setup.py entry points), so the runtime imports none of them.
BENCH_ENTRY_POINTS = "wavlink_edge.bench"


class CliError(Exception):
    """A usage, model or output problem: printed as one line, exit code 2."""


def int_at_least(minimum: int):
    """An argparse type: a whole number >= minimum, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = int_at_least(1)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help=f"export directory (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dim (default: the full width)")
    parser.add_argument("--provider", action="append", dest="providers", metavar="NAME",
                        help="ORT execution provider, repeatable, in order (default TensorRT -> CUDA -> CPU)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="ORT intra-op threads (default: every core)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log provider and artifact choices, and onnxruntime's own messages")


def _add_output_options(parser: argparse.ArgumentParser, default_batch: int) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=default_batch)
    parser.add_argument("--out", type=Path, help=f"output file {'|'.join(OUTPUT_SUFFIXES)} (default: JSON lines on stdout)")
    parser.add_argument("--resume", action="store_true",
                        help="with --out X.jsonl: keep its rows and embed only the sources it does not hold yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavlink-edge", description="WavLink audio-text embeddings, torch-free.")
    parser.add_argument("--version", action="version", version=f"wavlink-edge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed audio files")
    embed.add_argument("paths", nargs="*", help="audio files (wav, flac, ogg, mp3, m4a, webm, ...), directories "
                       "(recursive, audio extensions, sorted), or - for paths on stdin, one per line")
    embed.add_argument("--from-list", metavar="FILE", help="a file of paths, one per line (- for stdin)")
    embed.add_argument("--ext", action="append", metavar="EXT",
                       help="only these extensions from directories, lists and stdin (repeatable or comma list)")
    embed.add_argument("--glob", metavar="PATTERN", help="only paths (or names) matching this shell pattern, "
                       "from directories, lists and stdin")
    _add_model_options(embed)
    embed.add_argument("--clip-policy", choices=("pad", "trim"), default=None,
                       help="pad: 30 s input (paper); trim: only frames holding audio (default: the model's)")
    embed.add_argument("--hop", type=float, default=None,
                       help="window hop in seconds for audio longer than one window (default: the window, 30 s)")
    _add_output_options(embed, 8)
    parallel.add_options(embed, _positive_int)

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

    info = commands.add_parser("info", help="describe an export: model, dims, policy, precisions and fidelity, "
                               "what would load here")
    info.add_argument("model_dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    verify = commands.add_parser("verify", help="re-hash every file of an export against its manifest now")
    verify.add_argument("model_dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    add_lyrics_parser(commands)

    bench = commands.add_parser("bench", help="run a benchmark: bench latency|recall [ARGS...] (needs the bench extra)")
    bench.add_argument("benchmark", choices=("latency", "recall"))
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark")
    COMMANDS.update(index_commands.add_commands(commands, _add_model_options, _positive_int))
    return parser


def _load_model(args: argparse.Namespace) -> WavLink:
    _check_model_dir(args.model)
    return WavLink.from_pretrained(args.model, precision=args.precision, providers=args.providers, dim=args.dim,
                                   clip_policy=getattr(args, "clip_policy", None),
                                   window_hop_seconds=getattr(args, "hop", None), threads=args.threads)


def _check_model_dir(model_dir: Path) -> None:
    if model_dir.exists() and not model_dir.is_dir():
        raise CliError(f"--model {model_dir} is a file, not an export directory")
    if not (model_dir / "manifest.json").is_file():
        hint = ("create it with `python export/to_onnx.py --size base` from a checkout"
                if model_dir == DEFAULT_MODEL_DIR else "pass --model DIR, a directory written by export/to_onnx.py")
        raise CliError(f"no WavLink Edge export at {model_dir}: {hint}")


def _header(manifest: Manifest, digest: str, dim: int, tower: str, precision: str, clip_policy: str | None = None) -> dict:
    """What a file output records of the run that wrote it (compared by --resume). `digest`: of the artifacts
    that computed the rows (re-exporting or quantizing other files of the export leaves it as it was)."""
    return {"model": manifest.model.name, "model_digest": digest, "dim": dim, "precision": precision,
            "clip_policy": clip_policy, "tower": tower, "wavlink_edge_version": __version__}


def _embed_files(args: argparse.Namespace, sources: list[str], load) -> int:
    """The file job `embed` and `lyrics` share: output checked and locked before the model loads, sources
    --resume finds done skipped, one row per source in input order. ``load()`` returns (dim, header,
    embed), ``embed(paths)`` yielding (source, embedding, error) per path."""
    check_output(args.out, args.resume, sources)
    with _output_lock(args.out):
        dim, header, embed = load()
        writer = RowWriter(args.out, dim, "source", header, args.resume)
        paths = [p for p in sources if p not in writer.done]
        if writer.done:
            print(f"--resume: {len(sources) - len(paths)} sources already in {args.out}", file=sys.stderr)
        return _run_rows(args, writer, len(paths), "file", embed(paths), sources)


def _run_rows(args, writer: RowWriter, total: int, unit: str, results, order: list[str]) -> int:
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
    writer.close(order)
    print(f"{writer.rows - failed} ok, {failed} failed{where}", file=sys.stderr)
    return 0 if failed == 0 else 1


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cmd_embed(args: argparse.Namespace) -> int:
    if not args.paths and not args.from_list:
        raise CliError("no inputs: give files, directories, - (paths on stdin) or --from-list FILE")
    sources = expand_inputs(args.paths, args.from_list, args.ext, args.glob)
    if not sources:
        raise CliError("the given directories and lists hold no audio files (extensions: see --ext)")
    if args.engine == "ray":
        from wavlink_edge.runtime.ray_pipeline import cmd_embed_ray
        return cmd_embed_ray(args, sources)

    def load():
        model = _load_model(args)

        def embed(paths):
            if args.workers > 1:
                return parallel.cli_results(args, paths)
            return ((r.source, r.embedding, r.error)
                    for r in model.iter_embed_audio(paths, dim=args.dim, batch_size=args.batch_size))

        return model.dim, _header(model.manifest, model.tower_digest("audio"), model.dim, "audio", model.precision, model.clip_policy), embed

    return _embed_files(args, sources, load)


@contextlib.contextmanager
def _output_lock(out: Path | None):
    """The output's lock for the run; temporaries a killed earlier run left beside it are removed."""
    if out is None:
        yield
        return
    with exclusive_lock(out, str(out)):
        for name in (out.name, sidecar_path(out).name):
            for stale in out.parent.glob(f".{glob_escape(name)}.*.tmp"):
                stale.unlink(missing_ok=True)
        yield


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
    check_output(args.out, args.resume, [str(args.file)] if args.file else [])
    texts = list(args.texts) + (read_text_lines(args.file) if args.file else [])
    if not texts:
        raise CliError("no texts given (positional TEXTS or --file)")
    with _output_lock(args.out):
        model = _load_model(args)
        writer = RowWriter(args.out, model.dim, "text", _header(model.manifest, model.tower_digest("text"), model.dim, "text", model.precision),
                           args.resume)
        todo = [t for t in texts if _printable(t) not in writer.done]

        def results():
            for start in range(0, len(todo), args.batch_size):
                batch = todo[start:start + args.batch_size]
                for text, (embedding, error) in zip(batch, _embed_texts_per_item(model, batch)):
                    yield _printable(text), embedding, error

        return _run_rows(args, writer, len(todo), "text", results(), [_printable(t) for t in texts])


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


def describe_export(model_dir: Path) -> dict:
    """What `info` prints: the model, its files and which artifacts would load on this host."""
    import onnxruntime as ort

    manifest = Manifest.load(model_dir)
    spec, artifacts = manifest.model, {}
    for artifact in manifest.artifacts:
        entry = manifest.files[artifact.file]
        artifacts[artifact.file] = {"tower": artifact.tower, "precision": artifact.precision_key,
                                    "bytes": entry.get("bytes"), "fidelity": entry.get("fidelity")}
    available = ort.get_available_providers()
    here = {}
    for precision in ("fp32", "fp16", "int8"):
        try:
            here[precision] = WavLink.describe_choice(manifest, precision, available)
        except WavLinkError as exc:
            here[precision] = f"unavailable: {exc}"
    return {"export": str(model_dir), "model": spec.__dict__ | {"matryoshka_dims": list(spec.matryoshka_dims)},
            "warning": manifest.data.get("warning"), "artifacts": artifacts, "providers_here": available,
            "would_load": here}


def cmd_info(args: argparse.Namespace) -> int:
    _check_model_dir(args.model_dir)
    info = describe_export(args.model_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    spec = info["model"]
    print(f"{spec['name']} ({spec['heads']} heads) at {info['export']}")
    if info["warning"]:
        print(f"  warning: {info['warning']}")
    print(f"  dims {spec['embed_dim']} (Matryoshka {', '.join(map(str, spec['matryoshka_dims']))}); "
          f"{spec['n_mels']} mel bins, windows of {spec['max_frames']} frames, clip policy {spec['clip_policy']}; "
          f"text up to {spec['text_max_length']} tokens")
    for name, artifact in info["artifacts"].items():
        fidelity = artifact["fidelity"] or {}
        figures = ", ".join(f"{k} {v:.6f}" if isinstance(v, float) else f"{k} {v}" for k, v in fidelity.items()
                            if k in ("reference", "cosine_min", "cosine_mean", "max_abs", "forced"))
        print(f"  {name:28s} {artifact['tower']:5s} {artifact['precision']:12s} {artifact['bytes'] / 1e6:8.1f} MB"
              f"  {figures}")
    print(f"  providers here: {', '.join(info['providers_here'])}")
    for precision, choice in info["would_load"].items():
        print(f"  --precision {precision}: {choice}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    _check_model_dir(args.model_dir)
    manifest = Manifest.load(args.model_dir)
    names = manifest.verify_all()
    print(f"{len(names)} files match {args.model_dir / 'manifest.json'} (size and sha256)")
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
    lyrics.add_argument("paths", nargs="+", help="audio files or directories (recursive); the first 5 minutes are decoded")
    lyrics.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help=f"export directory (default {DEFAULT_MODEL_DIR})")
    lyrics.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="lyrics graphs to run (fp16 / int8 when the quantization step wrote them; docs/wealy.md)")
    lyrics.add_argument("--verbose", "-v", action="store_true")
    _add_output_options(lyrics, 1)


def cmd_lyrics(args: argparse.Namespace) -> int:
    """Same rows, order, errors and formats as `embed`; the embedding is the lyrics head's."""
    from wavlink_edge.runtime.lyrics import Lyrics

    sources = expand_inputs(args.paths)
    if not sources:
        raise CliError("the given directories hold no audio files")

    def load():
        _check_model_dir(args.model)
        model = Lyrics.from_pretrained(args.model, precision=args.precision)
        embed = lambda paths: ((r.source, r.embedding, r.error) for r in model.iter_embed_lyrics(paths))  # noqa: E731
        return model.dim, _header(model.manifest, model.digest, model.dim, "lyrics", args.precision), embed

    return _embed_files(args, sources, load)



COMMANDS = {"embed": cmd_embed, "embed-text": cmd_embed_text, "similarity": cmd_similarity, "info": cmd_info,
            "verify": cmd_verify, "bench": cmd_bench, "lyrics": cmd_lyrics}


class _OncePerMessage(logging.Filter):
    """Each runtime warning reaches the terminal once, however many items raise it."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    quiet_onnxruntime(verbose)
    try:
        with native_stderr_silenced(args.command != "bench" and not verbose):
            # After silencing: the handler writes to the stderr Python keeps for the terminal.
            logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True,
                                format="%(levelname)s %(name)s: %(message)s" if verbose else "warning: %(message)s")
            logging.getLogger().handlers[0].addFilter(_OncePerMessage())
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
