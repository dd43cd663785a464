"""Video feature extraction with zoo models: per-snippet, per-crop pooled features of whole data sets.

    python -m eval.features --model i3d_r50 --data /data/ucf_crime/videos --preset i3d-r50-10crop --out feats/
    python -m eval.features --model i3d_inception --data list.txt --preset i3d-inception --out feats/
    python -m eval.features --model i3d_r50 --data videos/ --snippet 32 --stride 8 --crops 3 --out feats/
    python -m eval.features --model i3d_inception --data videos/ --preset i3d-inception --precision bf16 --out feats/
    torchrun --nproc_per_node 8 -m eval.features ...       # the same files as one process; resumable

From Python: ``feats, info = extract(model, 'clip.mp4', preset='i3d-r50-10crop')``.

--data is a folder (video files and frame folders, searched recursively), one video file, or a list file
(one path per line). Per video --out gets the array (``<stem>.npy``, named as the preset says) and ``<stem>.json`` (what
every axis, crop and snippet is); at the end ``index.json`` lists every video and every failure.
``manifest.json`` ties --out to one configuration; the same command again resumes, skipping every video
whose array matches its sidecar. Presets and their sources: eval/features/presets.py.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from eval.kit.flags import add_execution_flags, add_model_flags, add_precision_flags
from eval.kit.config import clip_size_problem, default_batch_size, default_workers
from eval.kit.console import RULE, Console, progress_bar, rank_label
from eval.data.decode import FPS_HELP
from eval.data.pixels import PixelNormalizer
from eval.data.records import DataNotFound, VideoRecord, find_videos
from eval.kit.distributed import DistContext, shard
from eval.kit.job import RunError, decide_on_main, exit_verdict, fail_together, run_job
from eval.kit.models import load_model, weights_fingerprint
from eval.kit.resume import agree_on_finished, remaining_work
from eval.features.outputs import (ARRAY_FORMATS, FAILED, FORMAT_VERSION, HDF5, INDEX, MANIFEST, array_bytes, arrange,
                              build_sidecar, finished_sidecar, hdf5_available, identity_sha256, index_entry,
                              record_failure, recorded_failure, sha256_bytes, write_hdf5, write_json,
                              write_video_outputs)
from eval.features.presets import OVERRIDABLE, PRESETS, FeatureSettings, output_stem, resolve_settings
from eval.features.stream import (FeatureAccumulator, FeatureStream, PooledFeatures, UnknownLayerError, VideoFailure,
                             VideoJob, feature_compile_problem, normalisation, prepare_feature_model, resolve_layer,
                             run_chunk, stream_video_checked)
from eval.data.decode import open_source
from eval.data.snippets import snippet_count
from eval.kit.compiling import (CompileDecision, compile_record, compile_summary, decide_compile, flop_to_repay,
                                network_flop)
from eval.kit.rundir import claim_run_dir, probe_writable
from eval.kit.runtime import RunPrecision, job_backend, decode_loader, resolve_device, resolve_precision


# ------------------------------------------------------------------------------------------- inputs

def read_inputs(data: str) -> Tuple[List[VideoRecord], str]:
    """The videos of --data (eval.data.records.find_videos: a folder searched recursively, one video file or a
    list file) and a one-line description."""
    try:
        return find_videos(data)
    except DataNotFound as e:
        raise RunError(str(e)) from e


def make_jobs(records: Sequence[VideoRecord], settings: FeatureSettings) -> Tuple[List[VideoJob], List[VideoJob]]:
    """(jobs, missing): output stems by the preset's naming rule; two videos with one stem are an error."""
    jobs, missing, by_stem = [], [], {}
    for i, record in enumerate(records):
        stem = output_stem(record.path or record.video_id, settings.naming)
        if record.path is None:
            missing.append(VideoJob(i, record.video_id, record.missing or 'missing', stem))
            continue
        jobs.append(VideoJob(i, record.video_id, record.path, stem))
        by_stem.setdefault(stem, []).append(record.path)
    clashes = {s: p for s, p in by_stem.items() if len(p) > 1}
    if clashes:
        lines = [f'{s}: {", ".join(p[:3])}{" ..." if len(p) > 3 else ""}' for s, p in list(clashes.items())[:5]]
        raise RunError(f'{len(clashes)} output name(s) would be written by more than one video:\n  '
                       + '\n  '.join(lines) + '\nrename the videos or extract the folders into separate --out')
    return jobs, missing


