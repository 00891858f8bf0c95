"""Assemble a WavLink checkpoint directory from local Hugging Face backbone directories.

    python export/assemble.py --size large --whisper ~/models/whisper-large-v3 --text ~/models/clip-vit-large-patch14 --out ckpt/
    python export/to_onnx.py --size large --checkpoint ckpt/

The global token (and the projector, for a BERT text encoder) are seeded, not trained: the checkpoint
says "untrained heads" until trained weights are overlaid with --heads FILE.safetensors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.export.backbones import check_audio_size, check_heads_file, from_backbones, load_heads, whisper_dims
from wavlink_edge.export.model import SIZES
from wavlink_edge.runtime.text import TextTokenizer


def check_out(out: Path, inputs: list[Path], force: bool) -> None:
    """--out must not be (or hold) an input, and must not be someone's non-empty folder."""
    resolved = out.resolve()
    for source in inputs:
        source = source.resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise ValueError(f"--out {out} overlaps the input {source}; write the checkpoint elsewhere")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty; refusing to replace its files (pass --force)")


def check_size(model, size: str, tokenizer_json: Path) -> None:
    """The backbones must have the shapes of the size asked for, and the tokenizer must fit the text model."""
    check_audio_size(size, model.config.audio, "--whisper")
    vocab = TextTokenizer.configured(tokenizer_json, 8, 0).tokenizer.get_vocab_size()
    table = model.text.backbone.config.vocab_size
    if vocab > table:
        raise ValueError(f"--text tokenizer has {vocab} tokens but the text model's embedding table has {table}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", required=True, choices=SIZES)
    parser.add_argument("--whisper", required=True, help="HF Whisper directory (config.json + *.safetensors)")
    parser.add_argument("--text", required=True, help="HF CLIP or BERT directory (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--heads", help="safetensors file with trained global token / projectors to overlay")
    parser.add_argument("--out", required=True)
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    try:
        inputs = [Path(args.whisper), Path(args.text)] + ([Path(args.heads)] if args.heads else [])
        check_out(Path(args.out), inputs, args.force)
        if args.heads:
            check_heads_file(args.heads)
        if (Path(args.whisper) / "config.json").is_file():  # the shape from the config: refused before GBs are read
            check_audio_size(args.size, whisper_dims(args.whisper), f"--whisper {args.whisper}")
        model, tokenizer = from_backbones(args.size, args.whisper, args.text)
        if args.heads:
            load_heads(model, args.heads)
        check_size(model, args.size, tokenizer)
        model.save_pretrained(args.out, tokenizer_json=tokenizer)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # malformed safetensors / tokenizer files raise library-specific Exceptions
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({model.config.name}, {model.config.heads} heads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
