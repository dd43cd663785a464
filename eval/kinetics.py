"""Kinetics multi-view testing of a zoo model (the Caffe2 video-nonlocal-net protocol by default).

    python -m eval.kinetics --model i3d_r50 --data /data/kinetics --views 3x10   # 10 clips x 3 crops of 256
    python -m eval.kinetics --model i3d_r50 --data /data/kinetics --views 1x1    # centre clip, centre 224 crop
    python -m eval.kinetics                                                      # embedded demo, no data needed

--data is a Kinetics annotation CSV (videos beside it), a folder holding one (or use --annotations), a
``path label`` list file, or a folder of class folders. Prints the FLOP report, a progress bar, then
top-1 / top-5 / mean class accuracy; writes scores.npz, predictions.csv, failures.csv and summary.json
under --out (default runs/<model>-<views>-<time>).

Launched by torchrun, every rank scores its share of the videos and rank 0 writes the results:

    torchrun --nproc_per_node 8 -m eval.kinetics --model i3d_r50 --data /data/kinetics --out runs/i3d

Scores are stored in --out as they are produced; the same command again resumes where it stopped.
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
from .distributed import DEFAULT_TIMEOUT_S, DistContext, RankFailure, init_distributed, rank_device, usable_cpus
from .flops import count_flops, parse_views
from .meter import AGGREGATIONS
from .report import json_safe, metrics_over_annotated, top_classes, write_run
from .resumable import (build_manifest, check_free_space, collect_on_main, describe_store_counts, plan_work,
                        probe_writable, result_from_store, score_shard, weights_fingerprint)
from .runner import PRECISIONS
from .store import ScoreStore, check_run_dir, write_manifest
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
    p.add_argument('--workers', type=int,
                   help='DataLoader decode processes per rank (default: its CPUs - 1, at most 4; 0: in-process)')
    p.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda when present; under torchrun cuda:LOCAL_RANK)')
    p.add_argument('--precision', choices=PRECISIONS,
                   help='fp32 (default, exact), or bf16 / fp16 backbone with a float32 head (faster, not bit-exact)')
    p.add_argument('--amp', action='store_true', help='deprecated: same as --precision bf16')
    p.add_argument('--no-fast-path', action='store_true',
                   help='run the plain eager model instead of the BN-folded channels_last_3d copy')
    p.add_argument('--compile', action='store_true', help='torch.compile the model (slow start, faster on GPU)')
    p.add_argument('--seed', type=int, default=0, help='seed of the initialisation with --random-weights (default 0)')
    p.add_argument('--retry-failed', action='store_true',
                   help='on resume, try again the videos an earlier run recorded as failed (default: keep them failed)')
    p.add_argument('--dist-timeout', type=float, default=DEFAULT_TIMEOUT_S,
                   help=f'seconds a rank waits for the others at a synchronisation point before the job stops '
                        f'(default {DEFAULT_TIMEOUT_S:g})')
    p.add_argument('--max-videos', type=int, help='only the first N annotated videos')
    p.add_argument('--out', help='output folder, resumed when it holds an unfinished run (default runs/<model>-<views>-<time>)')
    p.add_argument('--cache-dir', help='demo set folder (default $ZOO_CACHE_DIR/demo or ~/.cache/video-zoo/demo)')
    p.add_argument('--no-flops', action='store_true', help='skip the fvcore FLOP report')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def _fail_together(ctx: DistContext, error: Optional[str], parser: argparse.ArgumentParser) -> None:
    """Every rank stops when any rank found a problem (rank 0 says which), so no rank starts work alone."""
    errors = [(rank, e) for rank, e in enumerate(ctx.all_gather(error, 'pre-flight checks')) if e]
    if not errors:
        return
    lines = [e if not ctx.distributed else f'rank {rank}: {e}' for rank, e in errors]
    parser.exit(2, ('error: ' + '\nerror: '.join(lines) + '\n') if ctx.is_main else '')


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    use_cuda = None if args.device is None else args.device.startswith('cuda')
    ctx = init_distributed(args.dist_timeout, use_cuda=use_cuda)
    try:
        with torch.no_grad():      # scoped, so calling main() in-process leaves autograd as it was
            return _run(parser, args, argv, ctx)
    except RankFailure as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        return 3
    finally:
        ctx.close()


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Optional[List[str]],
         ctx: DistContext) -> int:
    demo = args.data is None
    started = time.time()
    say = print if ctx.is_main else (lambda *a, **k: None)     # one console: rank 0's
    precision = args.precision or ('bf16' if args.amp else 'fp32')
    if args.amp and args.precision not in (None, 'bf16'):
        parser.exit(2, f'error: --amp means --precision bf16, which contradicts --precision {args.precision}\n')
    if args.amp:
        say('note: --amp is deprecated; use --precision bf16')
    fast_path = not args.no_fast_path

    # an unwritable --out is reported before anything is loaded or decoded
    if args.out:
        _fail_together(ctx, probe_writable(args.out), parser)

    # ---- model and weights
    notes: List[str] = []
    torch.manual_seed(args.seed)      # random weights are the same in every rank and every attempt
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

    stamp = ctx.broadcast_from_main(datetime.datetime.now().strftime('%Y%m%d-%H%M%S'), 'agreeing on the run name')
    out_dir = args.out or os.path.join('runs', f'{name}-{spec.name}-{stamp}')
    if not args.out:
        _fail_together(ctx, probe_writable(out_dir), parser)

    # ---- data
    class_names = cfg.class_names or zoo.kinetics400_class_names()
    labels = LabelMap(class_names)
    if demo:
        from .demo import build_demo_set
        if not ctx.is_main:       # rank 0 builds the demo set first; the others then find it in the cache
            ctx.barrier('building the demo set')
        list_path, demo_clips = build_demo_set(args.cache_dir)
        if ctx.is_main:
            ctx.barrier('building the demo set')
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
    num_classes = cfg.num_classes if cfg.num_classes else 400
    fps = args.fps or cfg.fps

    # ---- the run directory: same configuration or refuse
    store = ScoreStore(out_dir)
    verdict = None
    if ctx.is_main:
        manifest = build_manifest(
            model_name=name, weights=weights, weights_sha256=weights_fingerprint(model), seed=args.seed,
            spec=spec, aggregation=args.aggregate, fps=fps, records=records, num_classes=num_classes,
            precision=precision, fast_path=fast_path,
            info={'created': stamp, 'torch': torch.__version__, 'data': args.data, 'annotations': args.annotations,
                  'split': args.split, 'max_videos': args.max_videos, 'compile': args.compile})
        verdict = check_run_dir(out_dir, manifest)
        if verdict is None and not os.path.isfile(os.path.join(out_dir, 'manifest.json')):
            write_manifest(out_dir, manifest)
    verdict = ctx.broadcast_from_main(verdict, 'checking the run directory')
    if verdict:
        parser.exit(2, f'error: {verdict}\n' if ctx.is_main else '')
    plan = plan_work(ctx, store, records, args.retry_failed)
    _fail_together(ctx, check_free_space(out_dir, len(plan.todo) if ctx.is_main else len(plan.mine), num_classes),
                   parser)

    device = rank_device(ctx, args.device)
    if args.batch_size is None:
        args.batch_size = 8 if device.type == 'cuda' else 2  # on CPU a bigger batch only costs memory
    if args.workers is None:
        args.workers = min(4, max(0, usable_cpus() // ctx.local_world_size - 1))
    fully_conv = spec.crop_size > cfg.crop_size
    say('=' * 100)
    say(f'model    {describe_weights(name, weights)}')
    for note in notes:
        say(f'         note: {note}')
    say(f'views    {describe_protocol(spec, fully_conv, args.aggregate)}')
    say(f'input    {cfg.channel_order}, 0-255 pixels, mean {tuple(cfg.mean)}, std {tuple(cfg.std)}'
        + (f', video files resampled to {fps:g} fps' if fps else ''))
    say(f'data     {dataset_desc}: {annotated} annotated'
        + (f', first {len(records)} used (--max-videos)' if len(records) != annotated else ''))
    say(f'device   {device}{f" on each of {ctx.world_size} ranks" if ctx.distributed else ""}, '
        f'batch {args.batch_size} views, {args.workers} loader workers, '
        f'{precision}{", fast path" if fast_path else ", eager model"}{", compiled" if args.compile else ""}')
    if plan.done:
        failed_before = sum(1 for s in plan.done.values() if s == 'failed')
        say(f'resume   {out_dir} already holds {len(plan.done)} of {len(records)} videos '
            f'({len(plan.done) - failed_before} scored, {failed_before} failed'
            + (f', retried now (--retry-failed)' if args.retry_failed and failed_before
               else ', kept failed: --retry-failed tries them again' if failed_before else '')
            + f'); {len(plan.todo)} to score')
    if not weights['trained']:
        say('!' * 100)
        say(f'!! {RANDOM_WEIGHTS_NOTE}')
        say('!' * 100)

    # ---- FLOPs
    flops = None
    if not args.no_flops and ctx.is_main:
        report = count_flops(model, spec.num_frames, spec.crop_size, model_name=name,
                             views=(spec.spatial_crops, spec.temporal_clips))
        say('-' * 100)
        say(report.table())
        flops = {'params': report.params, 'flops_per_view': report.flops_per_view,
                 'flops_per_video': report.flops_per_video, 'views': report.views,
                 'view_shape': [3, spec.num_frames, spec.crop_size, spec.crop_size], 'counter': 'fvcore (1 MAC = 1 flop)'}
    say('-' * 100, flush=True)

    # ---- run: this rank's share into the store, then everything on rank 0
    shard_report = score_shard(
        ctx, store, plan, model, records, spec, cfg=cfg, batch_size=args.batch_size, workers=args.workers,
        device=device, aggregation=args.aggregate, fps=args.fps, precision=precision, fast_path=fast_path,
        compile=args.compile, progress=ctx.is_main and not args.no_progress,
        progress_desc=f'rank 0 of {ctx.world_size}' if ctx.distributed else None)
    collected = collect_on_main(ctx, store, plan.keys, shard_report)
    if not ctx.is_main:
        return 0
    stored, rank_reports, torn = collected
    result = result_from_store(records, plan.keys, stored, spec, num_classes, args.aggregate,
                               seconds=shard_report.seconds, device=str(device), fully_conv=fully_conv,
                               precision=precision, fast_path=fast_path)
    metrics = result.meter.metrics()
    counts = result.counts()
    counts['annotated_total'] = annotated
    scored_now = sum(r.scored for r in rank_reports)
    failed_now = sum(r.failed for r in rank_reports)
    wall = max(r.seconds for r in rank_reports)

    # ---- outputs
    summary = json_safe({
        'model': name,
        'weights': weights,
        'demo': demo,
        'views': {'spec': spec.name, 'num_views': spec.num_views, 'frames': spec.num_frames,
                  'sampling_rate': spec.sampling_rate, 'scale': spec.scale, 'crop': spec.crop_size,
                  'fully_conv_head': result.fully_conv, 'aggregation': args.aggregate,
                  'fps': fps, 'protocol': describe_protocol(spec, result.fully_conv, args.aggregate)},
        'data': {'description': dataset_desc, 'argument': args.data, 'annotations': args.annotations,
                 'split': args.split, 'max_videos': args.max_videos},
        'counts': counts,
        'metrics': metrics,
        'metrics_note': 'fractions over the scored, labelled videos',
        'metrics_over_annotated': metrics_over_annotated(result),
        'metrics_over_annotated_note': 'Caffe2 accounting: every annotated video counts, unscored ones as wrong',
        'flops': flops,
        'device': result.device,
        'precision': precision,
        'fast_path': fast_path,
        'compile': args.compile,
        'run': {
            'world_size': ctx.world_size,
            'videos_from_earlier_runs': len(plan.done) - plan.retried_failed,
            'scored_this_run': scored_now,
            'failed_this_run': failed_now,
            'retried_failed': plan.retried_failed,
            'torn_bytes_ignored': torn,
            'stored': describe_store_counts(stored),
            'ranks': [vars(r) for r in rank_reports],
        },
        'seconds': round(wall, 2),
        'videos_per_second': round((scored_now + failed_now) / wall, 3) if wall else None,
        'command': ' '.join(['python -m eval.kinetics'] + (argv if argv is not None else sys.argv[1:])),
        'created': stamp,
        'torch': torch.__version__,
    })
    paths = write_run(out_dir, result, class_names, summary)

    # ---- console summary
    say('-' * 100)
    if demo:
        scores = result.meter.video_scores()
        best = top_classes(scores, 5)
        say('demo predictions' + ('' if weights['trained'] else ' (RANDOM WEIGHTS: meaningless)') + ':')
        for i, record in enumerate(records):
            if not result.meter.complete[i]:
                continue
            label = f'illustrative label "{record.label_name}"' if record.label >= 0 else 'unlabelled'
            top5 = ', '.join(f'{class_names[c]} {scores[i, c]:.2f}' for c in best[i])
            say(f'  {record.video_id:<14} ({label}): {top5}')
    say(f'scored   {counts["scored"]} of {len(records)} videos'
        + (f' ({annotated} annotated)' if annotated != len(records) else '')
        + f', {counts["failed"]} failed (see {paths["failures.csv"]})'
        + (f'; {scored_now + failed_now} done in this run, {len(plan.done) - plan.retried_failed} from earlier runs'
           if plan.done else ''))
    for failure in result.failures[:10]:
        say(f'  failed {failure.record.video_id}: {failure.reason}')
    if len(result.failures) > 10:
        say(f'  ... {len(result.failures) - 10} more in failures.csv')
    if metrics['videos']:
        say(f'accuracy over {metrics["videos"]} labelled videos: top-1 {100 * metrics["top1"]:.2f}%  '
            f'top-5 {100 * metrics["top5"]:.2f}%  mean class {100 * metrics["mean_class_accuracy"]:.2f}%'
            + ('' if weights['trained'] else '   <- untrained weights: meaningless'))
        if demo:
            say('  (demo labels are illustrative; these numbers are not a benchmark)')
    else:
        say('accuracy: no labelled video was scored')
    say(f'time     {wall:.1f}s for {scored_now + failed_now} videos'
        + (f' on {ctx.world_size} ranks' if ctx.distributed else '') + f' ({time.time() - started:.1f}s in all)')
    say(f'outputs  {out_dir}/  (summary.json, scores.npz, predictions.csv, failures.csv; store/ and manifest.json '
        'let the same command resume)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
