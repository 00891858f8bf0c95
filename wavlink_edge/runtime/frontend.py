"""The audio front end in a thread pool: decoding, resampling and log-mel features of the next items run while
the one encoder session works on the current batch.

Why threads and one session: decoding (libsndfile, FFmpeg), resampling (soxr), the FFT and the filterbank
product release the GIL, so threads run them in parallel without copying arrays between processes; and a
single encoder session keeps one set of weights and one GPU context (``--workers N`` processes would hold N).
On a GPU host the encoder is fast enough that a serial front end starves it (issue 29: 32 files/s end to
end against 300-500 for the encoder alone); on a CPU host the encoder's cores stop waiting for the decoder.

Order and errors: items come back in input order, each with an iterator over its windows that raises the
item's own error where the serial front end would have raised it. Memory stays bounded: at most
``lookahead`` items are in flight, each holding at most ``QUEUED_WINDOWS`` finished windows, so an hours-long
file is still decoded a window at a time.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from wavlink_edge.runtime.errors import UsageError

QUEUED_WINDOWS = 4  # finished windows one item may hold before its worker waits for the encoder
_POLL_SECONDS = 0.1


def default_decode_workers() -> int:
    """Half the cores this process may use (the encoder keeps the rest), at most 4, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2))


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def ordered_windows(items: Iterable[Any], windows_of: Callable[[Any, int], Iterator[np.ndarray]],
                    workers: int, lookahead: int | None = None) -> Iterator[tuple[int, Any, Iterator[np.ndarray]]]:
    """(index, item, windows) for every item, in input order; ``windows`` yields what ``windows_of(item, index)``
    yields and raises what it raised, but is computed ahead by ``workers`` threads.

    ``workers == 0`` runs ``windows_of`` lazily in the caller's thread (the serial front end). Consume each
    item's windows before asking for the next item: moving on abandons the rest of its windows. ``items`` is
    read lazily (a stream of paths from stdin works).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"decode workers must be an integer >= 0, got {workers!r}")
    if workers == 0:
        for index, item in enumerate(items):
            yield index, item, windows_of(item, index)
        return
    lookahead = lookahead or 2 * workers
    stop = threading.Event()
    pending: deque = deque()
    source = enumerate(items)

    def put(slot: queue.Queue, abandoned: threading.Event, value) -> bool:
        while not (stop.is_set() or abandoned.is_set()):
            try:
                slot.put(value, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce(item, index: int, slot: queue.Queue, abandoned: threading.Event) -> None:
        try:
            for window in windows_of(item, index):
                if not put(slot, abandoned, window):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who decides what it means
            put(slot, abandoned, _Failed(error))
            return
        put(slot, abandoned, _END)

    def drain(slot: queue.Queue) -> Iterator[np.ndarray]:
        while True:
            value = slot.get()
            if value is _END:
                return
            if isinstance(value, _Failed):
                raise value.error
            yield value

    executor = ThreadPoolExecutor(workers, thread_name_prefix="wavlink-frontend")
    try:
        while True:
            while len(pending) < lookahead:
                nxt = next(source, None)
                if nxt is None:
                    break
                index, item = nxt
                slot, abandoned = queue.Queue(QUEUED_WINDOWS), threading.Event()
                executor.submit(produce, item, index, slot, abandoned)
                pending.append((index, item, slot, abandoned))
            if not pending:
                return
            index, item, slot, abandoned = pending.popleft()
            yield index, item, drain(slot)
            abandoned.set()  # whatever the caller did not read of this item is not needed
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
