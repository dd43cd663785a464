"""The process group of an evaluation launched by torchrun: who this process is, its share of the videos,
and the few collectives the runner needs, each with a timeout so a lost rank never hangs a job."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800.0


class RankFailure(RuntimeError):
    """A collective failed or timed out: another rank died or hangs. The message names what is known."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    control_group: Any = None       # gloo group for objects and monitored barriers (also under NCCL)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------------------- collectives
    def _guard(self, step: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # gloo raises RuntimeError / DistBackendError subclasses; all mean the same here
            raise RankFailure(f'rank {self.rank}: {step} failed after waiting up to {self.timeout_s:g}s: {e}. '
                              'Another rank probably died or hangs (torchrun reports which one).') from e

    def barrier(self, step: str) -> None:
        """Wait for every rank; gloo's monitored barrier names the ranks that did not arrive in time."""
        if not self.distributed:
            return
        self._guard(step, dist.monitored_barrier, group=self.control_group,
                    timeout=datetime.timedelta(seconds=self.timeout_s), wait_all_ranks=True)

    def all_gather(self, value: Any, step: str) -> List[Any]:
        if not self.distributed:
            return [value]
        gathered: List[Any] = [None] * self.world_size
        self._guard(step, dist.all_gather_object, gathered, value, group=self.control_group)
        return gathered

    def gather_to_main(self, value: Any, step: str) -> Optional[List[Any]]:
        if not self.distributed:
            return [value]
        gathered: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        self._guard(step, dist.gather_object, value, gathered, dst=0, group=self.control_group)
        return gathered

    def broadcast_from_main(self, value: Any, step: str) -> Any:
        if not self.distributed:
            return value
        box = [value]
        self._guard(step, dist.broadcast_object_list, box, src=0, group=self.control_group)
        return box[0]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, '') else default


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, use_cuda: Optional[bool] = None) -> DistContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else a 1-process context.

    NCCL carries nothing here (ranks share no tensors), but it is the group GPU users expect; the objects
    and barriers go through a gloo group, the only backend with a monitored barrier.
    """
    ctx = DistContext(rank=_env_int('RANK', 0), world_size=_env_int('WORLD_SIZE', 1),
                      local_rank=_env_int('LOCAL_RANK', 0), local_world_size=_env_int('LOCAL_WORLD_SIZE', 1),
                      timeout_s=timeout_s)
    if not ctx.distributed:
        return ctx
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    timeout = datetime.timedelta(seconds=timeout_s)
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group('nccl', init_method='env://', timeout=timeout)
        ctx.control_group = dist.new_group(backend='gloo', timeout=timeout)
    else:
        dist.init_process_group('gloo', init_method='env://', timeout=timeout)
        ctx.control_group = dist.group.WORLD
        # ranks on one machine share its cores: without this each would start one thread per core
        torch.set_num_threads(max(1, usable_cpus() // ctx.local_world_size))
    return ctx


def shard(items: Sequence[int], rank: int, world_size: int) -> List[int]:
    """Every ``world_size``-th item from ``rank``: each item goes to exactly one rank, none twice, and the
    shares differ by at most one (no padding to equal length, unlike DistributedSampler)."""
    return list(items[rank::world_size])
