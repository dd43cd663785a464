"""FVD between two sets of videos (or saved statistics) under a named protocol: the fourth job of the kit.

    python -m eval.fvd --real /data/ucf101/videos --fake samples/ --protocol stylegan-v-16f --out runs/fvd
    python -m eval.fvd --real /data/ucf101/videos --save-stats ucf101-16f.npz --protocol stylegan-v-16f
    python -m eval.fvd --real ucf101-16f.npz --fake samples/ --out runs/fvd     # stats refused if protocols differ
    torchrun --nproc_per_node 8 -m eval.fvd ...                                 # the same number as one process

--real / --fake: a folder of videos (searched recursively), one video, a list file, or a statistics file
(.npz written by --save-stats). Every video's embedding goes into the run folder's durable store as it is
computed (eval.kit.store), so the same command again resumes; embeddings never depend on which rank or
batch computed them, so any number of processes gives the same statistics. ``fvd.json`` holds the number,
the protocol's one-line description (to cite), the counts and every failure.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from converters.file_io import atomic_write
from eval.data.records import DataNotFound, VideoRecord, find_videos
from eval.kit.compiling import CompileDecision, compile_record, decide_compile, network_flop
from eval.kit.config import DEFAULT_MAX_FAILED, default_workers
from eval.kit.console import RULE, Console, progress_bar, rank_label
from eval.kit.distributed import DistContext
from eval.kit.flags import add_execution_flags, add_model_flags
from eval.kit.job import RunError, decide_on_main, exit_verdict, fail_together, run_job
from eval.kit.meter import softmax
from eval.kit.report import json_safe
from eval.kit.rundir import claim_run_dir, probe_writable
from eval.kit.runtime import PRECISION_NAMES, decode_loader, resolve_device
from eval.kit.shards import ShardReport, collect_on_main, plan_work
from eval.kit.store import FAILED, SCORED, ScoreStore, StoredVideo
from eval.fvd.clips import SETS, Clip, ClipJob, ClipStream, batches, sample_videos
from eval.fvd.embed import FVD_MODEL, Embedder
from eval.fvd.frechet import Stats, statistics
from eval.fvd.metric import FVDResult, distance_of
from eval.fvd.protocols import CLIPS, COVARIANCES, OVERRIDABLE, PROTOCOLS, RESIZES, SCALINGS, SQRTS, Protocol, \
    resolve_protocol
from eval.fvd.statsfile import StatsMismatch, load_stats, save_stats

RESULT = 'fvd.json'
STATS_SUFFIX = '.npz'
FLAG_OF = {'seed': 'clip_seed'}          # protocol field -> argparse dest where the names differ


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m eval.fvd', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--real', required=True, help='real videos: folder, video, list file, or a --save-stats .npz')
    p.add_argument('--fake', help='generated videos: folder, video, list file, or a statistics .npz')
    p.add_argument('--protocol', default='original', choices=list(PROTOCOLS), help='default: original')
    p.add_argument('--save-stats', help='write the real set\'s statistics (mu, sigma, N, protocol, network) here')
    p.add_argument('--save-fake-stats', help='write the fake set\'s statistics here')
    p.add_argument('--out', help='run folder (resumed when it holds a run of this configuration; default '
                                 'runs/fvd-<protocol>-<time>)')
    k = p.add_argument_group('protocol settings (default: the protocol\'s; a changed one is named <protocol>+custom)')
    k.add_argument('--frames', help='frames per clip')
    k.add_argument('--step', type=int, help='take every step-th frame')
    k.add_argument('--clip', choices=list(CLIPS), help='where a clip starts in a longer video')
    k.add_argument('--resize', choices=list(RESIZES), help='the resize to the network\'s input')
    k.add_argument('--size', type=int, help='the network input side (224)')
    k.add_argument('--scaling', choices=list(SCALINGS), help='0..255 -> [-1, 1], in this order of operations')
    k.add_argument('--covariance', choices=list(COVARIANCES))
    k.add_argument('--sqrt', choices=list(SQRTS), help='svd (tensorflow-gan) or sqrtm (scipy)')
    k.add_argument('--num-videos', help="videos per set, drawn without replacement (seeded); 'all': every video")
    k.add_argument('--clip-seed', type=int, help='seed of --num-videos sampling and random clip starts (default 0)')
    k.add_argument('--fps', type=float, help='resample video files to this rate (default: native; 0: native)')
    add_model_flags(p, model_help=f'the embedding network (default {FVD_MODEL}: the network FVD is defined with)')
    p.add_argument('--precision', choices=PRECISION_NAMES, default='fp32',
                   help='fp32 (default: the protocol\'s numbers); bf16 / fp16 are faster and recorded as such')
    p.add_argument('--batch-size', type=int, help='clips per forward pass (default 4 on CPU, 8 on CUDA; a last partial '
                                                  'batch is padded, so embeddings never depend on it)')
    p.add_argument('--threads', type=int, help='torch CPU threads per rank')
    add_execution_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None, keep_heap: bool = True) -> int:
    """The command line; ``keep_heap`` False for a caller that must not change its process's allocator."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = ' '.join(['python -m eval.fvd'] + argv)
    return run_job(lambda ctx, console: _run(args, command, ctx, console), args.device, args.dist_timeout,
                   keep_heap=keep_heap)


