"""``wavlink-edge`` command line: embed audio files or texts, quick similarity checks, benchmarks.

    wavlink-edge embed clips/ more.m4a --model exports/wavlink-base --dim 128 --out emb.npy
    find /data -name '*.wav' | wavlink-edge embed - --out emb.jsonl --resume
    wavlink-edge info exports/wavlink-base
    wavlink-edge verify exports/wavlink-base
    wavlink-edge embed-text "a phone is ringing" --file captions.txt --out text.jsonl
    wavlink-edge similarity clip.flac "a phone is ringing" "a woman speaks"
    wavlink-edge bench latency --quick
    wavlink-edge export --size base        # and quantize, tensorrt, train, probe, ...: wavlink_edge/commands.py
    wavlink-edge --debug CMD ...           # a refusal shows its traceback (also WAVLINK_EDGE_DEBUG=1)

Exit codes: 0 every item embedded, 1 some items failed (each listed, with its reason), 2 usage, model or
output error, 130 interrupted. Outputs keep input order and name each row's source; failed items stay
in the output with their error (.jsonl: an "error" field; .npy: a NaN row, reason in the
`<out>.sources.jsonl` sidecar; .npz: an "errors" array). JSON lines are written and flushed as they
complete (an interrupt leaves every finished row); .npy/.npz appear whole or not at all.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavlink_edge import __version__
from wavlink_edge.commands import BENCHMARKS, STAGE_COMMANDS, StageCommand
from wavlink_edge.runtime import index as index_commands
from wavlink_edge.runtime import parallel
from wavlink_edge.runtime.arguments import DEBUG_ENV, DEFAULT_MODEL_DIR, add_model_option, error_exit, positive_int, printable
from wavlink_edge.runtime.errors import InputError, WavLinkError
from wavlink_edge.runtime.features import WAVEFORM_FRONTEND_FILE
from wavlink_edge.runtime.files import hold_point
from wavlink_edge.runtime.inputs import expand_inputs
from wavlink_edge.runtime.lyrics import Lyrics
from wavlink_edge.runtime.manifest import PRECISION_CHOICES, Manifest
from wavlink_edge.runtime.model import WavLink
from wavlink_edge.runtime.outputs import OUTPUT_SUFFIXES, RowWriter, check_output, exclusive_lock, sidecar_path
from wavlink_edge.runtime.ray_pipeline import cmd_embed_ray
from wavlink_edge.runtime.session import quiet_onnxruntime, would_start


class CliError(WavLinkError):
    """A usage, model or output problem: printed as one line, exit code 2."""




def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help=f"export directory (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dim (default: the full width)")
    parser.add_argument("--provider", action="append", dest="providers", metavar="NAME",
                        help="ORT execution provider, repeatable, in order (default TensorRT -> CUDA -> CPU)")
    parser.add_argument("--threads", type=positive_int, default=None, help="ORT intra-op threads (default: every core)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log provider and artifact choices, and onnxruntime's own messages")


def _add_output_options(parser: argparse.ArgumentParser, default_batch: int) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=default_batch)
    parser.add_argument("--out", type=Path, help=f"output file {'|'.join(OUTPUT_SUFFIXES)} (default: JSON lines on stdout)")
    parser.add_argument("--resume", action="store_true",
                        help="with --out X.jsonl: keep its rows and embed only the sources it does not hold yet")


def build_parser() -> argparse.ArgumentParser:
    """The runtime's commands, each with its handler (`set_defaults(handler=...)`), and the build stages'
    commands listed for --help (main() runs those before this parser sees them)."""
    parser = argparse.ArgumentParser(prog="wavlink-edge", description="WavLink audio-text embeddings, torch-free.",
                                     epilog="Build-stage commands need their extra (shown in brackets). "
                                            f"--debug before the command, or {DEBUG_ENV}=1, shows a refusal's traceback.")
    parser.add_argument("--version", action="version", version=f"wavlink-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a refusal")
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
    parallel.add_options(embed, positive_int)
    embed.set_defaults(handler=cmd_embed)

    text = commands.add_parser("embed-text", help="embed texts")
    text.add_argument("texts", nargs="*", help="texts to embed")
    text.add_argument("--file", type=Path, help="UTF-8 file, one text per line (after the positional texts); "
                      "lines split on \\n or \\r\\n only, a blank line is an empty text (kept, so rows match lines)")
    _add_model_options(text)
    _add_output_options(text, 32)
    text.set_defaults(handler=cmd_embed_text)

    sim = commands.add_parser("similarity", help="cosine similarity of one audio file to each text")
    sim.add_argument("audio")
    sim.add_argument("texts", nargs="+")
    _add_model_options(sim)
    sim.add_argument("--clip-policy", choices=("pad", "trim"), default=None)
    sim.set_defaults(handler=cmd_similarity)

    info = commands.add_parser("info", help="describe an export: model, dims, policy, precisions and fidelity, "
                               "what would load here")
    add_model_option(info, dest="model_dir", positional=True)
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(handler=cmd_info)
    verify = commands.add_parser("verify", help="re-hash every file of an export against its manifest now")
    add_model_option(verify, dest="model_dir", positional=True)
    verify.set_defaults(handler=cmd_verify)
    add_lyrics_parser(commands)
    for name, handler in index_commands.add_commands(commands, _add_model_options, positive_int).items():
        commands.choices[name].set_defaults(handler=handler)

    for name, command in STAGE_COMMANDS.items():  # parsed by their own modules: see main()
        commands.add_parser(name, help=f"{command.help} [{command.extra}]", add_help=False)
    commands.add_parser("bench", help=f"run a benchmark: bench {{{','.join(BENCHMARKS)}}} [ARGS...] [bench]", add_help=False)
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
        hint = ("create it with `wavlink-edge export --size base` (in a checkout: python export/to_onnx.py --size base)"
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
                hold_point(f"rows written: {writer.rows}")  # the crash test kills the run here
                if error:
                    failed += 1
                    progress.write(f"failed: {printable(error)}", file=sys.stderr)
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


def cmd_embed(args: argparse.Namespace) -> int:
    if not args.paths and not args.from_list:
        raise CliError("no inputs: give files, directories, - (paths on stdin) or --from-list FILE")
    sources = expand_inputs(args.paths, args.from_list, args.ext, args.glob)
    if not sources:
        raise CliError("the given directories and lists hold no audio files (extensions: see --ext)")
    if args.engine == "ray":
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
        todo = [t for t in texts if printable(t) not in writer.done]

        def results():
            for start in range(0, len(todo), args.batch_size):
                batch = todo[start:start + args.batch_size]
                for text, (embedding, error) in zip(batch, _embed_texts_per_item(model, batch)):
                    yield printable(text), embedding, error

        return _run_rows(args, writer, len(todo), "text", results(), [printable(t) for t in texts])


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
            results.append((None, str(exc).replace("text[0]", repr(printable(text)))))
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
    starts, blocked = would_start(available)
    here = {}
    for precision in ("fp32", "fp16", "int8"):
        try:
            here[precision] = WavLink.describe_choice(manifest, precision, available)
            for name in here[precision].split(" on ")[0].split(" + "):  # what would load must be there, unaltered
                manifest.verify_artifact(name)
        except WavLinkError as exc:
            here[precision] = f"unavailable: {exc}"
    return {"export": str(model_dir), "model": spec.__dict__ | {"matryoshka_dims": list(spec.matryoshka_dims)},
            "warning": manifest.data.get("warning"), "artifacts": artifacts, "providers_here": available,
            "providers_starting": starts, "providers_blocked": blocked, "would_load": here,
            "waveform_frontend": manifest.files.get(WAVEFORM_FRONTEND_FILE)}


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
    rows = [(name, artifact["tower"], artifact["precision"], f"{(artifact['bytes'] or 0) / 1e6:.1f} MB",
             fidelity_summary(artifact["fidelity"] or {})) for name, artifact in info["artifacts"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else []
    for row in rows:  # columns as wide as their longest entry (the lyrics towers' names are long)
        print("  " + "  ".join(cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              + f"  {row[4]}")
    frontend = info["waveform_frontend"]
    if frontend:
        max_abs = (frontend.get("fidelity") or {}).get("max_abs")
        print(f"  {WAVEFORM_FRONTEND_FILE}: waveform in, log-mel out (features='onnx')"
              + (f"; vs runtime/features.py max-abs {max_abs:.1e}" if isinstance(max_abs, float) else ""))
    print(f"  providers in this onnxruntime: {', '.join(info['providers_here'])}")
    for provider, reason in info["providers_blocked"].items():
        print(f"  {provider} cannot start here: {reason}")
    for precision, choice in info["would_load"].items():
        print(f"  --precision {precision}: {choice}")
    return 0


def fidelity_summary(fidelity: dict) -> str:
    """The manifest's measured figures in one phrase: fp32 against PyTorch; fp16/INT8 against fp32 (worst
    Matryoshka dim), the mixed-batch check where recorded, and a mark only when written under the gate."""
    if not fidelity:
        return ""
    if "reference" in fidelity:
        text = f"vs {fidelity['reference']}: cosine min {fidelity.get('cosine_min', float('nan')):.6f}"
        return text + (f", max-abs {fidelity['max_abs']:.1e}" if isinstance(fidelity.get("max_abs"), float) else "")
    dims = [v for k, v in fidelity.items() if k.isdigit() and isinstance(v, dict)]
    if not dims:
        return ""
    text = (f"vs fp32: cosine mean {min(d['cosine_mean'] for d in dims):.5f}, "
            f"min {min(d['cosine_min'] for d in dims):.5f} (worst dim)")
    mixed = (fidelity.get("mixed_batch") or {}).get("fused_fp32_cpu")
    if mixed:
        text += f"; mixed batch vs alone max-abs {mixed['max_abs']:.1e} (fp32 copy)"
    return text + ("; FORCED under its gate" if fidelity.get("forced") else "")


def cmd_verify(args: argparse.Namespace) -> int:
    _check_model_dir(args.model_dir)
    manifest = Manifest.load(args.model_dir)
    names = manifest.verify_all()
    print(f"{len(names)} files match {args.model_dir / 'manifest.json'} (size and sha256)")
    return 0


def run_stage_command(name: str, command: StageCommand, argv: list[str]) -> int:
    """Import a build stage's module (saying which extra is missing, in one line, if its imports are not
    installed) and run its main(argv), its usage line naming the `wavlink-edge` command."""
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] == "wavlink_edge":
            raise  # a module of this package missing is a broken install or a bug, not a missing extra
        raise CliError(f"`wavlink-edge {name}` needs the [{command.extra}] extra (no module {exc.name!r} here): "
                       f"pip install \"wavlink-edge[{command.extra}]\" (from a checkout: "
                       f"pip install -c constraints-cpu.txt \".[{command.extra}]\")") from None
    prog, sys.argv[0] = sys.argv[0], f"wavlink-edge {name}"  # argparse takes its usage line's name from argv[0]
    try:
        code = module.main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv[0] = prog
    return code if isinstance(code, int) else (0 if code is None else 1)


def run_benchmark(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        listing = "\n".join(f"  {name:9s} {b.help}" for name, b in BENCHMARKS.items())
        if argv[:1] in (["-h"], ["--help"]):
            print(f"usage: wavlink-edge bench NAME [ARGS...] (needs the [bench] extra)\n{listing}")
            return 0
        raise CliError(f"bench: give one of {', '.join(BENCHMARKS)} (wavlink-edge bench --help)"
                       + (f", not {argv[0]!r}" if argv else ""))
    return run_stage_command(f"bench {argv[0]}", BENCHMARKS[argv[0]], argv[1:])


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
    lyrics.set_defaults(handler=cmd_lyrics)


def cmd_lyrics(args: argparse.Namespace) -> int:
    """Same rows, order, errors and formats as `embed`; the embedding is the lyrics head's."""

    sources = expand_inputs(args.paths)
    if not sources:
        raise CliError("the given directories hold no audio files")

    def load():
        _check_model_dir(args.model)
        model = Lyrics.from_pretrained(args.model, precision=args.precision)
        embed = lambda paths: ((r.source, r.embedding, r.error) for r in model.iter_embed_lyrics(paths))  # noqa: E731
        return model.dim, _header(model.manifest, model.digest, model.dim, "lyrics", args.precision), embed

    return _embed_files(args, sources, load)



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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:  # for this command and the processes it starts (error_exit reads it)
        os.environ[DEBUG_ENV] = "1"
        argv = argv[1:]
    try:
        if argv[:1] == ["bench"]:
            return run_benchmark(argv[1:])
        if argv and argv[0] in STAGE_COMMANDS:
            return run_stage_command(argv[0], STAGE_COMMANDS[argv[0]], argv[1:])
    except WavLinkError as exc:
        return error_exit(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    quiet_onnxruntime(verbose)
    try:
        with native_stderr_silenced(not verbose):
            # After silencing: the handler writes to the stderr Python keeps for the terminal.
            logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True,
                                format="%(levelname)s %(name)s: %(message)s" if verbose else "warning: %(message)s")
            logging.getLogger().handlers[0].addFilter(_OncePerMessage())
            return args.handler(args)
    except (WavLinkError, OSError) as exc:  # OSError: the output device failing under us (disk full, a vanished mount)
        return error_exit(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