# -------------------------------------------------------------------------------------------- model

def load_feature_model(name: str, random_weights: bool = False, checkpoint: Optional[str] = None,
                       weights_file: Optional[str] = None, seed: int = 0) -> Tuple[torch.nn.Module, dict]:
    """The kit's model loading (pretrained, checkpoint, source file or seeded random weights), in eval mode;
    random weights record their seed."""
    model, weights = load_model(name, pretrained=not random_weights, checkpoint=checkpoint,
                                weights_file=weights_file, seed=seed)
    if weights['kind'] == 'random':
        weights['seed'] = seed
    return model.eval(), weights


def model_description(name: str, model: torch.nn.Module, weights: dict, layer: str) -> dict:
    return {'name': name, 'class': type(model).__name__, 'weights': weights,
            'state_dict_sha256': weights_fingerprint(model), 'layer_module': resolve_layer(model, layer)}


def run_identity(model_info: dict, settings: FeatureSettings, fmt: str, fast_path: bool = True,
                 precision: Optional[RunPrecision] = None) -> dict:
    """What the arrays depend on: a resumed run must match it, and every sidecar carries its hash. The
    precision, and on CUDA whether float32 used TF32 (off CPU there is no such switch: no key); with the JPEG
    round trip, the ffmpeg that made the JPEGs (version, sha256). Not whether the network was compiled (decided
    per attempt by the work left, within 1e-5 relative of eager in float32): each sidecar records that."""
    network = {'fast_path': fast_path, 'precision': precision.name if precision else 'fp32'}
    if precision is not None and precision.tf32 is not None:
        network['tf32'] = precision.tf32
    identity = {'format_version': FORMAT_VERSION, 'model': model_info['name'],
                'state_dict_sha256': model_info['state_dict_sha256'], 'layer_module': model_info['layer_module'],
                'settings': settings.identity(), 'array_format': fmt, 'network': network}
    if settings.jpeg_roundtrip:
        from eval.data.jpeg_roundtrip import ffmpeg_identity, require_ffmpeg
        ffmpeg = ffmpeg_identity(require_ffmpeg())
        identity['ffmpeg'] = {'version': ffmpeg['version'], 'sha256': ffmpeg['sha256'], 'command': ffmpeg['command']}
    return identity


