"""Write tests/data/tiny_export: a random, tiny WavLink export (well under 1 MB) for the runtime's tests.

    python tests/data/make_tiny_export.py        # needs the [export] extra (torch); the result is committed

The runtime's own tests run on it without torch (`pip install '.[test-runtime]'`). Its weights are
random ("untrained" heads, labelled so in its manifest): it checks the runtime's data path, not quality.
Windows are 1 s (n_ctx 50 -> 100 frames), so long-audio windowing is cheap to test.
tests/data/tiny_export_v1 is the same model as exported before the audio graph took `frame_lengths`:
kept unchanged (not made by this script) so the tests prove old exports keep working.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from wavlink_edge.export.model import AudioDims, TextSpec, WavLinkConfig, WavLinkModel, matryoshka_dims
from wavlink_edge.export.to_onnx import export_model

OUT = Path(__file__).resolve().parent / "tiny_export"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "a the dog bark phone ring woman man speak music piano rain wind car bird door knock".split()


def tiny_tokenizer(path: Path) -> Path:
    """A BERT-style WordPiece tokenizer whose vocabulary (letters + a few words) covers any text."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    vocab = SPECIAL + letters + ["##" + c for c in letters] + WORDS
    tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(path))
    return path


def tiny_config(vocab_size: int) -> WavLinkConfig:
    bert = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=32)
    return WavLinkConfig(size="base", name="wavlink-tiny-random", embed_dim=32, matryoshka_dims=matryoshka_dims(32),
                         audio=AudioDims(n_mels=80, n_ctx=50, d_model=16, n_heads=2, n_layers=2, ffn_dim=32),
                         text=TextSpec(kind="bert", backbone=bert, max_length=16), clip_policy="trim",
                         sources=[{"what": "random weights (torch.manual_seed(0)) for tests; not a trained model"}])


def main() -> int:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_tokenizer(Path(scratch) / "tokenizer.json")
        vocab_size = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
        model = WavLinkModel(tiny_config(vocab_size)).eval()
        shutil.rmtree(OUT, ignore_errors=True)
        export_model(model, tokenizer, OUT)
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
