"""Speed of FVD's embedding pass, and the time to an FVD of 2048 vs 2048 clips, measured in one run.

    python benchmarks/bench_fvd.py                      # prints a table, writes benchmarks/fvd-<machine>.json/.txt
    python benchmarks/bench_fvd.py --device cuda --batch-sizes 1 8 32

Network: clips/s of i3d_inception on 16x224 clips (the protocols' input) through eval.fvd.embed.Embedder, for
the eager float32 model (the baseline), the fast path in float32 (the default: the protocols' numbers) and
bf16 (recorded as such; not the protocols' numbers), with each variant's max relative error against the
baseline and the fraction of the machine's measured peak for its precision (benchmarks/machine.py).
Preprocessing: clips/s of decoding a 320x240 video's first 16 frames and the protocol's resize + scaling.
End to end: ``python -m eval.fvd`` on synthetic 320x240 videos (start-up included, then its clips/s from two
runs of different size so that start-up cancels). The 2048 vs 2048 estimate is 4096 clips at the end-to-end
rate per clip.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

if __package__ in (None, ''):   # run as a script: import this checkout's packages, benchmarks/ included
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from benchmarks.machine import machine_info, machine_load, machine_peak, write_report
from benchmarks.timing import best_seconds
from eval.kit.flops import count_flops

FRAMES, SIZE = 16, 224
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def network_rows(device: torch.device, batch_sizes: List[int], peaks: Dict[str, float]) -> List[dict]:
    from eval.fvd.embed import Embedder
    variants = [('eager fp32 (baseline)', dict(fast_path=False)), ('fast fp32 (default)', dict()),
                ('fast bf16', dict(precision='bf16'))]
    embedders = {name: Embedder(device=device, **kw) for name, kw in variants}
    gflop = count_flops(embedders[variants[0][0]].net, FRAMES, SIZE).flops_per_view * 2 / 1e9
    rows = []
    for batch in batch_sizes:
        x = torch.rand(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
        base_s, base_out = None, None
        for name, kw in variants:
            seconds, out = best_seconds(lambda: embedders[name](x), repeats=2, warmup=1, device=device)
            base_s, base_out = (seconds, out) if base_out is None else (base_s, base_out)
            dtype = 'bfloat16' if kw.get('precision') == 'bf16' else 'float32'
            rows.append({'variant': name, 'batch': batch, 'clips_per_s': batch / seconds,
                         'gflops_per_s': gflop * batch / seconds,
                         'fraction_of_peak': gflop * batch / seconds / peaks[dtype],
                         'speedup': base_s / seconds,
                         'max_rel_error': float(np.abs(out - base_out).max() / np.abs(base_out).max())})
            print(f'  network  {name:<22} batch {batch:>2}: {rows[-1]["clips_per_s"]:6.2f} clips/s, '
                  f'{rows[-1]["fraction_of_peak"]:.0%} of the {dtype} peak, x{rows[-1]["speedup"]:.2f}, '
                  f'max rel error {rows[-1]["max_rel_error"]:.1e}', flush=True)
    return rows


def preprocess_rows(video: str) -> List[dict]:
    from eval.fvd.clips import ClipJob, prepare
    from eval.fvd.protocols import resolve_protocol
    rows = []
    for name in ('original', 'stylegan-v-16f', 'videogpt'):
        protocol = resolve_protocol(name, clip='start')
        seconds, _ = best_seconds(lambda: prepare(ClipJob(0, 'real', 0, video), protocol), repeats=3, warmup=1)
        rows.append({'protocol': name, 'clips_per_s': 1 / seconds})
        print(f'  decode + {name:<16} resize: {1 / seconds:6.1f} clips/s (one process)', flush=True)
    return rows


def end_to_end(folder: str, counts=(4, 12), workers: int = 1) -> dict:
    """Seconds of the whole command for two set sizes; the difference gives seconds per clip."""
    times = {}
    for n in counts:
        real = os.path.join(folder, f'real{n}')
        os.makedirs(real, exist_ok=True)
        for i in range(n):
            shutil.copy(os.path.join(folder, 'video.mp4'), os.path.join(real, f'v{i}.mp4'))
        out = os.path.join(folder, f'out{n}')
        cmd = [sys.executable, '-m', 'eval.fvd', '--real', real, '--fake', real, '--out', out, '--no-progress',
               '--workers', str(workers)]
        began = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        times[n] = time.perf_counter() - began
    (a, b) = counts
    per_clip = (times[b] - times[a]) / (2 * (b - a))
    result = {'seconds': times, 'seconds_per_clip': per_clip, 'startup_s': times[a] - 2 * a * per_clip,
              'workers': workers, 'fvd_2048_vs_2048_s': 4096 * per_clip}
    print(f'  end to end ({workers} decode worker): {1 / per_clip:.2f} clips/s, start-up {result["startup_s"]:.1f} s; '
          f'FVD of 2048 vs 2048 clips: about {4096 * per_clip / 3600:.2f} h', flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 2, 4, 8])
    p.add_argument('--json', help='default: benchmarks/fvd-<cpu|gpu>.json')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    load_before = machine_load()
    info = machine_info(device)
    print(f'machine: {info.get("gpu") or info.get("cpu")}, {info["threads"]} threads, torch {info["torch"]}')
    peaks = {str(dt).replace('torch.', ''): machine_peak(dt, device).gflops_per_s
             for dt in (torch.float32, torch.bfloat16)}
    print('  peak    ' + ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peaks.items()))
    report = {'machine': info, 'peak_gflops_per_s': peaks, 'network': network_rows(device, args.batch_sizes, peaks)}
    from eval.data.synthetic import write_synthetic_video
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_video(os.path.join(tmp, 'video.mp4'), num_frames=20, height=240, width=320)
        report['preprocess'] = preprocess_rows(os.path.join(tmp, 'video.mp4'))
        if device.type == 'cpu':
            report['end_to_end'] = end_to_end(tmp)
    path = args.json or os.path.join(REPO, 'benchmarks', f'fvd-{device.type}.json')
    write_report(path, report, load_before)
    return 0


if __name__ == '__main__':
    sys.exit(main())
