"""Speed of eval.features against a naive extractor, measured in the same run on the real Kinetics clips.

    python benchmarks/bench_features.py                  # i3d_r50, i3d-r50-10crop at --stride 64 (10 snippets)
    python benchmarks/bench_features.py --stride 16      # the whole preset (35 snippets; ~4x longer)

Each side runs in its own process over both clips, one after the other, so that a process-wide setting of one
side never reaches another:
- naive baseline (what the public 10-crop tool's structure costs without its JPEG dump): every snippet
  decoded on its own (the video opened and decoded from its start to the snippet's last frame), frames
  resized and cut with PIL, one eager forward per crop; its model is built before its clock starts.
- extractor: ``eval.features.main`` (one decode worker): each frame decoded once per video, all 10 crops of a
  snippet in one forward pass through the zoo fast path (BatchNorm folded, channels_last_3d, fp32), outputs
  written, with the heap the engine's jobs run with (zoo.heap); its clock covers the whole command, model
  build included.
- the extractor again with ``--compile`` (torch.compile with frozen weights; its compilation is counted).
- the naive baseline again in a process given the extractor's heap setting: how much of the gap that
  setting alone closes.
All use the same random-weight i3d_r50 (seed 0; the Caffe2 weights cannot be downloaded here); the speed does
not depend on the weights. The outputs must agree to a relative error of 1e-5. Also timed apart: the
decoding side alone.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zoo  # noqa: E402
from eval.features.presets import resolve_settings  # noqa: E402
from eval.features.stream import VideoJob, stream_video_checked  # noqa: E402
from eval.data.crops import crop_boxes  # noqa: E402
from eval.data.snippets import plan_snippets  # noqa: E402

CLIPS = ('arm_wrestling.mp4', 'cleaning_pool.mp4')
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared',
                      'data', 'kinetics-clips')


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the decode workers)."""
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def naive_snippet_frames(path: str, first: int, count: int):
    """Frames first..first+count-1 as PIL images, decoding the video from its start (no reuse)."""
    import av
    out = []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= first:
                out.append(frame.to_image())
            if len(out) == count:
                break
    return out


def naive_crops(images, crops):
    """Per crop: (1, 3, T, c, c) float32 in [-1, 1], cut from PIL images (mirror first for the last five)."""
    resized = [im.resize((340, 256), Image.LANCZOS) for im in images]
    mirrored = None
    for crop in crops:
        if crop.mirrored and mirrored is None:
            mirrored = [ImageOps.mirror(im) for im in resized]
        source = mirrored if crop.mirrored else resized
        box = (crop.left, crop.top, crop.left + crop.size, crop.top + crop.size)
        pixels = np.stack([np.asarray(im.crop(box)) for im in source]).astype(np.float64) * 2 / 255 - 1
        yield torch.from_numpy(pixels.astype(np.float32)).permute(3, 0, 1, 2)[None]


def run_naive(model, paths, settings, decode_only=False):
    feats = {}
    for path in paths:
        import av
        with av.open(path) as container:
            n = sum(1 for _ in container.decode(video=0))          # the tool counts its frame files
        plan = plan_snippets(n, settings.snippet, settings.stride, settings.tail)
        crops = crop_boxes(256, 340, 224, 'ten')
        out = np.zeros((plan.num_snippets, 10, 2048), np.float32)
        for k in range(plan.num_snippets):
            images = naive_snippet_frames(path, int(plan.frames[k, 0]), settings.snippet)
            for j, x in enumerate(naive_crops(images, crops)):
                if decode_only:
                    continue
                with torch.no_grad():
                    out[k, j] = model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy()
        feats[os.path.basename(path)] = out
    return feats


def run_extractor(paths, settings_args, out_dir, extra=()):
    from eval.features import main
    os.makedirs(out_dir, exist_ok=True)
    list_file = os.path.join(out_dir, 'list.txt')
    with open(list_file, 'w') as f:
        f.write('\n'.join(paths) + '\n')
    code = main(['--model', 'i3d_r50', '--random-weights', '--seed', '0', '--data', list_file, '--out', out_dir,
                 '--workers', '1', '--no-progress', *settings_args, *extra])
    assert code == 0
    return {os.path.basename(p): np.load(os.path.join(out_dir, os.path.basename(p).split('.')[0] + '.npy'))
            for p in paths}


# One process per side, so that a side's process-wide settings (the extractor's heap, zoo.heap) never reach
# another side. Each prints one JSON line: seconds, CPU seconds, and where its features are.
SIDES = {
    'naive': 'naive (per-snippet decode, PIL crops, 1 forward per crop)',
    'extractor': 'eval.features (decode once, 10 crops per forward, fast path)',
    'compiled': 'eval.features --compile (compilation included)',
    'naive-kept-heap': 'naive, its process given the extractor\'s heap setting',
}


def run_side(side: str, paths, stride: int, out_dir: str) -> dict:
    """In this (child) process: one side over all clips. The naive side's model is built before its clock
    starts; the extractor's clock covers its whole command (model build, BatchNorm folding, decode worker)."""
    settings_args = ['--preset', 'i3d-r50-10crop', '--stride', str(stride)]
    settings = resolve_settings('i3d-r50-10crop', stride=stride)
    if side.startswith('naive'):
        if side == 'naive-kept-heap':
            zoo.keep_freed_memory()
        torch.manual_seed(0)
        model = zoo.create_model('i3d_r50').eval()
        cpu, start = cpu_seconds(), time.perf_counter()
        feats = run_naive(model, paths, settings)
    else:
        cpu, start = cpu_seconds(), time.perf_counter()
        feats = run_extractor(paths, settings_args, out_dir, extra=('--compile',) if side == 'compiled' else ())
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    np.savez(os.path.join(out_dir, 'features.npz'), **feats)
    return {'seconds': seconds, 'cpu': cpu, 'features': os.path.join(out_dir, 'features.npz')}


