"""The video-benchmark engine: resolve -> prepare -> score -> gather -> write outputs -> summary.

    exit_code = run(RunRequest(benchmark='ucf101', split='1', data='/data/ucf101', model='i3d_r50', ...))
    exit_code, summary = run_with_summary(request, ctx)      # a job that tests inside it: fine-tuning

Every front end (``python -m eval``, ``python -m eval.kinetics``) only parses flags into a ``RunRequest``
and calls ``run``; the job runner, exit verdict and model loading are the kit's (kit.job, kit.models). Phases never mix: ``resolve`` decides everything once (a frozen ``RunConfig``),
``prepare`` reads the benchmark and opens the run folder, ``score`` runs this rank's share into the durable
store, ``gather`` is the only place ranks meet, and the result is always rebuilt from the store, so a
resumed and an uninterrupted run go through the same code. Exit status: 0 when videos were scored and
decode failures stay within ``--max-failed``; 1 when the run produced nothing useful (outputs are still
written); 2 for bad flags, data or --out found before any work; 3 when a rank failed.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from eval.data.presets import Benchmark, get_benchmark
from eval.kit.config import (RunConfig, RunRequest, check_request, clip_size_problem, model_num_classes,
                             resolve_config)
from eval.kit.console import Console, print_header, print_outcome, protocol_text, rank_label
from eval.data.records import LabelMap, VideoRecord, read_list_file
from eval.kit.distributed import DistContext
from eval.kit.job import RunError, decide_on_main, exit_verdict, fail_together, run_job
from eval.kit.flops import count_flops
from eval.kit.report import json_safe, metrics_over_annotated, write_run
from eval.kit.models import load_model, weights_fingerprint
from eval.kit.rundir import check_free_space, probe_writable
from eval.kit.shards import (Plan, ShardReport, build_manifest, collect_on_main, describe_store_counts, plan_work,
                             result_from_store, score_shard)
from eval.kit.compiling import CompileDecision
from eval.kit.loop import EvalResult, scoring_compile_decision
from eval.kit.runtime import resolve_device
from eval.kit.store import ScoreStore, check_run_dir

@dataclass
class Prepared:
    """What ``prepare`` found: the records to score, the run folder's store and this attempt's plan."""
    records: List[VideoRecord]
    annotated: int
    dataset_desc: str
    store: ScoreStore
    plan: Plan


def _benchmark_classes(request: RunRequest, benchmark: Benchmark) -> Optional[Tuple[str, ...]]:
    if benchmark.classes is None or request.demo:
        return None
    try:
        return benchmark.classes(request.data, request.annotations)
    except (OSError, ValueError) as e:
        raise RunError(str(e)) from e


def _head_size(name: str, request: RunRequest, classes: Optional[Tuple[str, ...]]) -> Optional[int]:
    """The classifier to build: the benchmark's for random weights, else None: the registered one, or a
    checkpoint's own (zoo.create_model reads its size; a checkpoint's head is never replaced, since scoring a
    fresh head would be silently meaningless)."""
    return len(classes) if classes and request.random_weights and not request.checkpoint else None


def _choose_model(request: RunRequest, classes: Optional[Tuple[str, ...]]):
    """(name, model, weights, notes); a benchmark with its own classes needs a head of that size."""
    if request.demo:
        from eval.data.demo import choose_demo_model
        return choose_demo_model(request.model, load_model)
    name = request.model or 'i3d_r50'
    model, weights = load_model(name, pretrained=not request.random_weights, checkpoint=request.checkpoint,
                                weights_file=request.weights_file, num_classes=_head_size(name, request, classes))
    if classes and model_num_classes(model) != len(classes):
        raise RunError(f'{name} scores {model_num_classes(model)} classes, but {request.benchmark} has '
                       f'{len(classes)}: evaluate a checkpoint fine-tuned on it (--checkpoint), or --random-weights')
    return name, model, weights, []


def resolve(request: RunRequest, ctx: DistContext) -> Tuple[RunConfig, torch.nn.Module, List[str]]:
    """Phase 1: the frozen configuration (and the model it names, loaded once)."""
    try:
        check_request(request)
        device = resolve_device(request.device, ctx)
        benchmark = get_benchmark(request.benchmark)
        benchmark.split(request.split)
    except ValueError as e:
        raise RunError(str(e)) from e
    if request.out:
        fail_together(ctx, probe_writable(request.out))
    classes = _benchmark_classes(request, benchmark)
    torch.manual_seed(request.seed)      # random weights are the same in every rank and every attempt
    name, model, weights, notes = _choose_model(request, classes)
    stamp = ctx.broadcast_from_main(datetime.datetime.now().strftime('%Y%m%d-%H%M%S'), 'agreeing on the run name')
    try:
        config = resolve_config(request, name, model, weights, classes, device,
                                ctx.local_world_size, stamp)
    except ValueError as e:
        raise RunError(str(e)) from e
    problem = clip_size_problem(name, model.pretrained_cfg, config.spec.num_frames, config.spec.crop_size)
    if problem:
        raise RunError(f'--frames {config.spec.num_frames} / --crop {config.spec.crop_size}: {problem}')
    if not request.out:
        fail_together(ctx, probe_writable(config.out_dir))
    return config, model, notes


# ------------------------------------------------------------------------------------------- prepare

def read_records(config: RunConfig, ctx: DistContext) -> Tuple[List[VideoRecord], str]:
    """The benchmark's records (the demo set when no --data), labelled in the run's class list."""
    request, labels = config.request, LabelMap(config.class_names)
    if config.demo:
        from eval.data.demo import build_demo_set
        if not ctx.is_main:       # rank 0 builds the demo set first; the others then find it in the cache
            ctx.barrier('building the demo set')
        list_path, _ = build_demo_set(request.cache_dir)
        if ctx.is_main:
            ctx.barrier('building the demo set')
        records = read_list_file(list_path, labels)
        return records, f'embedded demo set {os.path.dirname(list_path)} ({len(records)} clips)'
    benchmark = get_benchmark(request.benchmark)
    try:
        records, desc = benchmark.read(request.data, request.annotations, benchmark.split(request.split), labels)
    except (OSError, ValueError) as e:    # DataNotFound is a ValueError
        raise RunError(f'{e}') from e
    if not records:
        raise RunError(f'no video found: {desc} lists none (looked for {benchmark.title})')
    return records, desc


def manifest_of(config: RunConfig, model: torch.nn.Module, records: List[VideoRecord]) -> dict:
    request = config.request
    return build_manifest(
        model_name=config.model_name, weights=config.weights, weights_sha256=weights_fingerprint(model),
        seed=request.seed, spec=config.spec, aggregation=request.aggregate, fps=config.fps, records=records,
        num_classes=config.num_classes, precision=config.precision, fast_path=config.fast_path,
        info={'created': config.stamp, 'torch': torch.__version__, 'benchmark': request.benchmark,
              'data': request.data, 'annotations': request.annotations, 'split': request.split,
              'max_videos': request.max_videos})


def open_run_dir(config: RunConfig, model: torch.nn.Module, records: List[VideoRecord], ctx: DistContext) -> None:
    """The same configuration as the folder's manifest, or refuse (rank 0 decides, every rank obeys)."""
    decide_on_main(ctx, lambda: check_run_dir(config.out_dir, manifest_of(config, model, records)),
                   'checking the run directory')       # check_run_dir writes the manifest of a new folder