def resolve_args(args: argparse.Namespace) -> Protocol:
    """The protocol of the flags; flag values no rule can repair raise RunError (exit 2)."""
    overrides = {}
    for name in OVERRIDABLE:
        value = getattr(args, FLAG_OF.get(name, name))
        if name in ('frames', 'num_videos') and value is not None and value != 'all':
            try:
                value = int(value)
            except ValueError:
                raise RunError(f'--{name.replace("_", "-")} {value!r}: expected a whole number or all') from None
        overrides[name] = value
    try:
        protocol = resolve_protocol(args.protocol, **overrides)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from e
    if protocol.frames is None:
        raise RunError('--frames all: video files need a clip length (frames=all is for tensors in Python)')
    if not args.fake and not args.save_stats:
        raise RunError('nothing to do: give --fake (to compute an FVD) or --save-stats (to save the real set\'s '
                       'statistics)')
    if not 0 <= args.max_failed <= 1:
        raise RunError(f'--max-failed is a fraction between 0 and 1, got {args.max_failed}')
    return protocol


# ------------------------------------------------------------------------------------------- the sets

@dataclass
class VideoSet:
    """One side of the comparison: a statistics file, or videos to embed (``jobs``, in set order)."""
    name: str
    source: str
    stats: Optional[Stats] = None
    jobs: List[ClipJob] = dataclasses.field(default_factory=list)
    missing: List[Tuple[str, str]] = dataclasses.field(default_factory=list)   # (path or id, reason)
    found: int = 0                  # videos found before --num-videos sampling
    desc: str = ''


def is_stats_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(STATS_SUFFIX)


def read_set(name: str, source: str, protocol: Protocol, first_index: int) -> VideoSet:
    """The videos of --real / --fake (sampled when the protocol takes a fixed number); RunError when none."""
    try:
        records, desc = find_videos(source)
        positions = sample_videos(len(records), protocol.num_videos, protocol.seed, name)
    except (DataNotFound, ValueError) as e:
        raise RunError(f'--{name} {source}: {e}') from e
    chosen = [records[i] for i in positions]
    jobs = [ClipJob(first_index + k, name, int(pos), r.path) for k, (pos, r) in
            enumerate((p, r) for p, r in zip(positions, chosen) if r.path is not None)]
    missing = [(r.video_id, r.missing or 'missing') for r in chosen if r.path is None]
    return VideoSet(name, source, jobs=jobs, missing=missing, found=len(records), desc=desc)


def open_sets(args, protocol: Protocol, embedder: Embedder) -> Dict[str, VideoSet]:
    sets = {}
    for name in SETS:
        source = getattr(args, name)
        if source is None:
            continue
        if is_stats_file(source):
            try:
                stats = load_stats(source, protocol, embedder.identity())
            except (StatsMismatch, ValueError) as e:
                raise RunError(f'--{name}: {e}') from e
            sets[name] = VideoSet(name, source, stats=stats, desc=f'statistics file {source} (N = {stats.n})')
        else:
            first = sum(len(s.jobs) for s in sets.values())
            sets[name] = read_set(name, source, protocol, first)
    if args.save_stats and sets['real'].stats is not None:
        raise RunError('--save-stats saves statistics of real videos; --real is already a statistics file')
    if args.save_fake_stats and (args.fake is None or sets['fake'].stats is not None):
        raise RunError('--save-fake-stats needs --fake videos')
    return sets


def all_jobs(sets: Dict[str, VideoSet]) -> List[ClipJob]:
    return [job for s in sets.values() for job in s.jobs]


def job_records(jobs: Sequence[ClipJob]) -> List[VideoRecord]:
    """The store's records: one per clip, keyed '<set>/<position in the set>' (unique, stable across runs)."""
    return [VideoRecord(f'{job.set}/{job.position}', job.path, SETS.index(job.set)) for job in jobs]


