"""The speed benchmark produces well-formed figures (no timing is asserted: speed is measured, not tested)."""
import torch

from eval.bench import bench_network, breakdowns, matmul_rate


def test_network_benchmark_reports_every_variant_against_the_eager_baseline():
    device = torch.device('cpu')
    peaks = {'fp32': matmul_rate(torch.float32, device, n=256, seconds=0.1),
             'bf16': matmul_rate(torch.bfloat16, device, n=256, seconds=0.1)}
    rows = bench_network('c2d_r50_8x8', ['8x64'], batch=2, clips=4, device=device, peaks=peaks,
                         compile=False, repeats=1)
    variants = [r.variant for r in rows]
    assert variants[0] == 'eager fp32 (baseline)'
    assert {'channels_last fp32', 'fast fp32 (folded BN + channels_last)', 'fast bf16'} <= set(variants)
    baseline = rows[0]
    assert baseline.speedup == 1.0 and baseline.max_rel_error == 0.0 and baseline.top1_agreement == 1.0
    for r in rows:
        assert r.clips_per_s > 0 and r.gflops_per_s > 0 and 0 < r.fraction_of_matmul_peak
    fast = next(r for r in rows if r.variant.startswith('fast fp32'))
    assert fast.max_rel_error < 1e-4 and fast.top1_agreement == 1.0


def test_breakdown_shares_add_up_to_one():
    result = breakdowns('c2d_r50_8x8', '8x64', 1, torch.device('cpu'))
    assert set(result) == {'eager fp32 (baseline)', 'fast fp32 (folded BN + channels_last)', 'fast bf16'}
    for b in result.values():
        assert abs(sum(b['share'].values()) - 1.0) < 1e-6
        assert b['share']['convolution'] > 0.3 and b['conv_gflops_per_s'] > 0
