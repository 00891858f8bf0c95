"""Grouping of audio windows (of many items) into encoder batches, with bounded memory.

Windows are grouped by frame count (the "trim" policy gives many lengths; padding them to a common
length would change the embeddings). A group is handed back as a batch once it holds ``batch_size``
windows or ``max_batch_frames`` frames (the encoder's activation memory grows with batch x frames:
eight padded 30 s windows need several GB in ORT, one needs a few hundred MB). When more windows wait
in part-filled groups than one full batch, the group holding the oldest window goes, so what waits
stays bounded whatever the inputs. The batcher never runs anything: the caller encodes what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 3000 frames: one padded 30 s window, six 5 s ones. On CPUs a 30 s window gains nothing from batch-mates
# (b4 costs 4x b1), short clips still batch; measured peak RSS embedding a 2-hour file with the base model:
# 1.17 GB at 6000 frames, 0.84 GB at 3000.
DEFAULT_MAX_BATCH_FRAMES = 3000


@dataclass
class Batch:
    items: list[int]  # the item index of each row
    features: np.ndarray  # [rows, n_mels, frames] float32


class WindowBatcher:
    """``add`` windows; it returns the batches that became ready. ``flush`` returns the rest."""

    def __init__(self, batch_size: int, max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.max_batch_frames = max_batch_frames
        self.groups: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # frames -> [(arrival, item, features)]
        self.waiting = 0
        self.arrivals = 0

    def rows_for(self, frames: int) -> int:
        """How many windows of this length make a batch (at least one, however long)."""
        return max(1, min(self.batch_size, self.max_batch_frames // max(frames, 1)))

    def add(self, item: int, features: np.ndarray) -> list[Batch]:
        frames = features.shape[-1]
        group = self.groups.setdefault(frames, [])
        group.append((self.arrivals, item, features))
        self.arrivals += 1
        self.waiting += 1
        if len(group) >= self.rows_for(frames):
            return [self._take(frames)]
        if self.waiting > self.batch_size:
            return [self._take(min(self.groups, key=lambda f: self.groups[f][0][0]))]
        return []

    def drop(self, item: int) -> None:
        """Forget an item's waiting windows (it failed; their results would be thrown away)."""
        for frames in list(self.groups):
            kept = [entry for entry in self.groups[frames] if entry[1] != item]
            self.waiting -= len(self.groups[frames]) - len(kept)
            if kept:
                self.groups[frames] = kept
            else:
                del self.groups[frames]

    def flush(self) -> list[Batch]:
        batches = []
        while self.groups:
            batches.append(self._take(min(self.groups, key=lambda f: self.groups[f][0][0])))
        return batches

    def _take(self, frames: int) -> Batch:
        """The oldest windows of one length, at most one batch; the rest stay queued."""
        group = self.groups[frames]
        rows = self.rows_for(frames)
        taken, rest = group[:rows], group[rows:]
        if rest:
            self.groups[frames] = rest
        else:
            del self.groups[frames]
        self.waiting -= len(taken)
        return Batch([item for _, item, _ in taken], np.stack([features for _, _, features in taken]))