# ---------------------------------------------------------------------------------------- the work

def run_manifest(protocol: Protocol, embedder: Embedder, sets: Dict[str, VideoSet]) -> dict:
    """``identity``: what a resumed run must match (protocol, network, each set's videos by their paths
    relative to the set's source, so a moved data set still resumes); ``info`` may change."""
    def videos_sha256(vs: VideoSet) -> str:
        base = vs.source if os.path.isdir(vs.source) else os.path.dirname(vs.source)
        text = '\n'.join(os.path.relpath(job.path, base) for job in vs.jobs)
        return hashlib.sha256(text.encode('utf-8')).hexdigest()

    network = {k: v for k, v in embedder.identity().items() if k != 'weights'}
    videos = {n: {'count': len(s.jobs), 'sha256': videos_sha256(s)} for n, s in sets.items() if s.stats is None}
    return {'kind': 'fvd', 'identity': {'protocol': protocol.identity(), 'network': network, 'videos': videos},
            'info': {'protocol_name': protocol.name, 'sources': {n: os.path.abspath(s.source) for n, s in sets.items()},
                     'weights': embedder.weights, 'torch': torch.__version__}}


def _identity(item):
    return item


def embed_share(ctx: DistContext, store: ScoreStore, mine: List[ClipJob], embedder: Embedder, protocol: Protocol,
                workers: int, batch_size: int, show: bool) -> ShardReport:
    """Embed this rank's clips, appending each batch's embeddings (and failures) to this rank's store file."""
    report = ShardReport(ctx.rank, socket.gethostname(), assigned=len(mine))
    if not mine:
        return report
    writer = store.open_writer(ctx.rank)
    report.store_file = writer.path
    loader = decode_loader(ClipStream(mine, protocol), embedder.device, min(workers, len(mine)), batch_size=None,
                           collate_fn=_identity)
    bar = progress_bar(len(mine), 'video', show, rank_label(ctx.world_size))
    start = time.perf_counter()
    try:
        for clips, failures in batches(iter(loader), batch_size):
            records = [StoredVideo(f'{f.job.set}/{f.job.position}', FAILED, SETS.index(f.job.set), 0,
                                   reason=f'{f.kind}: {f.reason}') for f in failures]
            if clips:
                emb = embedder(torch.stack([c.pixels for c in clips])).astype(np.float64)
                records += [StoredVideo(f'{c.job.set}/{c.job.position}', SCORED, SETS.index(c.job.set), 1,
                                        softmax(e), e, reason=f'frames {c.frames[0]}..{c.frames[1]}')
                            for c, e in zip(clips, emb)]
            writer.append(records)
            report.scored += len(clips)
            report.failed += len(failures)
            bar.update(len(records))
            bar.set_postfix_str(f'{report.scored / max(time.perf_counter() - start, 1e-9):.2f} clips/s'
                                + (f', failed {report.failed}' if report.failed else ''), refresh=False)
    finally:
        writer.close()
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class SetOutcome:
    stats: Optional[Stats]
    embedded: int
    refused: List[Tuple[str, str]]
    failed: List[Tuple[str, str]]
    missing: List[Tuple[str, str]]
    clips: List[Tuple[str, str]] = dataclasses.field(default_factory=list)     # (path, 'frames a..b') per video


def set_outcome(vs: VideoSet, stored: Dict[str, StoredVideo], protocol: Protocol) -> SetOutcome:
    """A set's statistics from the store (its embeddings in set order: independent of ranks and batches)."""
    if vs.stats is not None:
        return SetOutcome(vs.stats, vs.stats.n, [], [], [])
    rows, refused, failed, clips = [], [], [], []
    for job in vs.jobs:
        video = stored.get(f'{job.set}/{job.position}')
        if video is None:
            failed.append((job.path, 'no embedding stored (a rank stopped before it)'))
        elif video.status == SCORED:
            rows.append(video.output_sum.astype(np.float32))
            clips.append((job.path, video.reason))
        else:
            kind, _, reason = video.reason.partition(': ')
            (refused if kind == 'short' else failed).append((job.path, reason))
    stats = statistics(np.stack(rows), protocol.covariance) if len(rows) >= 2 else None
    return SetOutcome(stats, len(rows), refused, failed, list(vs.missing), clips)


# ---------------------------------------------------------------------------------------- the run

