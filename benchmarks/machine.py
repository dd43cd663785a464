"""What the benchmarks ran on: the machine's description, its load, and its measured peak rate per precision.

The peak is what this CPU (or GPU) can do on dense multiply-adds, measured rather than assumed: the best
rate of a few GEMM shapes and of a large 1x1x1 convolution (channels_last_3d), since which one the BLAS and
oneDNN kernels run fastest differs between machines (on an AMD EPYC a 2048x2048 GEMM ran slower than the
network's own convolutions). One multiply-add counts as 2 flops, as hardware peaks are quoted.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from benchmarks.timing import best_seconds

# (m, k, n): A (m x k) @ B (k x n)
PEAK_GEMMS: Tuple[Tuple[int, int, int], ...] = ((2048, 2048, 2048), (4096, 1024, 4096), (1024, 4096, 1024))
# (batch, channels in, channels out, T, H, W) of a 1x1x1 Conv3d: the shape of i3d_r50's res4/res5 1x1x1 layers
PEAK_CONVS: Tuple[Tuple[int, int, int, int, int, int], ...] = ((2, 1024, 1024, 4, 28, 28),)


@dataclass
class Peak:
    """The best rate any probe reached, which probe it was, and every probe's rate (GFLOP/s)."""
    dtype: str
    gflops_per_s: float
    best_probe: str
    probes: Dict[str, float]


def gemm_name(m: int, k: int, n: int) -> str:
    return f'gemm {m}x{k}x{n}'


def conv_name(batch: int, cin: int, cout: int, t: int, h: int, w: int) -> str:
    return f'conv1x1x1 {cin}->{cout} on {batch}x{t}x{h}x{w}'


def _gemm_probe(shape, dtype, device) -> Tuple[Callable[[], object], float]:
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2.0 * m * k * n


def _conv_probe(shape, dtype, device) -> Tuple[Callable[[], object], float]:
    batch, cin, cout, t, h, w = shape
    conv = torch.nn.Conv3d(cin, cout, 1, bias=False).to(device=device, dtype=dtype, memory_format=torch.channels_last_3d)
    x = torch.randn(batch, cin, t, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)

    def run():
        with torch.no_grad():
            return conv(x)
    return run, 2.0 * batch * cin * cout * t * h * w


def machine_peak(dtype: torch.dtype, device: torch.device, seconds_per_probe: float = 1.0,
                 gemms: Sequence[Tuple[int, int, int]] = PEAK_GEMMS,
                 convs: Sequence[Tuple[int, ...]] = PEAK_CONVS) -> Peak:
    """The machine's peak for ``dtype``: the best FLOP/s of the GEMM shapes and the 1x1x1 convolutions, each
    timed for about ``seconds_per_probe`` (best single call after a warm-up)."""
    probes = [(gemm_name(*s), _gemm_probe(s, dtype, device)) for s in gemms]
    probes += [(conv_name(*s), _conv_probe(s, dtype, device)) for s in convs]
    rates = {}
    for name, (run, flops) in probes:
        seconds, _ = best_seconds(run, repeats=2, warmup=1, device=device, at_least_s=seconds_per_probe)
        rates[name] = flops / seconds / 1e9
    best = max(rates, key=rates.get)
    return Peak(str(dtype).replace('torch.', ''), rates[best], best, rates)


def machine_info(device: torch.device) -> Dict[str, str]:
    info = {'python': platform.python_version(), 'torch': torch.__version__, 'platform': platform.platform(),
            'threads': str(torch.get_num_threads()), 'device': str(device)}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    else:
        try:
            with open('/proc/cpuinfo') as f:
                info['cpu'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            info['cpu'] = platform.processor()
    return info


def machine_load() -> Dict[str, object]:
    """Load averages and core count: on a shared machine rates are only comparable within one run."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float('nan'),) * 3
    return {'cpus': os.cpu_count(), 'loadavg_1_5_15': [round(v, 2) for v in load]}


def write_report(path: str, report: Dict[str, object], load_before: Dict[str, object]) -> None:
    """The run's JSON, with the machine's load before and after it (printed too), written atomically."""
    import json
    from converters.file_io import atomic_write
    report.update(load_before=load_before, load_after=machine_load())
    print('machine load (1/5/15 min) before', load_before, 'after', report['load_after'])
    with atomic_write(path, 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {path}')
