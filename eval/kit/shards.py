"""A rank's share of a benchmark test that survives its processes: the manifest that identifies the run,
which videos are left (kit.resume's rule), scoring the share into the durable store, and the merged result
on rank 0 (the run folder's checks are kit.rundir's)."""
from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


from eval.data.records import VideoRecord
from eval.kit.distributed import DistContext
from eval.kit.meter import MultiViewMeter
from eval.kit.resume import agree_on_finished, remaining_work
from eval.kit.loop import EvalResult, Failure, VideoOutcome, evaluate
from eval.kit.store import FAILED, SCORED, ScoreStore, StoredVideo, merge, video_keys
from eval.data.views import ViewSpec


# ------------------------------------------------------------------------------------- identities

def dataset_fingerprint(records: Sequence[VideoRecord]) -> str:
    """sha256 of the ordered (video id, label) list. Paths are left out so that the same set mounted
    elsewhere (another node, a moved copy) is the same dataset, and a video that turns up later is too."""
    text = '\n'.join(f'{r.video_id}\t{r.label}' for r in records)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def build_manifest(*, model_name: str, weights: dict, weights_sha256: str, seed: Optional[int], spec: ViewSpec,
                   aggregation: str, fps: Optional[float], records: Sequence[VideoRecord], num_classes: int,
                   precision: str, fast_path: bool, info: dict) -> dict:
    """``identity`` is what a resumed run must match; ``info`` (batch size, world size, command...) may change."""
    weights_identity = {'kind': weights['kind'], 'state_dict_sha256': weights_sha256}
    if weights['kind'] == 'random':
        weights_identity['seed'] = seed
    return {
        'identity': {
            'model': model_name,
            'weights': weights_identity,
            'views': {'spatial_crops': spec.spatial_crops, 'temporal_clips': spec.temporal_clips,
                      'frames': spec.num_frames, 'sampling_rate': spec.sampling_rate, 'scale': spec.scale,
                      'crop': spec.crop_size, 'aggregation': aggregation, 'fps': fps},
            'dataset': {'videos': len(records), 'sha256': dataset_fingerprint(records)},
            'num_classes': num_classes,
            'precision': precision,
            'fast_path': fast_path,
        },
        'info': dict(info, weights_source=weights.get('source')),
    }


# ------------------------------------------------------------------------------------- pre-flight







# ------------------------------------------------------------------------------------- the work

@dataclass
class ShardReport:
    """What one rank did in this attempt (gathered on rank 0 for the summary)."""
    rank: int
    host: str
    assigned: int = 0
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    store_file: str = ''
    compile: Optional[dict] = None    # eval.kit.compiling.compile_summary of this rank's network


@dataclass
class Plan:
    keys: List[str]
    done: Dict[str, str]              # key -> status, known from earlier attempts (all ranks agree)
    todo: List[int]                   # record indices to score in this attempt, over all ranks
    mine: List[int]                   # this rank's share of ``todo``
    retried_failed: int = 0


def plan_work(ctx: DistContext, store: ScoreStore, records: Sequence[VideoRecord], retry_failed: bool) -> Plan:
    """Which videos remain, agreed by all ranks (each may see a different part of the store on non-shared
    disks), and this rank's share. Failed videos are done unless ``retry_failed``; missing videos (no path)
    are never scored: the result lists them from their records."""
    keys = video_keys([r.video_id for r in records])
    local, _ = store.load()
    wanted = set(keys)
    finished = {k: v for k, v in agree_on_finished(ctx, {k: (v.status == SCORED, None) for k, v in local.items()}).items()
                if k in wanted}
    found = [i for i, r in enumerate(records) if r.path is not None]
    todo, mine, retried = remaining_work(ctx, found, keys, finished, retry_failed)
    return Plan(keys, {k: SCORED if ok else FAILED for k, (ok, _) in finished.items()}, todo, mine, retried)