def fvd_compile_decision(requested, embedder: Embedder, protocol, plan, ctx: DistContext) -> CompileDecision:
    """eval.kit.compiling's rule, alike on every rank: one forward per clip left, the largest rank's share."""
    flop = None
    if requested is None:
        frames = protocol.frames or 16
        per_clip = network_flop(embedder.model, (1, 3, frames, 224, 224))
        flop = None if per_clip is None else per_clip * -(-len(plan.todo) // ctx.world_size)
    return decide_compile(requested, embedder.device, embedder.precision.name, flop, plain_model=not embedder.fast_path)


def _run(args, command: str, ctx: DistContext, console: Console) -> int:
    started = time.time()
    protocol = resolve_args(args)
    out = args.out or os.path.join('runs', f'fvd-{protocol.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}')
    fail_together(ctx, probe_writable(out))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, ctx)          # under torchrun: this rank's GPU
        embedder = Embedder(args.model or FVD_MODEL, device=device, precision=args.precision,
                            fast_path=not args.no_fast_path, checkpoint=args.checkpoint,
                            weights_file=args.weights_file, random_weights=args.random_weights, seed=args.seed,
                            batch_size=args.batch_size)
    except ValueError as e:
        raise RunError(str(e)) from e
    sets = open_sets(args, protocol, embedder)
    jobs = all_jobs(sets)
    records = job_records(jobs)
    decide_on_main(ctx, lambda: claim_run_dir(out, run_manifest(protocol, embedder, sets), what='an FVD run'),
                   'checking the output folder')
    store = ScoreStore(out)
    plan = plan_work(ctx, store, records, args.retry_failed)
    batch_size = embedder.batch_size
    workers = args.workers if args.workers is not None else default_workers(ctx.local_world_size, embedder.device)
    if embedder.compile_decision is None:
        embedder.set_compile(fvd_compile_decision(args.compile, embedder, protocol, plan, ctx), console.say)
    print_header(console, protocol, embedder, sets, plan, out, batch_size, workers)
    console.say(embedder.compile_decision.line(), flush=True)
    report = embed_share(ctx, store, [jobs[i] for i in plan.mine], embedder, protocol, workers, batch_size,
                         ctx.is_main and not args.no_progress)
    collected = collect_on_main(ctx, store, plan.keys, report)
    if not ctx.is_main:
        return 0
    stored, _, _ = collected
    outcomes = {name: set_outcome(vs, stored, protocol) for name, vs in sets.items()}
    return finish(args, command, protocol, embedder, sets, outcomes, out, console, time.time() - started,
                  ctx.world_size)


def print_header(console: Console, protocol: Protocol, embedder: Embedder, sets: Dict[str, VideoSet], plan, out: str,
                 batch_size: int, workers: int) -> None:
    weights = embedder.weights
    console.say('=' * 100)
    console.say(f'protocol {protocol.describe(embedder.describe())}')
    console.say(f'network  {embedder.name} ({weights["kind"]} weights), {embedder.precision.name}, '
                f'{"fast path" if embedder.fast_path else "eager"}, '
                f'device {embedder.device}, {batch_size} clip(s) per forward, {workers} decode workers')
    for name, vs in sets.items():
        extra = '' if vs.stats is not None or len(vs.jobs) == vs.found else f', {len(vs.jobs) + len(vs.missing)} drawn'
        console.say(f'{name:<8} {vs.desc}{extra}' + (f', {len(vs.missing)} missing' if vs.missing else ''))
    done = len(plan.done)
    if done:
        console.say(f'resume   {done} clips already in {out}/store, {len(plan.todo)} to do')
    if weights['kind'] == 'random':
        console.say('note     RANDOM WEIGHTS: the distance means nothing; a pipeline check only')
    elif protocol.name.endswith('+custom') or embedder.precision.name != 'fp32' or embedder.name != FVD_MODEL:
        console.say('note     not a preset protocol on its network in fp32: cite the description above, not the '
                    'protocol name alone')
    console.say(RULE, flush=True)


def counts_of(outcomes: Dict[str, SetOutcome]) -> dict:
    total = {'embedded': 0, 'refused': 0, 'failed': 0, 'missing': 0}
    per_set = {}
    for name, o in outcomes.items():
        per_set[name] = {'embedded': o.embedded, 'refused': len(o.refused), 'failed': len(o.failed),
                         'missing': len(o.missing)}
        for key in total:
            total[key] += per_set[name][key]
    return {'total': total, 'sets': per_set}