def network_alone(keep_heap: bool) -> dict:
    """In this (child) process: one 10-crop, 16-frame, 224 forward pass of the fp32 fast path (best of 3 after
    one warm-up) and the minor page faults per pass, with or without the extractor's heap setting."""
    import resource
    from zoo.inference import prepare_for_inference
    if keep_heap:
        zoo.keep_freed_memory()
    torch.manual_seed(0)
    net = prepare_for_inference(zoo.create_model('i3d_r50').eval())
    x = torch.randn(10, 3, 16, 224, 224).contiguous(memory_format=torch.channels_last_3d)
    net(x)
    best, faults = float('inf'), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        start = time.perf_counter()
        net(x)
        best = min(best, time.perf_counter() - start)
    return {'seconds': best, 'faults': (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 3}


def spawn_side(side: str, clips: str, stride: int, out_dir: str) -> dict:
    import json
    import subprocess
    os.makedirs(out_dir, exist_ok=True)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), '--clips', clips, '--stride', str(stride),
                             '--side', side, '--side-out', out_dir], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f'the {side} side failed (exit status {result.returncode}):\n{result.stderr[-4000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--clips', default=SHARED, help='folder of the real clips (../shared/data/kinetics-clips)')
    p.add_argument('--stride', type=int, default=64, help='snippet stride (16 = the whole i3d-r50-10crop preset)')
    p.add_argument('--side', choices=sorted(SIDES) + ['network-default-heap', 'network-kept-heap'],
                   help=argparse.SUPPRESS)       # internal: one side, in a child
    p.add_argument('--side-out', help=argparse.SUPPRESS)
    args = p.parse_args()
    paths = [os.path.join(args.clips, c) for c in CLIPS]
    if args.side:
        import json
        if args.side.startswith('network'):
            print(json.dumps(network_alone(args.side == 'network-kept-heap')))
        else:
            print(json.dumps(run_side(args.side, paths, args.stride, args.side_out)))
        return
    settings = resolve_settings('i3d-r50-10crop', stride=args.stride)
    torch.manual_seed(0)
    model = zoo.create_model('i3d_r50').eval()

    print(f'machine  {cpu_name()}, {os.cpu_count()} CPUs visible, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start '
          f'{os.getloadavg()[0]:.1f} (a shared machine: other jobs slow every side alike)')
    print(f'clips    {", ".join(CLIPS)} (340x256 H.264, 280 and 300 frames)')
    print(f'work     i3d_r50 (random weights, seed 0), i3d-r50-10crop at stride {args.stride}: 16-frame snippets, '
          f'10 crops of 224, res5 pool; each side in its own process, over both clips')

    # decoding side alone: the extractor's stream vs the naive per-snippet decode + PIL cut
    start = time.perf_counter()
    snippets = 0
    for i, path in enumerate(paths):
        for chunk in stream_video_checked(VideoJob(i, CLIPS[i], path, CLIPS[i]), settings, 1):
            snippets += chunk.rows.shape[0]
    stream_s = time.perf_counter() - start
    start = time.perf_counter()
    run_naive(model, paths, settings, decode_only=True)
    naive_decode_s = time.perf_counter() - start
    del model

    with tempfile.TemporaryDirectory() as tmp:
        results = {side: spawn_side(side, args.clips, args.stride, os.path.join(tmp, side)) for side in SIDES}
        feats = {side: dict(np.load(r['features'])) for side, r in results.items()}
    naive = feats['naive']
    assert all(feats[side][c].shape == naive[c].shape for side in SIDES for c in CLIPS)
    base_s, base_cpu = results['naive']['seconds'], results['naive']['cpu']
    print(f'\n{"":64} {"videos/s":>9} {"snippets/s":>11} {"speedup":>8} {"CPU s":>8} {"CPU speedup":>12} '
          f'{"decode-only s":>14}')
    for side, name in SIDES.items():
        seconds, cpu = results[side]['seconds'], results[side]['cpu']
        decode_s = naive_decode_s if side.startswith('naive') else stream_s
        print(f'{name:64} {len(paths) / seconds:9.4f} {snippets / seconds:11.4f} {base_s / seconds:7.2f}x '
              f'{cpu:8.1f} {base_cpu / cpu:11.2f}x {decode_s:14.2f}')
    for side in SIDES:
        if side == 'naive':
            continue
        err = max(float(np.abs(feats[side][c] - naive[c]).max() / np.abs(naive[c]).max()) for c in CLIPS)
        print(f'max relative error {side} vs naive: {err:.2e} ({"within" if err < 1e-5 else "OUTSIDE"} 1e-5)')
    alone = {side: spawn_side(side, args.clips, args.stride, tempfile.gettempdir())
             for side in ('network-default-heap', 'network-kept-heap')}
    default, kept = alone['network-default-heap'], alone['network-kept-heap']
    print(f'network alone (fast path fp32, 10 crops x 16 x 224, one forward): default heap {default["seconds"]:.3f} s, '
          f'{default["faults"]} page faults; heap kept {kept["seconds"]:.3f} s, {kept["faults"]} page faults; '
          f'{default["seconds"] / kept["seconds"]:.2f}x')
    print(f'snippets {snippets} in {len(paths)} videos; decoding side alone: {naive_decode_s / stream_s:.1f}x faster; '
          f'load average at end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
