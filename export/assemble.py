"""Assemble a WavLink checkpoint directory from local Hugging Face backbone directories.

    python export/assemble.py --size large --whisper ~/models/whisper-large-v3 --text ~/models/clip-vit-large-patch14 --out ckpt/
    python export/to_onnx.py --size large --checkpoint ckpt/

The global token (and the projector, for a BERT text encoder) are seeded, not trained: the checkpoint
says "untrained heads" until trained weights are overlaid with --heads FILE.safetensors.
"""
from __future__ import annotations

import argparse
import sys

from wavlink_edge.export.backbones import from_backbones, load_heads
from wavlink_edge.export.model import SIZES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", required=True, choices=SIZES)
    parser.add_argument("--whisper", required=True, help="HF Whisper directory (config.json + *.safetensors)")
    parser.add_argument("--text", required=True, help="HF CLIP or BERT directory (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--heads", help="safetensors file with trained global token / projectors to overlay")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        model, tokenizer = from_backbones(args.size, args.whisper, args.text)
        if args.heads:
            load_heads(model, args.heads)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.save_pretrained(args.out, tokenizer_json=tokenizer)
    print(f"wrote {args.out} ({model.config.name}, {model.config.heads} heads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