def snippets_per_forward(settings: FeatureSettings, batch_size: Optional[int], device: torch.device) -> int:
    """Whole snippets (all their crops) per forward pass: --batch-size clips, else the engine's default,
    and never less than one snippet."""
    return max(1, (batch_size or default_batch_size(device)) // settings.crops)


# ----------------------------------------------------------------------------------- Python API

def extract(model: Union[str, torch.nn.Module], path: str, preset: str = 'i3d-r50-10crop', *,
            device: Optional[Union[str, torch.device]] = None, batch_size: Optional[int] = None,
            fast_path: bool = True, compile: Optional[bool] = False, precision: str = 'fp32', tf32: bool = False,
            **overrides) -> Tuple[np.ndarray, dict]:
    """Features of one video (file or frame folder) and their description (the sidecar the CLI writes).
    ``precision``/``tf32``: as --precision / --tf32.

    ``model``: a zoo model, or a zoo name (its pretrained weights are loaded). ``overrides``: any of
    snippet, stride, tail, align, crops, crop_size, resize, norm, fps, layer, lookahead, naming, layout.
    Raises ShortVideoError (too short under --tail drop), VideoDecodeError (unreadable), UnknownLayerError.
    """
    settings = resolve_settings(preset, **overrides)
    if isinstance(model, str):
        name = model
        model, weights = load_feature_model(name)
    else:
        name = getattr(getattr(model, 'pretrained_cfg', None), 'architecture', None) or type(model).__name__
        weights = {'kind': 'given', 'source': None}
    device = resolve_device(device)
    run_precision = resolve_precision(precision, device, tf32=tf32)
    info = model_description(name, model, weights, settings.layer)
    per_forward = snippets_per_forward(settings, batch_size, device)
    decision = decide_compile(compile, device, run_precision.name, unsupported=feature_compile_problem(model, settings.layer))
    net = prepare_feature_model(model, settings.layer, device, fast_path, run_precision, decision,
                                per_forward * settings.crops)
    pixels = normalisation(settings, getattr(model, 'pretrained_cfg', None))
    job = VideoJob(0, output_stem(path, 'stem'), path, output_stem(path, settings.naming))
    accumulator, video = FeatureAccumulator(), None
    with job_backend(device, run_precision):
        for chunk in stream_video_checked(job, settings, per_forward):
            video = accumulator.add(chunk, run_chunk(net, chunk, settings, pixels, device)) or video
    array = arrange(video.features, settings)
    sidecar = build_sidecar(video, array, f'{job.stem}.npy', sha256_bytes(array_bytes(array, 'npy')), settings,
                            run_identity(info, settings, 'npy', fast_path, run_precision), info)
    sidecar['compile'] = compile_record(net, decision)
    return array, sidecar


# -------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m eval.features', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='a folder of videos / frame folders (searched recursively), '
                                                 'one video file, or a list file (one path per line)')
    p.add_argument('--out', required=True, help='output folder (resumed when it holds a run of this configuration)')
    p.add_argument('--preset', default='i3d-r50-10crop', choices=sorted(PRESETS),
                   help='i3d-r50-10crop (default), i3d-inception, dense')
    k = p.add_argument_group('settings (default: the preset\'s)')
    k.add_argument('--snippet', type=int, help='frames per snippet (window)')
    k.add_argument('--stride', type=int, help='frames between the starts (centres) of consecutive snippets')
    k.add_argument('--tail', choices=('drop', 'pad', 'loop', 'zero'),
                   help='the end of the video: drop a partial snippet, pad it with the last frame, loop to '
                        'the start, or zero frames')
    k.add_argument('--align', choices=('start', 'centre'), help='windows start at k*stride, or are centred on it')
    k.add_argument('--lookahead', type=int, help='(--tail drop) frames needed after a window for it to count')
    k.add_argument('--crops', type=int, choices=(1, 3, 5, 10), help='1 centre, 3 along the long side, 5, 10 (5 + mirrored)')
    k.add_argument('--crop-size', type=int, help='crop side in pixels')
    k.add_argument('--resize', help='WxH (exact, LANCZOS), a short side (bilinear), or none; :filter overrides')
    k.add_argument('--norm', choices=('minus1-1', 'caffe2', 'model'), help='[-1, 1], Caffe2 mean/std, or the model\'s')
    k.add_argument('--fps', type=float, help=FPS_HELP.format(default="the preset's: native"))
    k.add_argument('--layer', help='pre_logits (default), res2..res5 / layer1..4, Mixed_*: globally pooled')
    k.add_argument('--naming', choices=('name', 'stem', 'stem_rgb'), help='output file name rule')
    k.add_argument('--layout', choices=('snippets-first', 'channels-first'), help='array axis order')
    k.add_argument('--jpeg-roundtrip', action=argparse.BooleanOptionalAction, default=None,
                   help='read video files as ffmpeg -i VIDEO -start_number 0 %%d.jpg then the JPEGs, as the public '
                        '10-crop tool does (default: on in i3d-r50-10crop, off elsewhere; the pinned ffmpeg of '
                        'imageio-ffmpeg, or $ZOO_FFMPEG)')
    p.add_argument('--format', choices=ARRAY_FORMATS, default='npy', help='npy (default) or npz (key "features")')
    p.add_argument('--hdf5', action='store_true',
                   help=f'also write the whole run as one HDF5 file, <out>/{HDF5} (needs h5py), assembled from the '
                        'per-video files at the end of the run; rebuilt by every later run in that folder')
    add_model_flags(p, model_help="a zoo model name (default: the preset's model)")
    p.add_argument('--batch-size', type=int, help='clips per forward pass, rounded down to whole snippets of '
                                                  'all crops, at least one snippet (default: one snippet)')
    p.add_argument('--threads', type=int, help='torch CPU threads per rank')
    add_precision_flags(p, 'fp32 (default, exact), or bf16 / fp16: the network in that precision, the pooling in '
                           'float32 (faster; bf16 features within 2e-2 relative of fp32 on real clips: docs/features.md)')
    add_execution_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = ' '.join(['python -m eval.features'] + argv)
    return run_job(lambda ctx, console: _run(resolve_flags(args, command), ctx, console), args.device,
                   args.dist_timeout, keep_heap=True)