def prepare(config: RunConfig, model: torch.nn.Module, ctx: DistContext) -> Prepared:
    """Phase 2: records, run folder, and which videos this attempt (and this rank) scores."""
    records, desc = read_records(config, ctx)
    annotated = len(records)
    if config.request.max_videos is not None:
        records = records[:config.request.max_videos]
    open_run_dir(config, model, records, ctx)
    store = ScoreStore(config.out_dir)
    plan = plan_work(ctx, store, records, config.request.retry_failed)
    fail_together(ctx, check_free_space(config.out_dir, len(plan.todo) if ctx.is_main else len(plan.mine),
                                        config.num_classes))
    return Prepared(records, annotated, desc, store, plan)


# ------------------------------------------------------------------------------------------- score

def flop_summary(config: RunConfig, model: torch.nn.Module) -> dict:
    spec = config.spec
    report = count_flops(model, spec.num_frames, spec.crop_size, model_name=config.model_name,
                         views=(spec.spatial_crops, spec.temporal_clips), fully_conv=config.fully_conv)
    return {'table': report.table(), 'params': report.params, 'flops_per_view': report.flops_per_view,
            'flops_per_video': report.flops_per_video, 'views': report.views,
            'view_shape': [3, spec.num_frames, spec.crop_size, spec.crop_size], 'counter': 'fvcore (1 MAC = 1 flop)'}


