"""Speed of eval.features against a naive extractor, measured in the same run on the real Kinetics clips.

    python benchmarks/bench_features.py                  # i3d_r50, i3d-r50-10crop at --stride 64 (10 snippets)
    python benchmarks/bench_features.py --stride 16      # the whole preset (35 snippets; ~4x longer)

Extractor: ``python -m eval.features`` in this process (one decode worker): each frame decoded once per
video, all 10 crops of a snippet in one forward pass through the zoo fast path (BatchNorm folded,
channels_last_3d, fp32), outputs written; once more with ``--compile`` (torch.compile with frozen weights),
over both clips in one run so that its one compilation is counted once, as on a data set. Naive baseline (what the public 10-crop tool's structure costs
without its JPEG dump): every snippet decoded on its own (the video opened and decoded from its start to
the snippet's last frame), frames resized and cut with PIL, one eager forward per crop. Both use the same
random-weight i3d_r50 (seed 0; the Caffe2 weights cannot be downloaded here); the speed does not depend on
the weights. The outputs must agree to a relative error of 1e-5. Also timed apart: the decoding side alone.
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
from eval.feature_presets import resolve_settings  # noqa: E402
from eval.feature_stream import VideoJob, stream_video_checked  # noqa: E402
from eval.snippets import crop_boxes, plan_snippets  # noqa: E402

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
        crops = crop_boxes(256, 340, 10, 224)
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--clips', default=SHARED, help='folder of the real clips (../shared/data/kinetics-clips)')
    p.add_argument('--stride', type=int, default=64, help='snippet stride (16 = the whole i3d-r50-10crop preset)')
    args = p.parse_args()
    paths = [os.path.join(args.clips, c) for c in CLIPS]
    settings_args = ['--preset', 'i3d-r50-10crop', '--stride', str(args.stride)]
    settings = resolve_settings('i3d-r50-10crop', stride=args.stride)
    torch.manual_seed(0)
    model = zoo.create_model('i3d_r50').eval()

    print(f'machine  {cpu_name()}, {os.cpu_count()} CPUs visible, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start '
          f'{os.getloadavg()[0]:.1f} (a shared machine: other jobs slow both sides alike)')
    print(f'clips    {", ".join(CLIPS)} (340x256 H.264, 280 and 300 frames)')
    print(f'work     i3d_r50 (random weights, seed 0), i3d-r50-10crop at stride {args.stride}: 16-frame snippets, '
          f'10 crops of 224, res5 pool')

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

    # Interleaved, one clip at a time (extractor then baseline), so that both meet the same load on a
    # shared machine; wall and CPU seconds (this process and its reaped decode workers) are both summed.
    fast, naive = {}, {}
    fast_s = naive_s = fast_cpu = naive_cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            cpu, start = cpu_seconds(), time.perf_counter()
            fast.update(run_extractor([path], settings_args, os.path.join(tmp, str(i))))
            fast_s += time.perf_counter() - start
            fast_cpu += cpu_seconds() - cpu
            cpu, start = cpu_seconds(), time.perf_counter()
            naive.update(run_naive(model, [path], settings))
            naive_s += time.perf_counter() - start
            naive_cpu += cpu_seconds() - cpu
        # --compile: one run over both clips, as a data set is run (one compilation, included in the time)
        cpu, start = cpu_seconds(), time.perf_counter()
        compiled = run_extractor(paths, settings_args, os.path.join(tmp, 'compiled'), extra=('--compile',))
        compiled_s, compiled_cpu = time.perf_counter() - start, cpu_seconds() - cpu

    errors = [float(np.abs(fast[c] - naive[c]).max() / np.abs(naive[c]).max()) for c in CLIPS]
    compiled_errors = [float(np.abs(compiled[c] - naive[c]).max() / np.abs(naive[c]).max()) for c in CLIPS]
    assert all(fast[c].shape == naive[c].shape == compiled[c].shape for c in CLIPS)
    rows = [('naive (per-snippet decode, PIL crops, 1 forward per crop)', naive_s, naive_cpu, naive_decode_s),
            ('eval.features (decode once, 10 crops per forward, fast path)', fast_s, fast_cpu, stream_s),
            ('eval.features --compile (compilation included)', compiled_s, compiled_cpu, stream_s)]
    print(f'\n{"":64} {"videos/s":>9} {"snippets/s":>11} {"speedup":>8} {"CPU s":>8} {"CPU speedup":>12} '
          f'{"decode-only s":>14}')
    for name, seconds, cpu, decode_s in rows:
        print(f'{name:64} {len(paths) / seconds:9.4f} {snippets / seconds:11.4f} {naive_s / seconds:7.2f}x '
              f'{cpu:8.1f} {naive_cpu / cpu:11.2f}x {decode_s:14.2f}')
    for label, errs in (('extractor', errors), ('extractor --compile', compiled_errors)):
        print(f'max relative error {label} vs naive: {max(errs):.2e} ({"within" if max(errs) < 1e-5 else "OUTSIDE"} 1e-5)')
    print(f'snippets {snippets} in {len(paths)} videos; decoding side alone: {naive_decode_s / stream_s:.1f}x faster; '
          f'load average at end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