@dataclass(frozen=True)
class FeatureConfig:
    """The flags of a feature run, checked and resolved once (the preset merged with its overrides): every
    phase reads this record, never the argparse namespace."""
    data: str
    out: str
    settings: FeatureSettings
    model: str                      # the zoo name: --model, else the preset's
    random_weights: bool
    checkpoint: Optional[str]
    weights_file: Optional[str]
    seed: int
    format: str
    hdf5: bool
    batch_size: Optional[int]
    threads: Optional[int]
    workers: Optional[int]
    device: Optional[str]
    no_fast_path: bool
    compile: Optional[bool]          # --compile / --no-compile; None: eval.kit.compiling's rule
    max_failed: float
    retry_failed: bool
    no_progress: bool
    command: str
    precision: str = 'fp32'
    tf32: bool = False


def resolve_flags(args: FeatureConfig, command: str) -> FeatureConfig:
    """The namespace -> the frozen record; flag values no rule can repair raise RunError."""
    try:
        settings = resolve_settings(args.preset, **{k: getattr(args, k) for k in OVERRIDABLE})
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from e
    if not 0 <= args.max_failed <= 1:
        raise RunError(f'--max-failed is a fraction between 0 and 1, got {args.max_failed}')
    if settings.jpeg_roundtrip:
        from eval.data.jpeg_roundtrip import require_ffmpeg
        try:
            require_ffmpeg()
        except ValueError as e:
            raise RunError(str(e)) from e
    if args.hdf5 and not hdf5_available():
        raise RunError('--hdf5 needs h5py, which is not installed: pip install h5py (or this project\'s "hdf5" extra)')
    return FeatureConfig(
        data=args.data, out=args.out, settings=settings, model=args.model or PRESETS[args.preset].model,
        random_weights=args.random_weights, checkpoint=args.checkpoint, weights_file=args.weights_file,
        seed=args.seed, format=args.format, hdf5=args.hdf5, batch_size=args.batch_size, threads=args.threads,
        workers=args.workers, device=args.device, no_fast_path=args.no_fast_path, compile=args.compile,
        max_failed=args.max_failed, retry_failed=args.retry_failed, no_progress=args.no_progress, command=command,
        precision=args.precision, tf32=args.tf32)


@dataclass
class FeatureRun:
    """What resolving the flags decided: settings, videos, model and the run's identity."""
    settings: FeatureSettings
    jobs: List[VideoJob]
    missing: List[VideoJob]
    data_desc: str
    name: str
    model: torch.nn.Module
    model_info: dict
    identity: dict
    pixels: PixelNormalizer          # the network's input: channel order, mean and std (stream.normalisation)
    precision: RunPrecision          # --precision and --tf32 resolved for the device

    @property
    def identity_sha256(self) -> str:
        return identity_sha256(self.identity)


def resolve_run(config: FeatureConfig, ctx: DistContext, device: torch.device) -> FeatureRun:
    """Videos, model (loaded once), identity; every problem found before any work."""
    settings = config.settings
    try:
        precision = resolve_precision(config.precision, device, tf32=config.tf32)
    except ValueError as e:
        raise RunError(str(e)) from e
    fail_together(ctx, probe_writable(config.out))                    # before loading anything
    records, data_desc = read_inputs(config.data)
    jobs, missing = make_jobs(records, settings)
    if config.threads:
        torch.set_num_threads(config.threads)
    name = config.model
    model, weights = load_feature_model(name, config.random_weights, config.checkpoint, config.weights_file, config.seed)
    try:
        model_info = model_description(name, model, weights, settings.layer)
        pixels = normalisation(settings, getattr(model, 'pretrained_cfg', None))
    except (UnknownLayerError, ValueError) as e:
        raise RunError(str(e)) from e
    problem = clip_size_problem(name, getattr(model, 'pretrained_cfg', None), settings.snippet, settings.crop_size)
    if problem and model_info['layer_module'] is None:       # a stage's output is pooled whatever its size
        raise RunError(f'--snippet {settings.snippet} / --crop-size {settings.crop_size}: {problem}')
    identity = run_identity(model_info, settings, config.format, not config.no_fast_path, precision)
    return FeatureRun(settings, jobs, missing, data_desc, name, model, model_info, identity, pixels, precision)


def open_out(config: FeatureConfig, run: FeatureRun, ctx: DistContext) -> None:
    """One configuration per --out: the manifest written by the first run, compared by every later one."""
    def claim() -> Optional[str]:
        manifest = {'kind': 'features', 'identity': run.identity,
                    'info': {'preset': run.settings.preset, 'sources': list(run.settings.sources),
                             'data': config.data, 'torch': torch.__version__, 'weights': run.model_info['weights']}}
        return claim_run_dir(config.out, manifest, what='features')
    decide_on_main(ctx, claim, 'checking the output folder')