def score_shard(ctx: DistContext, store: ScoreStore, plan: Plan, model, records, config, progress: bool = False,
                progress_desc: Optional[str] = None, compile_decision=None, say=print) -> ShardReport:
    """Score this rank's share, appending every finished video to this rank's store file as it finishes.
    ``config``: the run's eval.kit.config.RunConfig."""
    report = ShardReport(ctx.rank, socket.gethostname(), assigned=len(plan.mine))
    if not plan.mine:
        return report
    writer = store.open_writer(ctx.rank)
    report.store_file = writer.path

    def store_outcomes(outcomes: List[VideoOutcome]) -> None:
        writer.append([StoredVideo(plan.keys[o.index], SCORED if o.scored else FAILED, o.record.label, o.views,
                                   o.prob_sum, o.output_sum, o.reason) for o in outcomes])
        for o in outcomes:
            if o.scored:
                report.scored += 1
            else:
                report.failed += 1

    start = time.perf_counter()
    try:
        result = evaluate(model, records, config, indices=plan.mine, on_results=store_outcomes, progress=progress,
                          progress_desc=progress_desc, compile_decision=compile_decision, say=say)
        report.compile = result.compile
    finally:
        writer.close()
    report.seconds = time.perf_counter() - start
    return report


def collect_on_main(ctx: DistContext, store: ScoreStore, keys: Sequence[str], report: ShardReport):
    """Rank 0: every video's stored record and every rank's report (None elsewhere).

    Rank 0 reads the store; what it cannot see (other nodes' files on a disk it does not share) is sent
    by the ranks that hold it and appended to rank 0's own store, so its --out becomes complete.
    """
    ctx.barrier('waiting for every rank to finish its videos')
    stored, torn = store.load() if ctx.is_main else ({}, 0)
    missing = ctx.broadcast_from_main([k for k in keys if k not in stored] if ctx.is_main else None,
                                      'listing videos rank 0 cannot see')
    supplied: List[StoredVideo] = []
    if missing and not ctx.is_main:
        local, _ = store.load()
        supplied = [local[k] for k in missing if k in local]
    gathered = ctx.gather_to_main((report, supplied), 'gathering scores on rank 0')
    if not ctx.is_main:
        return None
    reports = [r for r, _ in gathered]
    extra = [v for _, videos in gathered[1:] for v in videos]
    if extra:
        writer = store.open_writer(0)
        try:
            writer.append(extra)
        finally:
            writer.close()
        merge(extra, stored)
    return stored, reports, torn


def result_from_store(records: Sequence[VideoRecord], keys: Sequence[str], stored: Dict[str, StoredVideo],
                      config) -> EvalResult:
    """The run's result rebuilt from stored records only, so a resumed run and an uninterrupted one give
    exactly the same scores (the float64 view sums are stored bit for bit). ``config``: the RunConfig."""
    spec = config.spec
    meter = MultiViewMeter(len(records), spec.num_views, config.num_classes, aggregation=config.request.aggregate)
    failures = []
    for i, (record, key) in enumerate(zip(records, keys)):
        meter.set_label(i, record.label)
        video = stored.get(key)
        if record.path is None and (video is None or video.status != SCORED):
            failures.append(Failure(i, record, record.missing or 'no video', missing=True))
        elif video is None:
            failures.append(Failure(i, record, 'no result stored (a rank stopped before scoring it)'))
        elif video.status == SCORED:
            meter.restore(i, video.prob_sum, video.output_sum, video.views)
        else:
            failures.append(Failure(i, record, video.reason))
    return EvalResult(list(records), spec, meter, failures=failures, device=config.device,
                      fully_conv=config.fully_conv, precision=config.precision, fast_path=config.fast_path)


def describe_store_counts(stored: Dict[str, StoredVideo]) -> Dict[str, int]:
    statuses = [v.status for v in stored.values()]
    return {'scored': statuses.count(SCORED), 'failed': statuses.count(FAILED)}

