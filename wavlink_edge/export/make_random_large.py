"""Random-weight Hugging Face directories of the exact WavLink-Large backbone shapes (no real weights).

    python export/make_random_large.py --out /work/large-scratch --clip-bpe open_clip_torch-*.whl

writes OUT/whisper-large-v3-random (WhisperForConditionalGeneration: the large-v3 encoder, 32 layers,
d 1280, 20 heads, 128 mels, 1500 positions; a ONE-layer decoder, since WavLink uses only the encoder)
and OUT/clip-vit-large-patch14-text-random (CLIPTextModelWithProjection: 12 layers, width 768, 12
heads, 77 positions, projection 768, with CLIP's real BPE tokenizer built from open_clip's
bpe_simple_vocab_16e6.txt.gz, MIT). Every weight is random (seeded): the directories exist to measure
size, memory, speed and quantization mechanics of the real shape, never quality. Each holds a
RANDOM_WEIGHTS.md saying so. No large-v3 or CLIP-L weights are reachable offline here.
"""
from __future__ import annotations

import argparse
import gzip
import sys
import zipfile
from pathlib import Path

import torch

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.export.backbones import RANDOM_MARKER

WHISPER_LARGE_V3 = dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                        encoder_ffn_dim=5120, max_source_positions=1500, vocab_size=51866,
                        decoder_layers=1, decoder_attention_heads=20, decoder_ffn_dim=5120, max_target_positions=448)
# openai/clip-vit-large-patch14 text_config (its legacy ids: eos 2 selects argmax pooling, i.e. the EOT token)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
                   bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_BPE_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x2 (+ "</w>") + merges + 2 specials = 49408
NOTE = """# RANDOM WEIGHTS

Every weight in this directory is random (torch seed {seed}), written by wavlink-edge's
`export/make_random_large.py`: the exact shapes of {what}, for measuring size, memory, speed and
quantization mechanics. Embeddings from it mean nothing.
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte mapped to a printable character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def read_clip_bpe(source: str | Path) -> list[str]:
    """CLIP's merges from bpe_simple_vocab_16e6.txt.gz, or from an open_clip_torch wheel that carries it."""
    source = Path(source)
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz")), None)
            if member is None:
                raise ValueError(f"{source}: no bpe_simple_vocab_16e6.txt.gz inside")
            raw = wheel.read(member)
    else:
        raw = source.read_bytes()
    return [m for m in gzip.decompress(raw).decode("utf-8").split("\n")[1 : CLIP_BPE_MERGES + 1] if m.strip()]


def clip_tokenizer(merge_lines: list[str]):
    """CLIP's tokenizer (as openai/clip-vit-large-patch14 ships it) from its merges: the vocabulary is
    derived from them the way OpenAI's simple_tokenizer does; transformers builds the fast tokenizer."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merge_lines]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split()) for m in merge_lines])


def write_whisper(out: Path, seed: int, **overrides) -> Path:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**{**WHISPER_LARGE_V3, **overrides}))
    model.save_pretrained(out, safe_serialization=True)
    (out / RANDOM_MARKER).write_text(NOTE.format(seed=seed, what="whisper-large-v3 (encoder; one-layer decoder)"))
    return out


def write_clip_text(out: Path, seed: int, merge_lines: list[str], **overrides) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**{**CLIP_L_TEXT, **overrides}))
    model.save_pretrained(out, safe_serialization=True)
    clip_tokenizer(merge_lines).backend_tokenizer.save(str(out / "tokenizer.json"))
    (out / RANDOM_MARKER).write_text(NOTE.format(seed=seed, what="CLIP ViT-L/14's text tower + text_projection"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="parent directory (keep it outside the repository: ~3 GB)")
    parser.add_argument("--clip-bpe", required=True,
                        help="bpe_simple_vocab_16e6.txt.gz, or an open_clip_torch wheel holding it (`pip download --no-deps open_clip_torch`)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        merges = read_clip_bpe(args.clip_bpe)
        whisper = write_whisper(out / "whisper-large-v3-random", args.seed)
        clip = write_clip_text(out / "clip-vit-large-patch14-text-random", args.seed, merges)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {whisper} and {clip} (RANDOM weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