@dataclass
class FeaturePlan:
    done: Dict[int, dict]           # job index -> sidecar of a finished, verified video
    failed: Dict[int, dict]         # job index -> an earlier run's failure record, kept (no --retry-failed)
    retried: int                    # earlier failures tried again
    todo: List[VideoJob]            # what is left, all ranks
    mine: List[VideoJob]            # this rank's share of it


def plan_work(config: FeatureConfig, run: FeatureRun, ctx: DistContext) -> FeaturePlan:
    """Finished videos (array verified against its sidecar; each rank hashes a share) and earlier failures,
    agreed by every rank; what is left is sharded round-robin."""
    local = {}
    for job in shard(run.jobs, ctx.rank, ctx.world_size):          # each rank verifies a share of the arrays
        sidecar = finished_sidecar(config.out, job.stem, config.format, run.identity_sha256)
        failure = None if sidecar else recorded_failure(config.out, job.stem, run.identity_sha256)
        if sidecar or failure:
            local[job.index] = (True, sidecar) if sidecar else (False, failure)
    finished = agree_on_finished(ctx, local)
    keys = [job.index for job in run.jobs]
    todo, mine, retried = remaining_work(ctx, range(len(run.jobs)), keys, finished, config.retry_failed)
    done = {i: v for i, (ok, v) in finished.items() if ok}
    failed = {} if config.retry_failed else {i: v for i, (ok, v) in finished.items() if not ok}
    return FeaturePlan(done, failed, retried, [run.jobs[i] for i in todo], [run.jobs[i] for i in mine])


def print_header(console: Console, config: FeatureConfig, run: FeatureRun, plan: FeaturePlan, device, workers: int,
                 per_forward: int, ctx: DistContext) -> None:
    s, weights = run.settings, run.model_info['weights']
    console.say('=' * 100)
    console.say(f'model    {run.name} ({weights["kind"]} weights'
                + (f', seed {weights["seed"]}' if weights['kind'] == 'random' else '') + f'), layer {s.layer}'
                + (f' = {run.model_info["layer_module"]}' if run.model_info['layer_module'] else ''))
    console.say(f'preset   {s.preset}: {s.snippet}-frame snippets every {s.stride} ({s.align}, tail {s.tail}), '
                f'{s.crops} crop(s) of {s.crop_size}, resize {s.resize}, norm {s.norm}, fps {s.fps or "native"}')
    console.say(f'data     {run.data_desc}: {len(run.jobs)} to extract'
                + (f', {len(run.missing)} missing' if run.missing else ''))
    console.say(f'device   {device}{f" on each of {ctx.world_size} ranks" if ctx.distributed else ""}, '
                f'{per_forward} snippet(s) x {s.crops} crop(s) per forward, {workers} decode workers'
                + (', eager' if config.no_fast_path else '')
                + f', {run.precision.name}' + {True: ', TF32 allowed', False: ', TF32 off', None: ''}[run.precision.tf32])
    if plan.done or plan.failed or plan.retried:
        console.say(f'resume   {len(plan.done)} videos already finished in {config.out} (arrays verified), '
                    + (f'{plan.retried} failed earlier and tried again, ' if plan.retried else '')
                    + (f'{len(plan.failed)} failed earlier and kept failed (--retry-failed tries them again), '
                       if plan.failed else '') + f'{len(plan.todo)} to do')
    if weights['kind'] == 'random':
        console.say('note     RANDOM WEIGHTS: the features mean nothing; a pipeline check only')
    elif weights.get('note'):
        console.say(f'weights  {weights["note"]}')
    console.say(RULE, flush=True)


