"""Speed of eval.features' network at each --precision, on the real Kinetics clips' first windows.

    python benchmarks/bench_feature_precision.py                      # i3d_inception, i3d-inception preset
    python benchmarks/bench_feature_precision.py --model i3d_r50 --preset i3d-r50-10crop
    python benchmarks/bench_feature_precision.py --out benchmarks/features-precision-cpu.json

The first snippet of each clip is decoded and cropped once (eval.features.stream, the preset's settings); then
the feature network (eval.features.stream.prepare_feature_model: the fast path, BatchNorm folded,
channels_last_3d) is timed on those snippets at each precision, the best of a few passes (benchmarks/timing.py).
The model has random weights (seed 0): speed does not depend on the values. Also reported: each precision's
largest relative L2 difference from fp32 on these inputs (the accuracy test on trained weights is
tests/test_features_precision.py). fp16 on the CPU is listed for completeness: CPUs without fp16 arithmetic
emulate it and are slow.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zoo  # noqa: E402
from benchmarks.machine import machine_info, machine_load, write_report  # noqa: E402
from benchmarks.timing import best_seconds  # noqa: E402
from eval.features.presets import resolve_settings  # noqa: E402
from eval.features.stream import (VideoJob, normalisation, prepare_feature_model, run_chunk,  # noqa: E402
                                  stream_video_checked)
from eval.kit.runtime import job_backend, resolve_device, resolve_precision  # noqa: E402

CLIPS = ('arm_wrestling.mp4', 'cleaning_pool.mp4')
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared',
                      'data', 'kinetics-clips')


def first_snippets(folder: str, settings):
    return [next(iter(stream_video_checked(VideoJob(0, n, os.path.join(folder, n), n), settings, 1))) for n in CLIPS]


def bench(model_name: str, preset: str, precisions, folder: str, device, repeats: int) -> dict:
    settings = resolve_settings(preset)
    chunks = first_snippets(folder, settings)
    torch.manual_seed(0)
    model = zoo.create_model(model_name)
    pixels = normalisation(settings, model.pretrained_cfg)
    rows, reference = {}, None
    for name in precisions:
        precision = resolve_precision(name, device)
        net = prepare_feature_model(model, settings.layer, device, precision=precision)
        with job_backend(device, precision):
            seconds, feats = best_seconds(lambda: [run_chunk(net, c, settings, pixels, device) for c in chunks],
                                          repeats=repeats, warmup=1, device=device)
        feats = np.concatenate(feats).reshape(len(chunks), -1).astype(np.float64)
        reference = feats if reference is None else reference
        err = np.linalg.norm(feats - reference, axis=1) / np.linalg.norm(reference, axis=1)
        rows[name] = {'seconds': round(seconds, 3), 'max_relative_l2_vs_first': float(err.max())}
        print(f'{name}: {seconds:.2f} s for {len(chunks)} snippets x {settings.crops} crop(s) '
              f'(max relative L2 vs {precisions[0]}: {err.max():.2e})', flush=True)
    base = rows[precisions[0]]['seconds']
    for name in precisions[1:]:
        rows[name]['speedup_vs_' + precisions[0]] = round(base / rows[name]['seconds'], 2)
    return {'model': model_name, 'preset': preset, 'snippets': len(chunks), 'crops': settings.crops,
            'snippet_frames': settings.snippet, 'results': rows}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='i3d_inception')
    p.add_argument('--preset', default='i3d-inception')
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'])
    p.add_argument('--clips', default=SHARED, help='folder of the real clips (../shared/data/kinetics-clips)')
    p.add_argument('--device', help='default: cuda when present')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', help='write the report as JSON')
    args = p.parse_args()
    device = resolve_device(args.device)
    load = machine_load()
    report = {'machine': machine_info(device),
              **bench(args.model, args.preset, args.precisions, args.clips, device, args.repeats)}
    print(report['machine'])
    if args.out:
        write_report(args.out, report, load)


if __name__ == '__main__':
    main()
