"""Speed benchmark of the evaluation fast paths against baselines measured in the same run.

    python benchmarks/bench_network.py              # network, data pipeline and end-to-end; prints, writes JSON
    python benchmarks/bench_network.py --only network --sizes 32x224 --json bench.json

Network: clips/s of i3d_r50 at 32x224 and 32x256 for each fast-path variant, as a ratio to the eager
float32 baseline (contiguous NCDHW, BatchNorm unfused, no_grad) and as a fraction of the machine's measured
peak for the same precision (benchmarks/machine.py: the best of a few GEMM shapes and a large 1x1x1
convolution), with each variant's max relative logit error and top-1 agreement against the baseline. The
head runs as the runner would run it (eval.kit.config.fully_conv_head), and the FLOPs are eval.kit.flops' count
of that same head. Data: videos/s of the 3x10 view pipeline against a naive per-view PIL loader
(benchmarks/bench_data.py). End to end: videos/s of the runner.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

if __package__ in (None, ''):   # run as a script: import this checkout's packages, benchmarks/ included
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import zoo
from benchmarks.machine import Peak, machine_info, machine_load, machine_peak, write_report
from benchmarks.timing import best_seconds
from eval.kit.flops import flop_report
from eval.kit.config import fully_conv_head
from zoo.inference import prepare_for_inference


@dataclass
class NetworkResult:
    variant: str
    size: str
    batch: int
    seconds_per_batch: float
    clips_per_s: float
    gflops_per_s: float            # network multiply-adds x 2 per second, comparable with the peak
    fraction_of_peak: float        # of machine_peak for the variant's precision
    speedup: float                 # vs the eager float32 baseline of the same size
    max_rel_error: float           # max |logit - baseline| / max |baseline|
    top1_agreement: float          # fraction of clips whose arg-max equals the baseline's


@dataclass
class BenchReport:
    machine: Dict[str, str]
    peak: Dict[str, Peak]
    load_before: Dict[str, object] = field(default_factory=dict)   # a shared machine's load skews every rate
    network: List[NetworkResult] = field(default_factory=list)
    data: List[dict] = field(default_factory=list)
    end_to_end: List[dict] = field(default_factory=list)
    breakdown: Dict[str, dict] = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


def _with_realistic_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and scales so that logits spread out like a trained network's, making top-1
    agreement a meaningful test (a freshly initialised network gives near-ties everywhere)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    if isinstance(getattr(model, 'fc', None), torch.nn.Linear):
        torch.nn.init.normal_(model.fc.weight, std=0.05, generator=g)
    return model


def network_variants(model, device, compile: bool):
    variants = {
        'eager fp32 (baseline)': model,
        'channels_last fp32': prepare_for_inference(model, fold_bn=False, device=device),
        'fast fp32 (folded BN + channels_last)': prepare_for_inference(model, device=device),
    }
    if compile:
        variants['fast fp32 + torch.compile'] = prepare_for_inference(model, compile=True, device=device)
    for precision in (('bf16',) if device.type == 'cpu' else ('fp16', 'bf16')):
        variants[f'fast {precision}'] = prepare_for_inference(model, precision=precision, device=device)
        if compile:
            variants[f'fast {precision} + torch.compile'] = prepare_for_inference(
                model, precision=precision, compile=True, device=device)
    return variants


def variant_precision(variant: str) -> str:
    return 'bf16' if 'bf16' in variant else 'fp16' if 'fp16' in variant else 'fp32'


def bench_network(model_name: str, sizes: List[str], batch: int, clips: int, device: torch.device,
                  peaks: Dict[str, Peak], compile: bool = False, repeats: int = 3) -> List[NetworkResult]:
    model = _with_realistic_statistics(zoo.create_model(model_name)).to(device)
    variants = network_variants(model, device, compile)
    results = []
    for size in sizes:
        frames, crop = (int(v) for v in size.split('x'))
        flops = 2 * flop_report(model_name, frames=frames, crop=crop, model=model).flops_per_view
        # the head the FLOPs were counted for, as the runner runs it
        head = {'fully_conv': True} if fully_conv_head(model.pretrained_cfg, crop) else {}
        gen = torch.Generator().manual_seed(1)
        inputs = [torch.randn(batch, 3, frames, crop, crop, generator=gen).to(device)
                  for _ in range(max(1, clips // batch))]
        baseline_outputs = None
        baseline_seconds = None
        for name, fn in variants.items():
            with torch.no_grad():
                # warm-up includes torch.compile's compilation for this input shape
                seconds, _ = best_seconds(lambda: fn(inputs[0], **head), repeats, warmup=1, device=device)
                outputs = torch.cat([fn(x, **head).float().cpu() for x in inputs])
            if baseline_outputs is None:
                baseline_outputs, baseline_seconds = outputs, seconds
            peak = peaks[variant_precision(name)].gflops_per_s * 1e9
            rate = flops * batch / seconds
            results.append(NetworkResult(
                variant=name, size=size, batch=batch, seconds_per_batch=seconds, clips_per_s=batch / seconds,
                gflops_per_s=rate / 1e9, fraction_of_peak=rate / peak, speedup=baseline_seconds / seconds,
                max_rel_error=((outputs - baseline_outputs).abs().max() / baseline_outputs.abs().max()).item(),
                top1_agreement=(outputs.argmax(1) == baseline_outputs.argmax(1)).float().mean().item()))
            print(format_network_row(results[-1]), flush=True)
    return results


_OP_GROUPS = (
    ('convolution', ('conv', 'mkldnn_convolution')),
    ('matmul (non-local, classifier)', ('addmm', 'mm', 'bmm', 'einsum', 'matmul', 'linear')),
    ('pooling', ('pool',)),
    ('elementwise (add, relu, bn, softmax)', ('add', 'relu', 'clamp', 'batch_norm', 'softmax', 'mul', 'sub')),
    ('layout copies', ('copy_', 'clone', 'contiguous', 'to_dense', 'reorder')),
)


def time_breakdown(fn: Callable, x: torch.Tensor, conv_flops: float, head: Optional[dict] = None) -> dict:
    """Where one forward's time goes, by kind of operator (torch.profiler, self time), and the rate the
    convolutions alone reach: the ceiling for the whole network is bounded by both."""
    head = head or {}
    with torch.no_grad():
        fn(x, **head)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn(x, **head)
    groups = {name: 0.0 for name, _ in _OP_GROUPS}
    groups['other'] = 0.0
    for event in prof.key_averages():
        if not event.key.startswith('aten::'):
            continue
        op = event.key[len('aten::'):]
        seconds = event.self_cpu_time_total / 1e6
        for name, needles in _OP_GROUPS:
            if any(n in op for n in needles):
                groups[name] += seconds
                break
        else:
            groups['other'] += seconds
    total = sum(groups.values())
    conv = groups['convolution']
    return {'seconds': total, 'share': {k: v / total for k, v in groups.items()},
            'conv_gflops_per_s': 2 * conv_flops * x.shape[0] / conv / 1e9 if conv else None}


NETWORK_HEADER = (f'{"variant":<40} {"size":>7} {"clips/s":>8} {"GFLOP/s":>8} {"of peak":>8} {"speedup":>8} '
                  f'{"max rel err":>11} {"top-1 agr":>9}')


def format_network_row(r: NetworkResult) -> str:
    return (f'{r.variant:<40} {r.size:>7} {r.clips_per_s:8.3f} {r.gflops_per_s:8.1f} '
            f'{100 * r.fraction_of_peak:7.1f}% {r.speedup:7.2f}x {r.max_rel_error:11.2e} '
            f'{100 * r.top1_agreement:8.1f}%')


def breakdowns(model_name: str, size: str, batch: int, device: torch.device,
               peaks: Optional[Dict[str, Peak]] = None) -> Dict[str, dict]:
    """Operator-time breakdown of the eager baseline and the eager fast paths (CPU only); with ``peaks``,
    each also says what fraction of the machine's peak its convolutions reach on their own."""
    if device.type != 'cpu':
        return {}
    frames, crop = (int(v) for v in size.split('x'))
    model = _with_realistic_statistics(zoo.create_model(model_name))
    conv_flops = flop_report(model_name, frames=frames, crop=crop, model=model).by_operator.get('conv', 0.0)
    head = {'fully_conv': True} if fully_conv_head(model.pretrained_cfg, crop) else {}
    x = torch.randn(batch, 3, frames, crop, crop)
    variants = {'eager fp32 (baseline)': model,
                'fast fp32 (folded BN + channels_last)': prepare_for_inference(model),
                'fast bf16': prepare_for_inference(model, precision='bf16')}
    result = {}
    for name, fn in variants.items():
        b = result[name] = time_breakdown(fn, x, conv_flops, head)
        if peaks and b['conv_gflops_per_s']:
            b['conv_fraction_of_peak'] = b['conv_gflops_per_s'] / peaks[variant_precision(name)].gflops_per_s
    return result