def compile_decision(config: RunConfig, model: torch.nn.Module, prepared: Prepared, ctx: DistContext) -> CompileDecision:
    """eval.kit.compiling's rule, once for every rank alike: the work of the largest rank's share."""
    per_rank = -(-len(prepared.plan.todo) // ctx.world_size)
    return scoring_compile_decision(model, config, per_rank)


def score(config: RunConfig, model: torch.nn.Module, prepared: Prepared, ctx: DistContext,
          decision: CompileDecision, console: Console) -> ShardReport:
    """Phase 3: this rank's share of the videos, each appended to the store as it finishes."""
    return score_shard(ctx, prepared.store, prepared.plan, model, prepared.records, config,
                       progress=ctx.is_main and not (config.request.no_progress or config.request.quiet),
                       progress_desc=rank_label(ctx.world_size), compile_decision=decision, say=console.say)


def gather(ctx: DistContext, prepared: Prepared, report: ShardReport):
    """Phase 4, the only place ranks meet: rank 0 gets every stored video and every rank's report."""
    return collect_on_main(ctx, prepared.store, prepared.plan.keys, report)


# ------------------------------------------------------------------------------------------- outputs

def rank_zero_compile(decision: Optional[CompileDecision], reports: List[ShardReport]) -> Optional[dict]:
    """The run's compile record: rank 0's network when it scored anything (whether compiling held, its start),
    else the decision."""
    own = reports[0].compile if reports and reports[0].compile else None
    return own or (decision.record() if decision else None)


def build_summary(config: RunConfig, prepared: Prepared, result: EvalResult, reports: List[ShardReport],
                  torn: int, stored: dict, flops: Optional[dict], world_size: int,
                  decision: Optional[CompileDecision] = None) -> dict:
    request, spec, plan = config.request, config.spec, prepared.plan
    counts = dict(result.counts(), annotated_total=prepared.annotated)
    wall = max(r.seconds for r in reports)
    done_now = sum(r.scored + r.failed for r in reports)
    code, why = exit_verdict(counts, request.max_failed)
    return json_safe({
        'model': config.model_name, 'weights': config.weights, 'demo': config.demo, 'benchmark': request.benchmark,
        'views': {'spec': spec.name, 'num_views': spec.num_views, 'frames': spec.num_frames,
                  'sampling_rate': spec.sampling_rate, 'scale': spec.scale, 'crop': spec.crop_size,
                  'fully_conv_head': config.fully_conv, 'aggregation': request.aggregate, 'fps': config.fps,
                  'protocol': protocol_text(spec, config.fully_conv, request.aggregate)},
        'data': {'description': prepared.dataset_desc, 'argument': request.data, 'annotations': request.annotations,
                 'split': request.split, 'max_videos': request.max_videos},
        'counts': counts,
        'metrics': result.meter.metrics(),
        'metrics_note': 'fractions over the scored, labelled videos',
        'metrics_over_annotated': metrics_over_annotated(result),
        'metrics_over_annotated_note': 'Caffe2 accounting: every annotated video counts, unscored ones as wrong',
        'flops': {k: v for k, v in flops.items() if k != 'table'} if flops else None,
        'device': config.device, 'precision': config.precision, 'tf32': config.tf32, 'fast_path': config.fast_path,
        'compile': rank_zero_compile(decision, reports),
        'run': {'world_size': world_size, 'videos_from_earlier_runs': len(plan.done) - plan.retried_failed,
                'scored_this_run': sum(r.scored for r in reports), 'failed_this_run': sum(r.failed for r in reports),
                'retried_failed': plan.retried_failed, 'torn_bytes_ignored': torn,
                'stored': describe_store_counts(stored), 'ranks': [vars(r) for r in reports]},
        'seconds': round(wall, 2),
        'videos_per_second': round(done_now / wall, 3) if wall else None,
        'exit': {'status': code, 'reason': why or 'ok', 'max_failed': request.max_failed},
        'command': request.command, 'created': config.stamp, 'torch': torch.__version__,
    })


def finish(config: RunConfig, prepared: Prepared, gathered, flops: Optional[dict], ctx: DistContext,
           console: Console, started: float, decision: Optional[CompileDecision] = None) -> Tuple[int, dict]:
    """Phases 5 and 6 on rank 0: the result rebuilt from the store, the files, the console summary; (exit
    status, summary)."""
    stored, reports, torn = gathered
    result = result_from_store(prepared.records, prepared.plan.keys, stored, config)
    summary = build_summary(config, prepared, result, reports, torn, stored, flops, ctx.world_size, decision)
    paths = write_run(config.out_dir, result, config.class_names, summary)
    print_outcome(console, config, prepared, result, summary, paths, started)
    code, why = summary['exit']['status'], summary['exit']['reason']
    if code:
        console.error(f'{why}; exit status {code}')
    return code, summary


# ------------------------------------------------------------------------------------------- run

def run_phases(request: RunRequest, ctx: DistContext, console: Console) -> Tuple[int, Optional[dict]]:
    started = time.time()
    config, model, notes = resolve(request, ctx)
    prepared = prepare(config, model, ctx)
    decision = compile_decision(config, model, prepared, ctx)
    print_header(console, config, prepared, notes, ctx, decision)
    flops = flop_summary(config, model) if not request.no_flops and ctx.is_main else None
    console.section(flops['table'] if flops else None)
    report = score(config, model, prepared, ctx, decision, console)
    gathered = gather(ctx, prepared, report)
    if not ctx.is_main:
        return 0, None
    return finish(config, prepared, gathered, flops, ctx, console, started, decision)


def run_with_summary(request: RunRequest, ctx: Optional[DistContext] = None,
                     keep_heap: bool = False) -> Tuple[int, Optional[dict]]:
    """Run a benchmark: (exit status, the run's summary.json as a dict on rank 0, None elsewhere or when the
    run stopped before its outputs). Errors are printed, never raised. ``ctx``: the ranks of a job that runs
    this one inside it (fine-tuning's validation and test); ``keep_heap``: see kit.job.run_job."""
    summary: List[Optional[dict]] = [None]

    def body(ctx: DistContext, console: Console) -> int:
        with torch.no_grad():      # scoped, so calling run() in-process leaves autograd as it was
            code, summary[0] = run_phases(request, ctx, console)
            return code
    code = run_job(body, request.device, request.dist_timeout, ctx, quiet=request.quiet, keep_heap=keep_heap)
    return code, summary[0]


def run(request: RunRequest, ctx: Optional[DistContext] = None, keep_heap: bool = False) -> int:
    """Run a benchmark; returns the exit status (errors are printed, never raised)."""
    return run_with_summary(request, ctx, keep_heap)[0]
