"""Text front end: one tokenizer configuration (truncate at the model's limit, pad to the longest in a
batch) turning texts into the text tower's int64 feeds. The export writes tokenizer.json configured
this way, so the runtime loads it as is."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TEXT_INPUTS = ("input_ids", "attention_mask")


class TextTokenizer:
    """texts -> {"input_ids", "attention_mask"} [batch, longest] int64."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        """A tokenizer.json as written by the export (already configured)."""
        return cls(Tokenizer.from_str(text))

    @classmethod
    def configured(cls, path: str | Path, max_length: int, pad_token_id: int) -> TextTokenizer:
        """A backbone's tokenizer.json, with the model's truncation limit and padding switched on."""
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad_token_id, pad_token=tokenizer.id_to_token(pad_token_id) or "[PAD]")
        return cls(tokenizer)

    def save(self, path: str | Path) -> Path:
        self.tokenizer.save(str(path))
        return Path(path)

    def feeds(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(encodings), -1)}
