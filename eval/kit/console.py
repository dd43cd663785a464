"""What a run prints: one console (rank 0's), the header before work, the outcome after it."""
from __future__ import annotations

import sys
import time
from typing import List, Optional

from eval.kit.report import top_classes
from eval.data.views import ViewSpec

RULE = '-' * 100


class Console:
    """Prints on rank 0 only; errors go to stderr. A quiet console prints errors only (for a caller that
    reports the outcome in its own words, such as fine-tuning's validation each epoch)."""

    def __init__(self, is_main: bool, quiet: bool = False):
        self.is_main = is_main
        self.quiet = quiet

    def say(self, text: str = '', **kwargs) -> None:
        if self.is_main and not self.quiet:
            print(text, **kwargs)

    def section(self, text: Optional[str]) -> None:
        if text:
            self.say(RULE)
            self.say(text)
        self.say(RULE, flush=True)

    def error(self, text: str, every_rank: bool = False) -> None:
        if self.is_main or every_rank:
            print(f'error: {text}', file=sys.stderr, flush=True)



def progress_bar(total: int, unit: str, enabled: bool, desc: Optional[str] = None, initial: int = 0):
    """The progress bar of every job (rank 0's, when ``enabled``), redrawn at most once a second."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True, mininterval=1.0,
                desc=desc)


def rank_label(world_size: int) -> Optional[str]:
    """The bar's label under torchrun (rank 0 shows its own share), None in a single process."""
    return f'rank 0 of {world_size}' if world_size > 1 else None

def protocol_text(spec: ViewSpec, fully_conv: bool, aggregation: str) -> str:
    clips = ('the centre clip' if spec.temporal_clips == 1 else
             f'{spec.temporal_clips} clips starting at floor(N*k/{spec.temporal_clips})')
    crops = {1: 'the centre crop', 3: '3 crops along the long side (Caffe2 positions)',
             6: '3 crops along the long side and their mirrors'}.get(spec.spatial_crops,
                                                                       f'{spec.spatial_crops} crops along the long side')
    rule = 'view softmax averaged' if aggregation == 'softmax' else 'view outputs (logits) averaged'
    head = 'fully-convolutional head (Caffe2 test)' if fully_conv else 'global-pool head'
    return (f'{spec.name} views: {clips} of {spec.num_frames} frames at rate {spec.sampling_rate} (wrapping), '
            f'short side {spec.scale}, {crops} of {spec.crop_size}; {head}; {rule}')


def weights_text(name: str, weights: dict) -> str:
    if weights['kind'] == 'pretrained':
        origin = weights.get('source_name') or weights.get('source')
        return f'{name}: pretrained weights ({origin}; {weights.get("license") or "licence: see MODEL_CARD.md"})'
    if weights['kind'] == 'checkpoint':
        return f'{name}: weights from checkpoint {weights["source"]}'
    return f'{name}: {weights["note"]}'


def _resume_line(config, plan) -> str:
    failed_before = sum(1 for s in plan.done.values() if s == 'failed')
    retry = config.request.retry_failed
    return (f'resume   {config.out_dir} already holds {len(plan.done)} of {len(plan.keys)} videos '
            f'({len(plan.done) - failed_before} scored, {failed_before} failed'
            + (', retried now (--retry-failed)' if retry and failed_before
               else ', kept failed: --retry-failed tries them again' if failed_before else '')
            + f'); {len(plan.todo)} to score')


def print_header(console: Console, config, prepared, notes: List[str], ctx, decision=None) -> None:
    """Model, views, input, data, device (and resume state) before any work."""
    say, records = console.say, prepared.records
    say('=' * 100)
    say(f'model    {weights_text(config.model_name, config.weights)}')
    for note in notes:
        say(f'         note: {note}')
    say(f'views    {protocol_text(config.spec, config.fully_conv, config.request.aggregate)}')
    say(f'input    {config.channel_order}, 0-255 pixels, mean {config.mean}, std {config.std}'
        + (f', video files resampled to {config.fps:g} fps' if config.fps else ''))
    say(f'data     {prepared.dataset_desc}: {prepared.annotated} listed'
        + (f', first {len(records)} used (--max-videos)' if len(records) != prepared.annotated else '')
        + (f', {sum(r.path is None for r in records)} missing' if any(r.path is None for r in records) else ''))
    say(f'device   {config.device}{f" on each of {ctx.world_size} ranks" if ctx.distributed else ""}, '
        f'batch {config.batch_size} views, {config.workers} loader workers, {config.precision}'
        f'{", fast path" if config.fast_path else ", eager model"}')
    if decision is not None:
        say(decision.line())
    if prepared.plan.done:
        say(_resume_line(config, prepared.plan))
    if not config.weights['trained']:
        say('!' * 100)
        say(f'!! {config.weights["note"]}')
        say('!' * 100)


def _print_predictions(console: Console, config, result) -> None:
    scores = result.meter.video_scores()
    best = top_classes(scores, 5)
    title = 'demo predictions' if config.demo else 'predictions (no labels)'
    console.say(title + ('' if config.weights['trained'] else ' (RANDOM WEIGHTS: meaningless)') + ':')
    shown = [i for i in range(len(result.records)) if result.meter.complete[i]]
    for i in shown[:20]:
        top5 = ', '.join(f'{config.class_names[c]} {scores[i, c]:.2f}' for c in best[i])
        console.say(f'  {result.records[i].video_id:<14} {top5}')
    if len(shown) > 20:
        console.say(f'  ... {len(shown) - 20} more in predictions.csv')


def print_outcome(console: Console, config, prepared, result, summary: dict, paths: dict, started: float) -> None:
    """Predictions (unlabelled data) or accuracy, counts, failures, time and where the outputs are."""
    say, counts, metrics, run = console.say, summary['counts'], summary['metrics'], summary['run']
    say(RULE)
    if not counts['labelled_scored'] and counts['scored']:
        _print_predictions(console, config, result)
    say(f'scored   {counts["scored"]} of {counts["annotated"]} videos'
        + (f' ({prepared.annotated} listed)' if prepared.annotated != counts['annotated'] else '')
        + f', {counts["missing"]} missing, {counts["decode_failed"]} failed to decode (see {paths["failures.csv"]})'
        + (f'; {run["scored_this_run"] + run["failed_this_run"]} done in this run, '
           f'{run["videos_from_earlier_runs"]} from earlier runs' if prepared.plan.done else ''))
    for failure in result.failures[:10]:
        say(f'  {"missing" if failure.missing else "failed"} {failure.record.video_id}: {failure.reason}')
    if len(result.failures) > 10:
        say(f'  ... {len(result.failures) - 10} more in failures.csv')
    if metrics['videos']:
        say(f'accuracy over {metrics["videos"]} labelled videos: top-1 {100 * metrics["top1"]:.2f}%  '
            f'top-5 {100 * metrics["top5"]:.2f}%  mean class {100 * metrics["mean_class_accuracy"]:.2f}%'
            + ('' if config.weights['trained'] else '   <- untrained weights: meaningless'))
    elif counts['scored']:
        say('accuracy: none (no scored video has a label): predictions only, see predictions.csv')
    say(f'time     {summary["seconds"]:.1f}s for {run["scored_this_run"] + run["failed_this_run"]} videos'
        + (f' on {run["world_size"]} ranks' if run['world_size'] > 1 else '')
        + f' ({time.time() - started:.1f}s in all)')
    say(f'outputs  {config.out_dir}/  (summary.json, scores.npz, predictions.csv, failures.csv; store/ and '
        'manifest.json let the same command resume)')
