"""How every job of the kit runs and ends: the job runner on every rank, its exit statuses, and the
decisions rank 0 takes for all ranks (a pre-flight problem, the run folder's verdict).

Exit statuses, the same for scoring, feature extraction and fine-tuning: 0 when the job produced what it
was asked for within ``--max-failed``; 1 when it produced nothing useful (outputs still written); 2 for bad
flags, data or --out found before any work; 3 when a rank failed.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from zoo.heap import keep_freed_memory

from eval.kit.console import Console
from eval.kit.distributed import DistContext, RankFailure, init_distributed


class RunError(Exception):
    """A run that cannot start (or cannot be trusted): the message names what is wrong; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def fail_together(ctx: DistContext, error: Optional[str]) -> None:
    """Every rank stops when any rank found a problem (rank 0 says which), so no rank starts work alone."""
    errors = [(rank, e) for rank, e in enumerate(ctx.all_gather(error, 'pre-flight checks')) if e]
    if errors:
        lines = [e if not ctx.distributed else f'rank {rank}: {e}' for rank, e in errors]
        raise RunError('\nerror: '.join(lines) if ctx.is_main else '')


def decide_on_main(ctx: DistContext, decide: Callable[[], Optional[str]], what: str) -> None:
    """Rank 0 takes a decision for every rank (``decide`` returns why the job must stop, or None), the others
    obey: the run folder is claimed this way, so two ranks never write a manifest or disagree on it."""
    verdict = decide() if ctx.is_main else None
    verdict = ctx.broadcast_from_main(verdict, what)
    if verdict:
        raise RunError(verdict if ctx.is_main else '')


def exit_verdict(counts: Dict[str, int], max_failed: float, done: str = 'scored',
                 record: str = 'failures.csv') -> Tuple[int, str]:
    """(exit status, why) of a run over listed videos, for every job the engine runs (scoring, features).

    ``counts``: 'scored' (videos with a result, this run or an earlier one), 'decode_failed', 'annotated'
    (listed) and optionally 'refused' (found and readable but not usable, e.g. too short). Missing and refused
    videos are counted apart; decode failures may be up to ``max_failed`` of the videos found and tried.
    ``done`` is the verb of the job's result, ``record`` the file that lists each failure.
    """
    attempted = counts['scored'] + counts['decode_failed']
    if counts['scored'] == 0 and attempted == 0:
        if counts.get('refused'):
            return 1, f'no video was {done}: the {counts["refused"]} videos found were all refused (see {record})'
        return 1, (f'no video was {done}: none of the {counts["annotated"]} listed videos was found '
                   f'(see {record} for where each was looked for)')
    if counts['scored'] == 0:
        return 1, f'no video was {done}: all {attempted} videos found failed to decode (see {record})'
    fraction = counts['decode_failed'] / attempted
    if fraction > max_failed:
        return 1, (f'{counts["decode_failed"]} of {attempted} videos found failed to decode ({100 * fraction:.1f}%), '
                   f'more than --max-failed {max_failed:g} allows (see {record})')
    return 0, ''


def run_job(body: Callable[[DistContext, Console], int], device: Optional[str], dist_timeout: float,
            ctx: Optional[DistContext] = None, quiet: bool = False, keep_heap: bool = False) -> int:
    """Run ``body(ctx, console)`` on every rank under the kit's exit statuses: its return value, a RunError's
    code (rank 0 prints the message), 3 when a rank failed. Errors are printed, never raised.

    ``ctx`` given: a job run inside another (fine-tuning's evaluations), on the outer job's ranks.
    ``keep_heap``: set the process heap to keep freed memory (zoo.heap; irreversible, so only the command-line
    entry points ask for it, and a job nested in another leaves the heap as the outer job set it)."""
    own = ctx is None
    if keep_heap and own:
        keep_freed_memory()
    if own:
        use_cuda = None if device is None else device.startswith('cuda')
        ctx = init_distributed(dist_timeout, use_cuda=use_cuda)
    console = Console(ctx.is_main, quiet)
    try:
        return body(ctx, console)
    except RunError as e:
        if str(e):
            console.error(str(e))
        return e.code
    except RankFailure as e:
        console.error(str(e), every_rank=True)
        return 3
    finally:
        if own:
            ctx.close()
