"""Batching of audio windows of many items, with bounded memory and input order kept.

Windows are grouped by frame count (the "trim" policy gives many lengths; padding them to a common
length would change the embeddings), a group runs once it holds ``batch_size`` windows, and when too
many windows wait in part-filled groups the group holding the oldest one runs, so memory stays at
about two batches of features whatever the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


@dataclass
class ItemProgress:
    """Running state of one input item: sum of its window embeddings until all windows are done."""

    index: int
    source: str
    embedding_sum: np.ndarray | None = None
    windows_done: int = 0
    windows_pending: int = 0
    decoded: bool = False  # no more windows will come
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.decoded and (self.error is not None or self.windows_pending == 0)


class OrderedWindowBatcher:
    """Feed windows with ``add``; finished items come out of ``pop_finished`` in input order."""

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encode = encode
        self.batch_size = batch_size
        self.max_pending = 2 * batch_size
        self.items: dict[int, ItemProgress] = {}
        self.groups: dict[int, list] = {}  # frames -> [(arrival, index, features)], oldest first
        self.pending = 0
        self.arrivals = 0
        self.next_index = 0

    def start(self, index: int, source: str) -> ItemProgress:
        item = self.items[index] = ItemProgress(index, source)
        return item

    def add(self, index: int, features: np.ndarray) -> None:
        self.items[index].windows_pending += 1
        frames = features.shape[-1]
        self.groups.setdefault(frames, []).append((self.arrivals, index, features))
        self.arrivals += 1
        self.pending += 1
        if len(self.groups[frames]) >= self.batch_size:
            self._run(frames)
        elif self.pending > self.max_pending:
            oldest = min(self.groups, key=lambda f: self.groups[f][0][0])
            self._run(oldest)

    def fail(self, index: int, message: str) -> None:
        """Mark an item failed and drop its queued windows (their results would be thrown away)."""
        item = self.items[index]
        item.error, item.decoded = message, True
        for frames in list(self.groups):
            entries = self.groups[frames]
            kept = [entry for entry in entries if entry[1] != index]
            self.pending -= len(entries) - len(kept)
            if kept:
                self.groups[frames] = kept
            else:
                del self.groups[frames]
        item.windows_pending = 0

    def finish_item(self, index: int) -> None:
        self.items[index].decoded = True

    def flush(self) -> None:
        for frames in sorted(self.groups, key=lambda f: self.groups[f][0][0]):
            self._run(frames)

    def pop_finished(self) -> Iterator[ItemProgress]:
        while self.next_index in self.items and self.items[self.next_index].finished:
            yield self.items.pop(self.next_index)
            self.next_index += 1

    def _run(self, frames: int) -> None:
        entries = self.groups.pop(frames)
        self.pending -= len(entries)
        for start in range(0, len(entries), self.batch_size):
            chunk = entries[start:start + self.batch_size]
            embeddings = self.encode(np.stack([features for _, _, features in chunk]))
            for (_, index, _), embedding in zip(chunk, embeddings):
                item = self.items[index]
                item.embedding_sum = embedding.astype(np.float64) if item.embedding_sum is None else item.embedding_sum + embedding
                item.windows_done += 1
                item.windows_pending -= 1
