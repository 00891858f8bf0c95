"""``wavlink-edge`` command line: embed audio files or texts, quick similarity checks, benchmarks.

    wavlink-edge embed clips/*.flac --model exports/wavlink-base --dim 128 --out emb.npy
    wavlink-edge embed-text "a phone is ringing" --file captions.txt --out text.jsonl
    wavlink-edge similarity clip.flac "a phone is ringing" "a woman speaks"
    wavlink-edge bench latency --help

Exit codes: 0 every item embedded, 1 some items failed (each listed, with its reason), 2 usage or model
error. Outputs keep input order and name each row's source; failed items stay in the output with their
error (.jsonl: an "error" field; .npy: a NaN row, reason in the sidecar; .npz: an "errors" array).
"""
from __future__ import annotations

import argparse
import json
import logging
import runpy
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from wavlink_edge.runtime.errors import InputError, WavLinkError
from wavlink_edge.runtime.model import WavLink
from wavlink_edge.runtime.manifest import PRECISION_CHOICES

DEFAULT_MODEL_DIR = Path("exports/wavlink-base")
OUTPUT_SUFFIXES = (".npy", ".npz", ".jsonl")
BENCH_MODULES = {"latency": "wavlink_edge.bench.latency", "recall": "wavlink_edge.bench.recall"}


class CliError(Exception):
    """A usage or model problem: printed as one line, exit code 2."""


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR,
                        help=f"export directory (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dim (default: the full width)")
    parser.add_argument("--provider", action="append", dest="providers", metavar="NAME",
                        help="ORT execution provider, repeatable, in order (default TensorRT -> CUDA -> CPU)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log provider and artifact choices")


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
    embed.add_argument("--batch-size", type=int, default=8)
    embed.add_argument("--out", type=Path, help=f"output file {'|'.join(OUTPUT_SUFFIXES)} (default: JSON lines on stdout)")

    text = commands.add_parser("embed-text", help="embed texts")
    text.add_argument("texts", nargs="*", help="texts to embed")
    text.add_argument("--file", type=Path, help="UTF-8 file with one text per line (after the positional texts)")
    _add_model_options(text)
    text.add_argument("--batch-size", type=int, default=32)
    text.add_argument("--out", type=Path, help=f"output file {'|'.join(OUTPUT_SUFFIXES)} (default: JSON lines on stdout)")

    sim = commands.add_parser("similarity", help="cosine similarity of one audio file to each text")
    sim.add_argument("audio")
    sim.add_argument("texts", nargs="+")
    _add_model_options(sim)
    sim.add_argument("--clip-policy", choices=("pad", "trim"), default=None)

    bench = commands.add_parser("bench", help="run a benchmark: bench latency|recall [ARGS...]")
    bench.add_argument("benchmark", choices=sorted(BENCH_MODULES))
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


def _check_out(out: Path | None) -> None:
    if out is not None and out.suffix not in OUTPUT_SUFFIXES:
        raise CliError(f"--out {out}: unsupported extension; use one of {', '.join(OUTPUT_SUFFIXES)}")


def write_rows(out: Path | None, sources: list[str], embeddings: list[np.ndarray | None], errors: list[str | None],
               dim: int, source_key: str) -> None:
    """Write all rows in input order; failed rows are kept, marked with their error."""
    if out is None or out.suffix == ".jsonl":
        lines = []
        for source, embedding, error in zip(sources, embeddings, errors):
            row = {source_key: source}
            row.update({"error": error} if error else {"embedding": [round(float(v), 7) for v in embedding]})
            lines.append(json.dumps(row, ensure_ascii=False))
        text = "\n".join(lines) + ("\n" if lines else "")
        if out is None:
            sys.stdout.write(text)
        else:
            out.write_text(text, encoding="utf-8")
        return
    matrix = np.full((len(sources), dim), np.nan, np.float32)
    for row, embedding in enumerate(embeddings):
        if embedding is not None:
            matrix[row] = embedding
    if out.suffix == ".npz":
        np.savez(out, embeddings=matrix, sources=np.array(sources, dtype=str),
                 errors=np.array([e or "" for e in errors], dtype=str))
        return
    np.save(out, matrix)
    # Row i of the .npy <-> line i here; a NaN row's reason is on its line.
    sidecar = out.with_name(out.name + ".sources.txt")
    sidecar.write_text("".join(f"{_one_line(s)}\t{'error: ' + _one_line(e) if e else 'ok'}\n"
                               for s, e in zip(sources, errors)), encoding="utf-8")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def cmd_embed(args: argparse.Namespace) -> int:
    _check_out(args.out)
    model = _load_model(args)
    sources, embeddings, errors = [], [], []
    with tqdm(total=len(args.paths), unit="file", desc="embedding", file=sys.stderr) as progress:
        for result in model.iter_embed_audio(args.paths, dim=args.dim, batch_size=args.batch_size):
            sources.append(result.source)
            embeddings.append(result.embedding)
            errors.append(result.error)
            if result.error:
                progress.write(f"failed: {result.error}", file=sys.stderr)
            progress.update(1)
    return _summarise(args.out, sources, embeddings, errors, model.dim, "source")


def cmd_embed_text(args: argparse.Namespace) -> int:
    _check_out(args.out)
    texts = list(args.texts)
    if args.file:
        try:
            texts += args.file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--file {args.file}: {exc}") from None
    if not texts:
        raise CliError("no texts given (positional TEXTS or --file)")
    model = _load_model(args)
    sources, embeddings, errors = [], [], []
    batch = max(1, args.batch_size)
    with tqdm(total=len(texts), unit="text", desc="embedding", file=sys.stderr) as progress:
        for start in range(0, len(texts), batch):
            for text, (embedding, error) in zip(texts[start:start + batch], _embed_texts_per_item(model, texts[start:start + batch])):
                sources.append(text.encode("utf-8", "backslashreplace").decode("utf-8"))
                embeddings.append(embedding)
                errors.append(error)
                if error:
                    progress.write(f"failed: {error}", file=sys.stderr)
            progress.update(len(texts[start:start + batch]))
    return _summarise(args.out, sources, embeddings, errors, model.dim, "text")


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
            results.append((None, str(exc).replace("text[0]", repr(text.encode("utf-8", "backslashreplace").decode()))))
    return results


def _summarise(out, sources, embeddings, errors, dim, source_key) -> int:
    write_rows(out, sources, embeddings, errors, dim, source_key)
    failed = sum(e is not None for e in errors)
    where = f" -> {out}" if out else ""
    print(f"{len(sources) - failed} ok, {failed} failed{where}", file=sys.stderr)
    return 0 if failed == 0 else 1


def cmd_similarity(args: argparse.Namespace) -> int:
    model = _load_model(args)
    audio = model.embed_audio([args.audio])
    texts = model.embed_text(args.texts)
    for text, score in zip(args.texts, model.similarity(audio, texts)[0]):
        print(f"{score:+.4f}  {text}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    module = BENCH_MODULES[args.benchmark]
    try:
        import importlib.util

        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise CliError(f"benchmark module {module} is not installed in this build; benchmarks need "
                       "`pip install 'wavlink-edge[bench]'` and the bench/ package")
    saved_argv = sys.argv
    sys.argv = [module] + [a for a in args.args if a != "--"]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0


COMMANDS = {"embed": cmd_embed, "embed-text": cmd_embed_text, "similarity": cmd_similarity, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (CliError, WavLinkError, InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
