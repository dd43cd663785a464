"""The speed benchmarks (benchmarks/) produce well-formed figures; no timing is asserted (speed is measured,
not tested), only what holds whatever the machine's load: a maximum is at least each thing it is the max of."""
import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:   # benchmarks/ sits beside the installed packages, not among them
    sys.path.insert(0, REPO_ROOT)

from benchmarks.bench_data import bench_data, model_views  # noqa: E402
from benchmarks.bench_network import bench_network, breakdowns  # noqa: E402
from benchmarks.machine import PEAK_CONVS, PEAK_GEMMS, conv_name, gemm_name, machine_peak  # noqa: E402
from benchmarks.timing import best_seconds  # noqa: E402
from eval.data.views import ViewSpec  # noqa: E402

CPU = torch.device('cpu')
C2D_8X8_AT_8X64_MULTIPLY_ADDS = 1545083904     # fvcore, one clip of 8 frames at 64x64 (2026-12-03)


def test_best_seconds_returns_the_last_result_after_warmup_and_repeats():
    calls = []
    seconds, result = best_seconds(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and result == 5 and seconds >= 0


def test_best_seconds_gives_up_after_one_slow_call():
    calls = []
    best_seconds(lambda: calls.append(1), repeats=5, give_up_s=0.0)
    assert len(calls) == 1


def test_peak_is_the_best_probe_and_at_least_the_2048_gemm():
    peak = machine_peak(torch.float32, CPU, seconds_per_probe=0.0)
    assert set(peak.probes) == {gemm_name(*s) for s in PEAK_GEMMS} | {conv_name(*s) for s in PEAK_CONVS}
    assert peak.gflops_per_s == max(peak.probes.values()) == peak.probes[peak.best_probe]
    assert peak.gflops_per_s >= peak.probes['gemm 2048x2048x2048'] > 0
    assert 'conv1x1x1 1024->1024 on 2x4x28x28' in peak.probes


def _tiny_peaks():
    return {precision: machine_peak(dtype, CPU, 0.0, gemms=((128, 128, 128),), convs=((1, 64, 64, 2, 8, 8),))
            for precision, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16))}


def test_network_benchmark_reports_every_variant_against_the_eager_baseline():
    peaks = _tiny_peaks()
    rows = bench_network('c2d_r50_8x8', ['8x64'], batch=2, clips=4, device=CPU, peaks=peaks,
                         compile=False, repeats=1)
    variants = [r.variant for r in rows]
    assert variants[0] == 'eager fp32 (baseline)'
    assert {'channels_last fp32', 'fast fp32 (folded BN + channels_last)', 'fast bf16'} <= set(variants)
    baseline = rows[0]
    assert baseline.speedup == 1.0 and baseline.max_rel_error == 0.0 and baseline.top1_agreement == 1.0
    for r in rows:
        assert r.clips_per_s > 0 and r.gflops_per_s > 0 and r.fraction_of_peak > 0
        # the rate is 2 flops per multiply-add of the clip (fvcore's count of c2d_r50_8x8 at 8x64, pinned) per
        # second, and its fraction is of the peak of the variant's own precision, whatever the speed measured
        assert r.gflops_per_s * 1e9 / r.clips_per_s == pytest.approx(2 * C2D_8X8_AT_8X64_MULTIPLY_ADDS, rel=1e-9)
        peak = peaks['bf16' if 'bf16' in r.variant else 'fp32'].gflops_per_s
        assert 0 < peak and r.fraction_of_peak * peak == pytest.approx(r.gflops_per_s, rel=1e-9)
    fast = next(r for r in rows if r.variant.startswith('fast fp32'))
    assert fast.max_rel_error < 1e-4 and fast.top1_agreement == 1.0


def test_breakdown_shares_add_up_to_one():
    result = breakdowns('c2d_r50_8x8', '8x64', 1, CPU, _tiny_peaks())
    assert set(result) == {'eager fp32 (baseline)', 'fast fp32 (folded BN + channels_last)', 'fast bf16'}
    for b in result.values():
        assert abs(sum(b['share'].values()) - 1.0) < 1e-6
        assert b['share']['convolution'] > 0.3 and b['conv_gflops_per_s'] > 0 and b['conv_fraction_of_peak'] > 0


def test_data_views_are_the_model_runs_views():
    assert model_views('3x10') == ViewSpec(num_frames=32, sampling_rate=2, spatial_crops=3, temporal_clips=10,
                                           scale=256, crop_size=256)
    assert model_views('1x1', 'c2d_r50_8x8') == ViewSpec(8, 8, 1, 1, 256, 224)


def test_data_benchmark_fast_paths_reproduce_the_naive_views(tmp_path):
    rows = bench_data(num_videos=1, frames=20, size=(64, 112), views='3x2', kinds=('kinetics',),
                      repeats=1, cache_dir=str(tmp_path), network_clips_per_s=1.0, verbose=False,
                      spec=ViewSpec(4, 2, 3, 2, 64, 64))
    assert {r['source'] for r in rows} == {'frames', 'mp4'}
    assert all(r['videos_per_s'] > 0 and r['x_network'] > 0 for r in rows)
    exact = [r for r in rows if 'approx' not in r['variant']]
    assert all(r['max_abs_diff'] == 0 for r in exact)        # every exact variant reproduces the baseline
    baseline = [r for r in rows if 'baseline' in r['variant']]
    fast = [r for r in rows if r['variant'].startswith('fast (exact')]
    assert all(f['frames_decoded_per_video'] < b['frames_decoded_per_video'] for f, b in zip(fast, baseline))


# ------------------------------------------------------------------------------------------- bench_jobs

def test_tree_pss_counts_the_memory_of_a_grandchild():
    """TreePss sums the PSS of a process and its descendants: a grandchild holding ~200 MB shows in the peak."""
    import subprocess
    from benchmarks.bench_jobs import TreePss, process_tree
    code = ('import subprocess, sys; subprocess.run([sys.executable, "-c", '
            '"import time; b = bytearray(200 * 2 ** 20); b[::4096] = b\\"x\\" * len(b[::4096]); time.sleep(1.5)"])')
    proc = subprocess.Popen([sys.executable, '-c', code])
    with TreePss(proc.pid, interval=0.05) as memory:
        proc.wait()
    assert memory.samples >= 3 and memory.most_processes >= 2
    assert memory.peak_mb >= 150
    assert process_tree(os.getpid())[0] == os.getpid()


def test_tree_pss_reads_pss_only_when_the_tree_grows_or_changes():
    """PSS costs the kernel a walk of every page (the measured job's time): a process holding steady memory gets
    its RSS read every interval and its PSS only a few times (first sight, the rise of its allocation)."""
    import subprocess
    from benchmarks.bench_jobs import TreePss
    code = 'import time; b = bytearray(100 * 2 ** 20); b[::4096] = b"x" * len(b[::4096]); time.sleep(2.0)'
    proc = subprocess.Popen([sys.executable, '-c', code])
    with TreePss(proc.pid, interval=0.05) as memory:
        proc.wait()
    assert len(memory.timeline) >= 20 and memory.peak_mb >= 90
    assert 1 <= memory.samples <= len(memory.timeline) // 4