def _run(config: FeatureConfig, ctx: DistContext, console: Console) -> int:
    started = time.time()
    try:
        device = resolve_device(config.device, ctx)
    except ValueError as e:
        raise RunError(str(e)) from e
    run = resolve_run(config, ctx, device)
    open_out(config, run, ctx)
    plan = plan_work(config, run, ctx)
    workers = config.workers if config.workers is not None else default_workers(ctx.local_world_size, device)
    per_forward = snippets_per_forward(run.settings, config.batch_size, device)
    decision = features_compile_decision(config, run, plan, device, per_forward, ctx)
    print_header(console, config, run, plan, device, workers, per_forward, ctx)
    console.say(decision.line(), flush=True)
    with job_backend(device, run.precision):
        results, failures, compiled = extract_share(ctx, config, run, device, plan.mine, workers, per_forward,
                                                    decision, console.say)
    gathered = ctx.gather_to_main((results, failures), 'gathering results on rank 0')
    if not ctx.is_main:
        return 0
    for part_results, part_failures in gathered[1:]:
        results.update(part_results)
        failures.update(part_failures)
    failures.update(plan.failed)
    return finish(config, run, plan, results, failures, console, time.time() - started, ctx.world_size,
                  compiled or decision.record())


def features_compile_decision(config: FeatureConfig, run: FeatureRun, plan: FeaturePlan, device: torch.device,
                              per_forward: int, ctx: DistContext) -> CompileDecision:
    """eval.kit.compiling's rule, alike on every rank: the snippets of the videos left (frame counts from the
    containers, read only until the work is known to repay the start), per rank, each crop one clip."""
    s = run.settings
    unsupported = feature_compile_problem(run.model, s.layer)
    if config.compile is not None or unsupported or not plan.todo or config.no_fast_path:
        return decide_compile(config.compile, device, run.precision.name, 0.0 if not plan.todo else None, unsupported,
                              plain_model=config.no_fast_path)
    per_clip = network_flop(PooledFeatures(run.model, None), (1, 3, s.snippet, s.crop_size, s.crop_size))
    if per_clip is None:
        return decide_compile(None, device, run.precision.name, None)
    enough = flop_to_repay(device, run.precision.name) * ctx.world_size
    total = 0.0
    for job in plan.todo:
        total += per_clip * s.crops * planned_snippets(job.path, s)
        if total >= enough:
            break
    return decide_compile(None, device, run.precision.name, total / ctx.world_size)


def planned_snippets(path: str, settings: FeatureSettings) -> int:
    """Snippets of a video by its container's frame count (0 when it cannot be read: its failure comes later)."""
    try:
        frames = open_source(path, fps=settings.fps).num_frames
        return snippet_count(frames, settings.snippet, settings.stride, settings.tail, settings.align,
                             settings.lookahead)
    except Exception:
        return 0


def index_entries(run: FeatureRun, plan: FeaturePlan, results: Dict[int, dict], failures: Dict[int, dict]) -> List[dict]:
    entries = []
    for job in sorted(run.jobs + run.missing, key=lambda j: j.index):
        if job.index in results:
            entries.append(index_entry(job, 'extracted', results[job.index]))
        elif job.index in plan.done:
            entries.append(index_entry(job, 'finished earlier', plan.done[job.index]))
        elif job in run.missing:
            entries.append(index_entry(job, 'missing', reason=job.path))
        elif job.index in failures:
            f = failures[job.index]
            status = 'refused' if f['kind'] == 'short' else 'failed'
            earlier = ' (recorded by an earlier run)' if job.index in plan.failed else ''
            entries.append(index_entry(job, status, reason=f['reason'] + earlier))
        else:
            entries.append(index_entry(job, 'not done', reason='no rank reported it'))
    return entries


