"""The one timing helper of the benchmarks: best wall time of a call, synchronising an accelerator."""
from __future__ import annotations

import time
from typing import Callable, Optional, Tuple, TypeVar

import torch

T = TypeVar('T')


def synchronize(device: Optional[torch.device]) -> None:
    """Wait for queued GPU work, so that wall time covers it (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], T], repeats: int = 3, warmup: int = 0, device: Optional[torch.device] = None,
                 at_least_s: float = 0.0, give_up_s: float = float('inf')) -> Tuple[float, T]:
    """(best seconds of one call, the last result) over ``repeats`` timed calls after ``warmup`` untimed ones.

    The best, not the mean: on a shared machine other work only ever adds time. Timing goes on past
    ``repeats`` until ``at_least_s`` seconds have passed (a rate probe), and stops early once one call
    took longer than ``give_up_s`` (a slow baseline needs no second pass to be known slow).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    best, calls, began = float('inf'), 0, time.perf_counter()
    while True:
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
        calls += 1
        if best > give_up_s or (calls >= repeats and time.perf_counter() - began >= at_least_s):
            return best, result
