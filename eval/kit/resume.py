"""What a resumed job still has to do: every rank's findings (finished, or failed earlier) merged into one
view that all ranks share, and the rest dealt out round-robin. Scoring (its score store) and feature
extraction (arrays verified against their sidecars) plan their work this way."""
from __future__ import annotations

from typing import Any, Dict, Hashable, List, Sequence, Tuple

from eval.kit.distributed import DistContext, shard

Findings = Dict[Hashable, Tuple[bool, Any]]      # key -> (finished well?, what is known of it)


def agree_on_finished(ctx: DistContext, local: Findings) -> Findings:
    """Every rank's findings merged (each may see a different part of the outputs on disks it does not share);
    a success beats a failure (a later --retry-failed run that succeeded)."""
    merged: Findings = {}
    for part in ctx.all_gather(local, 'agreeing on finished videos'):
        for key, (ok, detail) in part.items():
            if key not in merged or (ok and not merged[key][0]):
                merged[key] = (ok, detail)
    return merged


def remaining_work(ctx: DistContext, candidates: Sequence[int], keys: Sequence[Hashable], finished: Findings,
                   retry_failed: bool) -> Tuple[List[int], List[int], int]:
    """(the candidates left to do over all ranks, this rank's round-robin share of them, how many of them failed
    earlier and are tried again). A failure stays done unless ``retry_failed``."""
    todo = [i for i in candidates if keys[i] not in finished or (retry_failed and not finished[keys[i]][0])]
    retried = sum(1 for i in todo if keys[i] in finished)
    return todo, shard(todo, ctx.rank, ctx.world_size), retried
