"""Grouping of audio windows (of many items) into encoder batches, with bounded memory.

Two ways to batch, chosen by what the audio graph takes:

- **Equal lengths** (graphs without ``frame_lengths``, exported before it existed): windows are grouped
  by frame count, since padding would change the embeddings. A group is handed back as a batch once it
  holds ``batch_size`` windows or ``max_batch_frames`` frames (the encoder's activation memory grows with
  batch x frames: eight padded 30 s windows need several GB in ORT, one needs a few hundred MB). When more
  windows wait in part-filled groups than one full batch, the group holding the oldest window goes, so
  what waits stays bounded whatever the inputs.
- **Mixed lengths** (graphs with ``frame_lengths``): windows of different even lengths share a batch,
  zero-padded to the longest, and the graph masks the padding so each window's embedding is exactly its
  own. Up to ``POOL_BATCHES`` batches of windows wait in a pool; when it is full, the batch that goes is
  a run of windows adjacent in length order that holds the oldest one: the most rows whose padded size
  (rows x longest) stays within ``batch_size``, ``max_batch_frames`` and ``1 + MAX_PADDING`` times
  their real frames. Odd lengths (never made by the runtime's front end) are not exact when padded and
  batch only with their own length.

The batcher never runs anything: the caller encodes what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wavlink_edge.runtime.errors import UsageError

# 3000 frames: one padded 30 s window, six 5 s ones. On CPUs a 30 s window gains nothing from batch-mates
# (b4 costs 4x b1), short clips still batch; measured peak RSS embedding a 2-hour file with the base model:
# 1.17 GB at 6000 frames, 0.84 GB at 3000.
DEFAULT_MAX_BATCH_FRAMES = 3000
FRAME_LENGTHS = "frame_lengths"  # the audio graph's optional input: each row's real mel frames, int64 [batch]
# Mixed lengths: windows waiting (in batches' worth) to be sorted into batches; padding a batch may carry
# as a fraction of its real frames (padded frames cost as much as real ones).
POOL_BATCHES = 4
MAX_PADDING = 0.25


@dataclass
class Batch:
    items: list[int]  # the item index of each row
    features: np.ndarray  # [rows, n_mels, frames] float32
    lengths: np.ndarray | None = None  # [rows] int64: each row's real frames when rows were padded


def padded_batch(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(features [rows, n_mels, longest] zero-padded, lengths [rows] int64) of windows [n_mels, frames]."""
    lengths = np.array([w.shape[-1] for w in windows], np.int64)
    features = np.zeros((len(windows), windows[0].shape[0], int(lengths.max())), np.float32)
    for row, window in zip(features, windows):
        row[:, : window.shape[-1]] = window
    return features, lengths


def with_frame_lengths(feeds: dict[str, np.ndarray], input_names) -> dict[str, np.ndarray]:
    """Feeds for a graph that takes ``frame_lengths`` and was given none: every row is all real frames
    (an unpadded batch), which is what graphs without the input compute."""
    if FRAME_LENGTHS not in input_names or FRAME_LENGTHS in feeds or "input_features" not in feeds:
        return feeds
    features = feeds["input_features"]
    return {**feeds, FRAME_LENGTHS: np.full(features.shape[0], features.shape[-1], np.int64)}


class WindowBatcher:
    """``add`` windows; it returns the batches that became ready. ``flush`` returns the rest."""

    def __init__(self, batch_size: int, max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES, mixed_lengths: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.max_batch_frames = max_batch_frames
        self.mixed_lengths = mixed_lengths
        self.groups: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # frames -> [(arrival, item, features)]
        self.pool: list[tuple[int, int, np.ndarray]] = []  # mixed lengths: [(arrival, item, features)]
        self.waiting = 0
        self.arrivals = 0

    def rows_for(self, frames: int) -> int:
        """How many windows of this length make a batch (at least one, however long)."""
        return max(1, min(self.batch_size, self.max_batch_frames // max(frames, 1)))

    def add(self, item: int, features: np.ndarray) -> list[Batch]:
        entry = (self.arrivals, item, features)
        self.arrivals += 1
        self.waiting += 1
        if self.mixed_lengths:
            self.pool.append(entry)
            return [self._take_mixed()] if self.waiting > POOL_BATCHES * self.batch_size else []
        frames = features.shape[-1]
        group = self.groups.setdefault(frames, [])
        group.append(entry)
        if len(group) >= self.rows_for(frames):
            return [self._take(frames)]
        if self.waiting > self.batch_size:
            return [self._take(min(self.groups, key=lambda f: self.groups[f][0][0]))]
        return []

    def drop(self, item: int) -> None:
        """Forget an item's waiting windows (it failed; their results would be thrown away)."""
        kept = [entry for entry in self.pool if entry[1] != item]
        self.waiting -= len(self.pool) - len(kept)
        self.pool = kept
        for frames in list(self.groups):
            kept = [entry for entry in self.groups[frames] if entry[1] != item]
            self.waiting -= len(self.groups[frames]) - len(kept)
            if kept:
                self.groups[frames] = kept
            else:
                del self.groups[frames]

    def flush(self) -> list[Batch]:
        batches = []
        while self.pool:
            batches.append(self._take_mixed())
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

    def _take_mixed(self) -> Batch:
        """The oldest window and its best run of length-order neighbours (see the module docstring)."""
        oldest = min(self.pool, key=lambda entry: entry[0])
        frames = oldest[2].shape[-1]
        same_kind = [e for e in self.pool if (e[2].shape[-1] == frames if frames % 2 else e[2].shape[-1] % 2 == 0)]
        run = sorted(same_kind, key=lambda e: (e[2].shape[-1], e[0]))
        lengths = [e[2].shape[-1] for e in run]
        at = run.index(oldest)
        best = (at, at + 1)
        for start in range(max(0, at - self.batch_size + 1), at + 1):
            real = sum(lengths[start:at])
            for end in range(at + 1, min(len(run), start + self.batch_size) + 1):
                real += lengths[end - 1]
                rows, longest = end - start, lengths[end - 1]
                if rows * longest > self.max_batch_frames:
                    break
                if rows * longest > (1 + MAX_PADDING) * real:  # a longer neighbour may still bring the ratio down
                    continue
                if rows > best[1] - best[0] or (rows == best[1] - best[0] and longest < lengths[best[1] - 1]):
                    best = (start, end)
        taken = run[best[0]:best[1]]
        chosen = {id(e) for e in taken}
        self.pool = [e for e in self.pool if id(e) not in chosen]
        self.waiting -= len(taken)
        features, row_lengths = padded_batch([e[2] for e in taken])
        return Batch([item for _, item, _ in taken], features, row_lengths)
