"""How this process's C heap serves the large, short-lived buffers of a 3D ConvNet on CPU.

A forward pass of I3D-R50 over 10 crops of 16x224x224 allocates activations of up to 320 MB, and frees them
a few milliseconds later. glibc's malloc serves every block over 32 MB with a fresh ``mmap`` and returns it
with ``munmap`` when freed, so each forward pass touches every page of every large activation for the first
time again (hundreds of thousands of page faults per pass; the figures, measured, are in docs/performance.md
and benchmarks/). Caching allocators (jemalloc, tcmalloc,
PyTorch's own on CUDA) avoid this; PyTorch's CPU performance guide suggests preloading one. Without
requiring a system library, ``keep_freed_memory`` gets the same effect from glibc: large blocks come from
the heap (mmap off) and freed memory stays with the process (trimming off), so the next forward pass
reuses pages already mapped. Results are bit-identical. The cost is memory: the process keeps its peak heap
until it exits, and blocks that no longer fit a new request raise that peak (measured in
benchmarks/cpu-2core-amd-train.txt and docs/performance.md: more for training than for inference).

The command-line jobs (``eval.kit.job.run_job(keep_heap=True)`` from their ``main``: scoring, feature
extraction, fine-tuning except with --grad-checkpointing) call it at start; from Python nothing changes the
heap unless you call it yourself before a long loop.
``ZOO_KEEP_HEAP=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = 'ZOO_KEEP_HEAP'
_M_TRIM_THRESHOLD = -1      # glibc malloc.h
_M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1      # mallopt takes an int: the largest trim threshold it accepts (2 GiB)

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of mapping and unmapping each large buffer.

    Returns True when the setting is in effect (now or from an earlier call); False on a C library other than
    glibc (macOS, musl: nothing to do or no such control) or when ``ZOO_KEEP_HEAP=0``. Process-wide and
    not undone here; children forked later (data-loader workers) inherit it unless they call
    ``release_freed_memory`` (the jobs' decode workers do: eval.kit.runtime.decode_worker_init).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, '1').strip() == '0' or platform.libc_ver()[0] != 'glibc':
        return False
    name = ctypes.util.find_library('c')
    if not name:
        return False
    libc = ctypes.CDLL(name)
    # mallopt returns 1 on success; set trimming first so that no block is returned between the two calls.
    _applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    return _applied


_M_MMAP_MAX_DEFAULT = 65536             # glibc's defaults (malloc.h, mallopt(3))
_M_TRIM_THRESHOLD_DEFAULT = 128 * 1024


def release_freed_memory() -> bool:
    """Undo ``keep_freed_memory`` in this process (glibc's default trim threshold and mmap count, and the heap
    trimmed now): for a forked data-loader worker, whose decode buffers have no use for a kept heap. Returns True
    when done (glibc only)."""
    global _applied
    if platform.libc_ver()[0] != 'glibc':
        return False
    name = ctypes.util.find_library('c')
    if not name:
        return False
    libc = ctypes.CDLL(name)
    done = bool(libc.mallopt(_M_MMAP_MAX, _M_MMAP_MAX_DEFAULT)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, _M_TRIM_THRESHOLD_DEFAULT))
    libc.malloc_trim(0)
    _applied = False
    return done
