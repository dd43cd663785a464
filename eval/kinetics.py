"""Kinetics multi-view testing of a zoo model (the Caffe2 video-nonlocal-net protocol by default).

    python -m eval.kinetics --model i3d_r50 --data /data/kinetics --views 3x10   # 10 clips x 3 crops of 256
    python -m eval.kinetics --model i3d_r50 --data /data/kinetics --views 1x1    # centre clip, centre 224 crop
    python -m eval.kinetics                                                      # embedded demo, no data needed

--data is a Kinetics annotation CSV (videos beside it), a folder holding one (or use --annotations), a
``path label`` list file, or a folder of class folders. Prints the FLOP report, a progress bar, then
top-1 / top-5 / mean class accuracy; writes scores.npz, predictions.csv, failures.csv and summary.json
under --out (default runs/<model>-<views>-<time>).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import List, Optional, Tuple

import torch

import zoo

from .datasets import LabelMap, read_dataset, read_list_file
from .flops import count_flops, parse_views
from .meter import AGGREGATIONS
from .report import json_safe, metrics_over_annotated, top_classes, write_run
from .runner import default_device, evaluate
from .views import ViewSpec

RANDOM_WEIGHTS_NOTE = ('RANDOM WEIGHTS: this model is untrained, so its accuracy means nothing; '
                       'the run only shows the pipeline working.')


def load_model(name: str, pretrained: bool = True, checkpoint: Optional[str] = None,
               weights_file: Optional[str] = None) -> Tuple[torch.nn.Module, dict]:
    """A zoo model and a description of the weights it carries (for the summary and the console)."""
    overlay = {'file': weights_file} if weights_file else None
    model = zoo.create_model(name, pretrained=pretrained and not checkpoint, checkpoint_path=checkpoint,
                             pretrained_cfg_overlay=overlay)
    cfg = model.pretrained_cfg
    if checkpoint:
        weights = {'kind': 'checkpoint', 'trained': True, 'source': os.path.abspath(checkpoint)}
    elif pretrained:
        weights = {'kind': 'pretrained', 'trained': True, 'source': cfg.file or cfg.url,
                   'source_name': cfg.source_name, 'license': cfg.license,
                   'published_top1': cfg.top1, 'published_top5': cfg.top5}
    else:
        weights = {'kind': 'random', 'trained': False, 'source': None, 'note': RANDOM_WEIGHTS_NOTE}
    return model, weights


def describe_weights(name: str, weights: dict) -> str:
    if weights['kind'] == 'pretrained':
        origin = weights.get('source_name') or weights.get('source')
        return f'{name}: pretrained weights ({origin}; {weights.get("license") or "licence: see MODEL_CARD.md"})'
    if weights['kind'] == 'checkpoint':
        return f'{name}: weights from checkpoint {weights["source"]}'
    return f'{name}: {RANDOM_WEIGHTS_NOTE}'


def describe_protocol(spec: ViewSpec, fully_conv: bool, aggregation: str) -> str:
    clips = ('the centre clip' if spec.temporal_clips == 1 else
             f'{spec.temporal_clips} clips starting at floor(N*k/{spec.temporal_clips})')
    crops = {1: 'the centre crop', 3: '3 crops along the long side (Caffe2 positions)',
             6: '3 crops along the long side and their mirrors'}.get(spec.spatial_crops,
                                                                       f'{spec.spatial_crops} crops along the long side')
    rule = 'view softmax averaged' if aggregation == 'softmax' else 'view outputs (logits) averaged'
    head = 'fully-convolutional head (Caffe2 test)' if fully_conv else 'global-pool head'
    return (f'{spec.name} views: {clips} of {spec.num_frames} frames at rate {spec.sampling_rate} (wrapping), '
            f'short side {spec.scale}, {crops} of {spec.crop_size}; {head}; {rule}')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m eval.kinetics', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='a name from zoo.list_models() (default: i3d_r50; demo: see eval.demo)')
    p.add_argument('--data', help='annotation CSV, list file, or folder (omit for the embedded demo)')
    p.add_argument('--annotations', help='a Kinetics CSV whose videos are under --data')
    p.add_argument('--split', help='keep only CSV rows of this split (e.g. val)')
    p.add_argument('--views', help='SxT: spatial crops x temporal clips (default: the model\'s published test)')
    p.add_argument('--frames', type=int, help='frames per clip (default: model config)')
    p.add_argument('--rate', type=int, help='sampling rate (default: model config)')
    p.add_argument('--scale', type=int, help='short side before cropping (default: model config test_scale)')
    p.add_argument('--crop', type=int, help='crop size (default: 224 for 1x1, else model test_crop_size)')
    p.add_argument('--fps', type=float, help='resample video files to this rate (default: model config fps)')
    p.add_argument('--aggregate', choices=AGGREGATIONS, default='softmax',
                   help='per-video score: mean of view softmax (Caffe2, default) or of raw outputs')
    w = p.add_mutually_exclusive_group()
    w.add_argument('--checkpoint', help='a zoo .pth/.safetensors state dict instead of the pretrained weights')
    w.add_argument('--weights-file', help='a local copy of the source checkpoint (e.g. the Caffe2 .pkl)')
    w.add_argument('--random-weights', action='store_true', help='run untrained (pipeline check only)')
    p.add_argument('--batch-size', type=int,
                   help='views per forward pass, across videos (default 8 on GPU, 2 on CPU)')
    p.add_argument('--workers', type=int, default=min(4, max(1, (os.cpu_count() or 2) - 1)),
                   help='DataLoader decode processes (default: CPUs - 1, at most 4; 0: in-process)')
    p.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda when present)')
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast (faster on GPU; not bit-exact)')
    p.add_argument('--max-videos', type=int, help='only the first N annotated videos')
    p.add_argument('--out', help='output folder (default runs/<model>-<views>-<time>)')
    p.add_argument('--cache-dir', help='demo set folder (default $ZOO_CACHE_DIR/demo or ~/.cache/video-zoo/demo)')
    p.add_argument('--no-flops', action='store_true', help='skip the fvcore FLOP report')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    demo = args.data is None
    started = time.time()
    torch.set_grad_enabled(False)

    # ---- model and weights
    notes: List[str] = []
    try:
        if demo:
            from .demo import choose_demo_model
            name, model, weights, notes = choose_demo_model(args.model)
        else:
            name = args.model or 'i3d_r50'
            model, weights = load_model(name, pretrained=not args.random_weights, checkpoint=args.checkpoint,
                                        weights_file=args.weights_file)
    except KeyError as e:
        parser.exit(2, f'error: {e.args[0] if e.args else e}\n')
    except (RuntimeError, NotImplementedError, OSError) as e:
        parser.exit(2, f'error: cannot load weights for {args.model or "i3d_r50"}: {e}\n'
                       'use --checkpoint / --weights-file for local weights, or --random-weights to check the '
                       'pipeline without them\n')
    cfg = model.pretrained_cfg

    # ---- views
    try:
        views = parse_views(args.views) if args.views else tuple(cfg.test_views)
        spec = ViewSpec.from_cfg(cfg, views, frames=args.frames, rate=args.rate, scale=args.scale, crop=args.crop)
    except ValueError as e:
        parser.exit(2, f'error: {e}\n')

    # ---- data
    class_names = cfg.class_names or zoo.kinetics400_class_names()
    labels = LabelMap(class_names)
    if demo:
        from .demo import build_demo_set
        list_path, demo_clips = build_demo_set(args.cache_dir)
        records = read_list_file(list_path, labels)
        dataset_desc = f'embedded demo set {os.path.dirname(list_path)} ({len(records)} clips; labels illustrative)'
    else:
        try:
            records, dataset_desc = read_dataset(args.data, labels, args.annotations, args.split)
        except (OSError, ValueError) as e:
            parser.exit(2, f'error: {e}\n')
    annotated = len(records)
    if args.max_videos is not None:
        records = records[:args.max_videos]

    device = torch.device(args.device) if args.device else default_device()
    if args.batch_size is None:
        args.batch_size = 8 if device.type == 'cuda' else 2  # on CPU a bigger batch only costs memory
    fully_conv = spec.crop_size > cfg.crop_size
    print('=' * 100)
    print(f'model    {describe_weights(name, weights)}')
    for note in notes:
        print(f'         note: {note}')
    print(f'views    {describe_protocol(spec, fully_conv, args.aggregate)}')
    print(f'input    {cfg.channel_order}, 0-255 pixels, mean {tuple(cfg.mean)}, std {tuple(cfg.std)}'
          + (f', video files resampled to {args.fps or cfg.fps:g} fps' if (args.fps or cfg.fps) else ''))
    print(f'data     {dataset_desc}: {annotated} annotated'
          + (f', first {len(records)} used (--max-videos)' if len(records) != annotated else ''))
    print(f'device   {device}, batch {args.batch_size} views, {args.workers} loader workers')
    if not weights['trained']:
        print('!' * 100)
        print(f'!! {RANDOM_WEIGHTS_NOTE}')
        print('!' * 100)

    # ---- FLOPs
    flops = None
    if not args.no_flops:
        report = count_flops(model, spec.num_frames, spec.crop_size, model_name=name,
                             views=(spec.spatial_crops, spec.temporal_clips))
        print('-' * 100)
        print(report.table())
        flops = {'params': report.params, 'flops_per_view': report.flops_per_view,
                 'flops_per_video': report.flops_per_video, 'views': report.views,
                 'view_shape': [3, spec.num_frames, spec.crop_size, spec.crop_size], 'counter': 'fvcore (1 MAC = 1 flop)'}
    print('-' * 100, flush=True)

    # ---- run
    result = evaluate(model, records, spec, cfg=cfg, batch_size=args.batch_size, workers=args.workers,
                      device=device, aggregation=args.aggregate, fps=args.fps, amp=args.amp,
                      progress=not args.no_progress)
    metrics = result.meter.metrics()
    counts = result.counts()
    counts['annotated_total'] = annotated

    # ---- outputs
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    out_dir = args.out or os.path.join('runs', f'{name}-{spec.name}-{stamp}')
    summary = json_safe({
        'model': name,
        'weights': weights,
        'demo': demo,
        'views': {'spec': spec.name, 'num_views': spec.num_views, 'frames': spec.num_frames,
                  'sampling_rate': spec.sampling_rate, 'scale': spec.scale, 'crop': spec.crop_size,
                  'fully_conv_head': result.fully_conv, 'aggregation': args.aggregate,
                  'fps': args.fps or cfg.fps, 'protocol': describe_protocol(spec, result.fully_conv, args.aggregate)},
        'data': {'description': dataset_desc, 'argument': args.data, 'annotations': args.annotations,
                 'split': args.split, 'max_videos': args.max_videos},
        'counts': counts,
        'metrics': metrics,
        'metrics_note': 'fractions over the scored, labelled videos',
        'metrics_over_annotated': metrics_over_annotated(result),
        'metrics_over_annotated_note': 'Caffe2 accounting: every annotated video counts, unscored ones as wrong',
        'flops': flops,
        'device': result.device,
        'seconds': round(result.seconds, 2),
        'videos_per_second': round(len(records) / result.seconds, 3) if result.seconds else None,
        'command': ' '.join(['python -m eval.kinetics'] + (argv if argv is not None else sys.argv[1:])),
        'created': stamp,
        'torch': torch.__version__,
    })
    paths = write_run(out_dir, result, class_names, summary)

    # ---- console summary
    print('-' * 100)
    if demo:
        scores = result.meter.video_scores()
        best = top_classes(scores, 5)
        print('demo predictions' + ('' if weights['trained'] else ' (RANDOM WEIGHTS: meaningless)') + ':')
        for i, record in enumerate(records):
            if not result.meter.complete[i]:
                continue
            label = f'illustrative label "{record.label_name}"' if record.label >= 0 else 'unlabelled'
            top5 = ', '.join(f'{class_names[c]} {scores[i, c]:.2f}' for c in best[i])
            print(f'  {record.video_id:<14} ({label}): {top5}')
    print(f'scored   {counts["scored"]} of {len(records)} videos'
          + (f' ({annotated} annotated)' if annotated != len(records) else '')
          + f', {counts["failed"]} failed (see {paths["failures.csv"]})')
    for failure in result.failures[:10]:
        print(f'  failed {failure.record.video_id}: {failure.reason}')
    if len(result.failures) > 10:
        print(f'  ... {len(result.failures) - 10} more in failures.csv')
    if metrics['videos']:
        print(f'accuracy over {metrics["videos"]} labelled videos: top-1 {100 * metrics["top1"]:.2f}%  '
              f'top-5 {100 * metrics["top5"]:.2f}%  mean class {100 * metrics["mean_class_accuracy"]:.2f}%'
              + ('' if weights['trained'] else '   <- untrained weights: meaningless'))
        if demo:
            print('  (demo labels are illustrative; these numbers are not a benchmark)')
    else:
        print('accuracy: no labelled video was scored')
    print(f'time     {result.seconds:.1f}s for {len(records)} videos ({time.time() - started:.1f}s in all)')
    print(f'outputs  {out_dir}/  (summary.json, scores.npz, predictions.csv, failures.csv)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