def format_peak(p: Peak) -> str:
    return f'{p.dtype} {p.gflops_per_s:.1f} GFLOP/s ({p.best_probe})'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', choices=('network', 'data', 'end-to-end'), nargs='+',
                        default=('network', 'data', 'end-to-end'), help='which parts to run')
    parser.add_argument('--model', default='i3d_r50')
    parser.add_argument('--sizes', nargs='+', default=['32x224', '32x256'], help='TxS clip sizes')
    parser.add_argument('--batch', type=int, default=2, help='clips per forward (the runner batches views)')
    parser.add_argument('--clips', type=int, default=32, help='clips for the error and top-1 agreement')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--no-compile', dest='compile', action='store_false',
                        help='skip the torch.compile variants (they compile for ~20 s per shape first)')
    parser.add_argument('--peak-seconds', type=float, default=2.0, help='time per peak probe (shape)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--json', default='bench.json', help='where to write the results')
    parser.add_argument('--heap', choices=('default', 'kept'), default='default',
                        help='glibc\'s heap as a process starts (default), or kept as the command-line jobs '
                             'keep it (zoo.heap); run the script once with each to compare')
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    if args.heap == 'kept':
        zoo.keep_freed_memory()
    load = machine_load()
    dtypes = {'fp32': torch.float32, 'bf16': torch.bfloat16}
    if device.type == 'cuda':
        dtypes['fp16'] = torch.float16
    peaks = {k: machine_peak(dtype, device, args.peak_seconds) for k, dtype in dtypes.items()}
    report = BenchReport(machine=dict(machine_info(device), heap=args.heap), peak=peaks, load_before=load)
    print('machine:', ', '.join(f'{k}={v}' for k, v in report.machine.items()))
    print('machine peak (best probe):', ', '.join(format_peak(p) for p in peaks.values()))
    for p in peaks.values():
        print(f'  {p.dtype} probes:', ', '.join(f'{k} {v:.1f}' for k, v in p.probes.items()))
    network_clips = None
    if 'network' in args.only:
        print(NETWORK_HEADER)
        report.network = bench_network(args.model, args.sizes, args.batch, args.clips, device, peaks,
                                       compile=args.compile, repeats=args.repeats)
        fp32_at_256 = [r for r in report.network if r.size == '32x256' and r.variant.startswith('fast fp32 (')]
        network_clips = fp32_at_256[0].clips_per_s if fp32_at_256 else None
        report.breakdown = breakdowns(args.model, args.sizes[0], args.batch, device, peaks)
        for variant, b in report.breakdown.items():
            shares = ', '.join(f'{k} {100 * v:.0f}%' for k, v in b['share'].items() if v >= 0.005)
            print(f'time of {variant} at {args.sizes[0]}: {shares}; convolutions alone '
                  f'{b["conv_gflops_per_s"]:.0f} GFLOP/s = {100 * b["conv_fraction_of_peak"]:.0f}% of the '
                  f'{variant_precision(variant)} peak')
    if 'data' in args.only or 'end-to-end' in args.only:
        from benchmarks import bench_data
    if 'data' in args.only:
        print(bench_data.DATA_HEADER)
        report.data = bench_data.bench_data(network_clips_per_s=network_clips, repeats=args.repeats)
    if 'end-to-end' in args.only and device.type == 'cpu':
        print(bench_data.E2E_HEADER)
        report.end_to_end = bench_data.bench_end_to_end()
    write_report(args.json, report.to_dict(), report.load_before)
    return 0


if __name__ == '__main__':
    sys.exit(main())