def finish(config: FeatureConfig, run: FeatureRun, plan: FeaturePlan, results: Dict[int, dict], failures: Dict[int, dict],
           console: Console, wall: float, world_size: int, compiled: Optional[dict] = None) -> int:
    """The index of the whole run, the last lines, the exit status (the engine's policy)."""
    decode_failed = sum(1 for f in failures.values() if f['kind'] == 'decode')
    refused = sum(1 for f in failures.values() if f['kind'] == 'short')
    finished = len(results) + len(plan.done)
    total = len(run.jobs) + len(run.missing)
    counts = {'videos': total, 'finished': finished, 'extracted_this_run': len(results),
              'finished_earlier': len(plan.done), 'failed': decode_failed, 'refused': refused,
              'missing': len(run.missing), 'failed_earlier_kept': len(plan.failed), 'failed_earlier_retried': plan.retried}
    code, why = exit_verdict({'scored': finished, 'decode_failed': decode_failed, 'refused': refused,
                              'annotated': total}, config.max_failed, done='extracted', record=INDEX)
    entries = index_entries(run, plan, results, failures)
    index = {
        'format_version': FORMAT_VERSION, 'preset': run.settings.preset, 'model': run.model_info,
        'settings': run.settings.identity(), 'network': run.identity['network'],
        'compile': compiled, 'counts': counts,
        'videos': entries,
        'failures': [{'id': e['id'], 'path': e['path'], 'status': e['status'], 'reason': e.get('reason', '')}
                     for e in entries if e['status'] in ('failed', 'refused', 'missing')],
        'exit': {'status': code, 'reason': why or 'ok', 'max_failed': config.max_failed},
        'run': {'world_size': world_size, 'seconds': round(wall, 2), 'host': socket.gethostname(),
                'command': config.command},
    }
    write_json(os.path.join(config.out, INDEX), index)
    hdf5 = hdf5_export(config, index, console)
    for f in index['failures'][:10]:
        console.say(f'  {f["status"]} {f["id"]}: {f["reason"]}')
    if len(index['failures']) > 10:
        console.say(f'  ... {len(index["failures"]) - 10} more in {os.path.join(config.out, INDEX)}')
    console.say(f'outputs  {config.out}/ ({finished} videos: <stem>.{config.format} + <stem>.json; {INDEX}, {MANIFEST}'
                + (f', {FAILED}/' if failures else '') + (f', {hdf5}' if hdf5 else '') + ')')
    console.say(f'done     {finished} of {total} videos have features ({len(results)} extracted now, '
                f'{len(plan.done)} earlier, {decode_failed} failed, {refused} refused, {len(run.missing)} missing) '
                f'in {wall:.1f}s')
    if code:
        console.error(f'{why}; exit status {code}')
    return code


def hdf5_export(config: FeatureConfig, index: dict, console: Console) -> Optional[str]:
    """``features.h5`` when asked (--hdf5) or when the folder already has one (so that it never describes an
    older state of the run); its name, or None."""
    path = os.path.join(config.out, HDF5)
    if not (config.hdf5 or os.path.exists(path)):
        return None
    if not hdf5_available():
        console.error(f'{path} was not rebuilt: h5py is not installed, so it is out of date (it lacks this '
                      'run\'s videos); install h5py and run the command again with --hdf5')
        return None
    header = {k: index[k] for k in ('format_version', 'preset', 'model', 'settings', 'network')}
    count = write_hdf5(config.out, index['videos'], header)
    console.say(f'hdf5     {path}: {count} videos (one group per video, named by its output stem)')
    return HDF5


def _identity(item):
    return item


def extract_share(ctx: DistContext, config: FeatureConfig, run: FeatureRun, device: torch.device, mine: List[VideoJob],
                  workers: int, per_forward: int, decision: CompileDecision,
                  say=print) -> Tuple[Dict[int, dict], Dict[int, dict], Optional[dict]]:
    """Extract this rank's videos; ({job index: sidecar}, {job index: failure record}, the network's compile
    summary or None when there was nothing to do), each video written as it ends."""
    results: Dict[int, dict] = {}
    failures: Dict[int, dict] = {}
    if not mine:
        return results, failures, None
    net = prepare_feature_model(run.model, run.settings.layer, device, not config.no_fast_path, run.precision,
                                decision, per_forward * run.settings.crops, say)
    stream = FeatureStream(mine, run.settings, per_forward)
    loader = decode_loader(stream, device, min(workers, len(mine)), batch_size=None, collate_fn=_identity)
    accumulator = FeatureAccumulator()
    bar = progress_bar(len(mine), 'video', ctx.is_main and not config.no_progress, rank_label(ctx.world_size))
    snippets, start = 0, time.perf_counter()
    for item in loader:
        if isinstance(item, VideoFailure):
            accumulator.drop(item.job.index)
            failures[item.job.index] = record_failure(config.out, item.job, item.kind, item.reason,
                                                      run.identity_sha256)
            bar.update(1)
            continue
        video = accumulator.add(item, run_chunk(net, item, run.settings, run.pixels, device))
        snippets += item.rows.shape[0]
        if video is not None:
            results[video.job.index] = write_video_outputs(config.out, video, run.settings, config.format,
                                                           run.identity, run.model_info, compile_record(net, decision))
            bar.update(1)
        bar.set_postfix_str(f'{snippets / max(time.perf_counter() - start, 1e-9):.2f} snippets/s'
                            + (f', failed {len(failures)}' if failures else ''), refresh=False)
    bar.close()
    return results, failures, compile_summary(net, decision)

