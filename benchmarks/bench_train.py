"""Training speed and memory of the fine-tuning recipe: clips/s and peak memory of one optimizer step.

    python benchmarks/bench_train.py                                  # i3d_r50, 32x224 and 8x56, batch 2
    python benchmarks/bench_train.py --sizes 8x56 --json bench_train.json

For each clip size, precision (fp32, bf16; fp16 with a loss scaler on a GPU) and with and without gradient
checkpointing: the best time of one training step (forward, loss, backward, Nesterov SGD step, on random
clips normalised as eval.finetune does, BN as eval.finetune's default for this batch) and the peak memory
of training. Each configuration runs in its own process, so that peak memory on the CPU (the process's
maximum resident set, less what it held before the first step) belongs to that configuration alone; on a
GPU it is torch.cuda.max_memory_allocated. Every configuration runs twice: with glibc's default heap and with
the heap kept (zoo.heap; eval.finetune keeps it unless --grad-checkpointing); ``--heap`` picks one. Ratios
are within one run: on a shared machine only they mean something. The data pipeline is not timed here
(benchmarks/bench_data.py times decoding).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import List, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.machine import machine_info, machine_load, write_report  # noqa: E402
from benchmarks.timing import best_seconds  # noqa: E402


def current_rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def measure(model_name: str, size: str, batch: int, precision: str, checkpointing: bool, device: torch.device,
            repeats: int, heap: str = 'kept') -> dict:
    """One configuration, in this process: seconds per step (best of ``repeats`` after a warm-up) and memory.
    ``heap``: 'kept' (zoo.heap) or 'default' (glibc's malloc as it starts)."""
    import zoo
    if heap == 'kept':
        zoo.keep_freed_memory()
    import eval.finetune.recipe as rc
    from eval.data.pixels import PixelNormalizer
    from eval.kit.runtime import resolve_precision
    frames, crop = (int(v) for v in size.split('x'))
    torch.manual_seed(0)
    model = zoo.create_model(model_name, num_classes=101).to(device)
    model.set_grad_checkpointing(checkpointing)
    bn = rc.resolve_bn_mode('auto', batch)
    rc.set_trainable(model, bn, freeze_backbone=False)
    rc.set_train_mode(model, bn, freeze_backbone=False)
    optimizer = rc.make_optimizer(model, lr=0.01)
    run_precision = resolve_precision(precision, device, training=True)
    scaler = run_precision.make_scaler()
    normalise = PixelNormalizer.from_cfg(model.pretrained_cfg)
    clips = torch.randint(0, 256, (batch, frames, crop, crop, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 101, (batch,), device=device)

    def step():
        with run_precision.autocast():
            logits = model(normalise(clips))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    before = current_rss_bytes()
    seconds, loss = best_seconds(step, repeats=repeats, warmup=1, device=device)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {'model': model_name, 'size': size, 'batch': batch, 'precision': precision,
            'grad_checkpointing': checkpointing, 'bn': bn, 'heap': heap, 'seconds_per_step': seconds,
            'clips_per_s': batch / seconds, 'peak_memory_mb': peak / 2 ** 20, 'loss': loss,
            'memory_kind': 'cuda max_memory_allocated' if device.type == 'cuda' else 'max RSS - RSS before the first step'}


def run_one_in_subprocess(args, size: str, precision: str, checkpointing: bool, heap: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), '--one', '--model', args.model, '--sizes', size,
               '--batch', str(args.batch), '--precisions', precision, '--device', args.device,
               '--repeats', str(args.repeats), '--heap', heap] + (['--checkpointing'] if checkpointing else []) + \
        (['--threads', str(args.threads)] if args.threads else [])
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {'size': size, 'precision': precision, 'grad_checkpointing': checkpointing, 'heap': heap,
                'error': proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f'exit {proc.returncode}'}
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADER = f'{"size":>7} {"precision":>9} {"checkpointing":>13} {"heap":>7} {"s/step":>8} {"clips/s":>8} ' \
         f'{"vs fp32":>8} {"peak MB":>9} {"vs no ckpt":>10}'


def format_row(r: dict, results: List[dict]) -> str:
    if 'error' in r:
        return (f'{r["size"]:>7} {r["precision"]:>9} {str(r["grad_checkpointing"]):>13} {r["heap"]:>7}  '
                f'failed: {r["error"]}')
    same = [x for x in results if x.get('size') == r['size'] and x.get('heap') == r['heap'] and 'error' not in x]
    fp32 = next((x for x in same if x.get('precision') == 'fp32'
                 and x.get('grad_checkpointing') == r['grad_checkpointing']), None)
    plain = next((x for x in same if x.get('precision') == r['precision'] and not x.get('grad_checkpointing')), None)
    r['speed_vs_fp32'] = r['clips_per_s'] / fp32['clips_per_s'] if fp32 else None
    r['memory_vs_no_checkpointing'] = r['peak_memory_mb'] / plain['peak_memory_mb'] if plain else None
    vs_fp32 = f'{r["speed_vs_fp32"]:.2f}x' if r['speed_vs_fp32'] else '-'
    vs_plain = f'{r["memory_vs_no_checkpointing"]:.2f}x' if r['memory_vs_no_checkpointing'] else '-'
    return (f'{r["size"]:>7} {r["precision"]:>9} {str(r["grad_checkpointing"]):>13} {r["heap"]:>7} '
            f'{r["seconds_per_step"]:8.3f} '
            f'{r["clips_per_s"]:8.3f} {vs_fp32:>8} {r["peak_memory_mb"]:9.0f} {vs_plain:>10}')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='i3d_r50')
    parser.add_argument('--sizes', nargs='+', default=['32x224', '8x56'], help='TxS clip sizes')
    parser.add_argument('--batch', type=int, default=2, help='clips per step')
    parser.add_argument('--precisions', nargs='+', help='default: fp32 bf16 (and fp16 on a GPU)')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch threads per configuration (default: torch\'s own)')
    parser.add_argument('--json', default='bench_train.json')
    parser.add_argument('--heap', choices=('kept', 'default', 'both'), default='both',
                        help='kept: zoo.heap (eval.finetune\'s, except with --grad-checkpointing); default: glibc '
                             'as it starts; both (default): each configuration twice')
    parser.add_argument('--checkpointing', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)   # one configuration, JSON out
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions or (['fp32', 'bf16', 'fp16'] if device.type == 'cuda' else ['fp32', 'bf16'])
    if args.one:
        print(json.dumps(measure(args.model, args.sizes[0], args.batch, precisions[0], args.checkpointing, device,
                                 args.repeats, args.heap)))
        return 0
    load_before = machine_load()
    info = machine_info(device)
    print('machine:', ', '.join(f'{k}={v}' for k, v in info.items()))
    print(f'{args.model}, batch {args.batch}, one training step (forward, backward, SGD); load before {load_before}')
    print(HEADER)
    results = []
    for size in args.sizes:
        for precision in precisions:
            for checkpointing in (False, True):
                for heap in (('default', 'kept') if args.heap == 'both' else (args.heap,)):
                    results.append(run_one_in_subprocess(args, size, precision, checkpointing, heap))
                    print(format_row(results[-1], results), flush=True)
    write_report(args.json, {'machine': info, 'results': results}, load_before)
    return 0


if __name__ == '__main__':
    sys.exit(main())