def finish(args, command: str, protocol: Protocol, embedder: Embedder, sets: Dict[str, VideoSet],
           outcomes: Dict[str, SetOutcome], out: str, console: Console, wall: float, world_size: int) -> int:
    """Statistics files, the distance, fvd.json, the last lines and the exit status."""
    counts = counts_of(outcomes)
    total = counts['total']
    code, why = exit_verdict({'scored': total['embedded'], 'decode_failed': total['failed'],
                              'refused': total['refused'],
                              'annotated': sum(total.values())}, args.max_failed, done='embedded', record=RESULT)
    short = [n for n, o in outcomes.items() if o.stats is None]
    if short and not code:
        code, why = 1, f'the {" and ".join(short)} set has fewer than 2 embedded videos: no statistics'
    paths = write_stats_files(args, protocol, embedder, sets, outcomes, out, console)
    result = None
    if 'fake' in outcomes and not short:
        result = distance_of(outcomes['real'].stats, outcomes['fake'].stats, protocol, embedder.describe())
    write_result(out, protocol, embedder, outcomes, counts, result, paths, code, why, command, wall, world_size)
    print_outcome(console, protocol, outcomes, result, out)
    if code:
        console.error(f'{why}; exit status {code}')
    return code


def write_stats_files(args, protocol: Protocol, embedder: Embedder, sets: Dict[str, VideoSet],
                      outcomes: Dict[str, SetOutcome], out: str, console: Console) -> Dict[str, str]:
    """Every embedded set's statistics in the run folder, and where --save-stats / --save-fake-stats ask."""
    paths = {}
    for name, o in outcomes.items():
        if sets[name].stats is not None or o.stats is None:
            continue
        extra = {'source': os.path.abspath(sets[name].source), 'num_videos_found': sets[name].found}
        targets = [os.path.join(out, f'{name}_stats.npz')]
        asked = args.save_stats if name == 'real' else args.save_fake_stats
        if asked:
            targets.append(asked)
        for path in targets:
            save_stats(path, o.stats, protocol, embedder.identity(), extra)
        paths[name] = targets[-1]
        if asked:
            console.say(f'stats    {name} set: N = {o.stats.n} written to {asked}')
    return paths


def write_result(out: str, protocol: Protocol, embedder: Embedder, outcomes: Dict[str, SetOutcome], counts: dict,
                 result: Optional[FVDResult], paths: Dict[str, str], code: int, why: str, command: str, wall: float,
                 world_size: int) -> None:
    failures = [{'set': n, 'path': p, 'status': status, 'reason': r} for n, o in outcomes.items()
                for status, items in (('refused', o.refused), ('failed', o.failed), ('missing', o.missing))
                for p, r in items]
    doc = {'fvd': None if result is None else float(result),
           'trusted': None if result is None else result.trusted,
           'notes': [] if result is None else result.notes,
           'description': protocol.describe(embedder.describe()) if result is None else result.description,
           'terms': None if result is None else {'mean': result.distance.mean_term, 'trace': result.distance.trace_term,
                                                 'imaginary_dropped': result.distance.imaginary,
                                                 'min_eigenvalues': list(result.distance.min_eigenvalues)},
           'protocol': {'name': protocol.name, **protocol.identity(), 'sources': list(protocol.sources)},
           'network': embedder.identity(), 'compile': compile_record(embedder.net, embedder.compile_decision)
           if embedder.compile_decision else None, 'counts': counts, 'stats_files': paths, 'failures': failures,
           'videos': [{'set': n, 'path': p, 'clip': c} for n, o in outcomes.items() for p, c in o.clips],
           'exit': {'status': code, 'reason': why or 'ok'},
           'run': {'world_size': world_size, 'seconds': round(wall, 2), 'command': command, 'torch': torch.__version__}}
    with atomic_write(os.path.join(out, RESULT), 'w', encoding='utf-8') as f:
        json.dump(json_safe(doc), f, indent=1, ensure_ascii=False)


def print_outcome(console: Console, protocol: Protocol, outcomes: Dict[str, SetOutcome], result: Optional[FVDResult],
                  out: str) -> None:
    for name, o in outcomes.items():
        problems = o.refused + o.failed + o.missing
        console.say(f'{name:<8} {o.embedded} videos in the statistics' +
                    (f'; {len(o.refused)} refused, {len(o.failed)} failed, {len(o.missing)} missing' if problems else ''))
        for path, reason in problems[:5]:
            console.say(f'  {path}: {reason}')
    if result is not None:
        for note in result.notes:
            console.say(f'note     {note}')
        console.say(f'FVD      {float(result):.4f}' + ('' if result.trusted else '  (UNRELIABLE: see the notes)'))
        console.say(f'cite     {result.description}')
    console.say(f'outputs  {out}/{RESULT}')
