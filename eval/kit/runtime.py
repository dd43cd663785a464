"""Where and in what precision a job runs, decided once for every job (scoring, features, fine-tuning): the
precision table, the device a rank uses, the backend switches of a job on CUDA, and the host-to-device copy.

    device = resolve_device(args.device, ctx)                          # cuda:LOCAL_RANK under torchrun
    precision = resolve_precision(args.precision, device, training=True)
    with job_backend(device, precision):                               # TF32, cudnn.benchmark: CUDA only
        with precision.autocast():
            logits = net(normalise(to_device(clips, device)))
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Iterator, Optional, Tuple, Union

import torch

from eval.kit.distributed import DistContext

ANY_DEVICE = None


@dataclass(frozen=True)
class PrecisionRule:
    """One row of the precision table.

    Inference applies ``dtype`` in one of two ways: the zoo fast path casts the backbone's weights once
    (zoo.inference.prepare_for_inference, head kept in float32), the eager model (--no-fast-path) runs under
    autocast. Training runs the forward pass and the loss under autocast; ``scaler``: a GradScaler scales
    the loss (fp16 gradients underflow without one). ``tf32``: on CUDA, float32 matmuls and convolutions may
    round their inputs to TF32 (10-bit mantissa): not for fp32, which must compute what the CPU computes, unless
    the user asks (--tf32: faster on Ampere and later, about 1e-3 relative); allowed for the 16-bit precisions,
    whose float32 remainder (the head, the loss) already follows 16-bit activations.
    """
    name: str
    dtype: torch.dtype
    inference_devices: Optional[Tuple[str, ...]]     # device types; ANY_DEVICE: every one
    training_devices: Optional[Tuple[str, ...]]
    scaler: bool
    tf32: bool

    def allows(self, device: torch.device, training: bool) -> bool:
        devices = self.training_devices if training else self.inference_devices
        return devices is ANY_DEVICE or device.type in devices


PRECISION_TABLE: Dict[str, PrecisionRule] = {rule.name: rule for rule in (
    PrecisionRule('fp32', torch.float32, ANY_DEVICE, ANY_DEVICE, scaler=False, tf32=False),
    PrecisionRule('bf16', torch.bfloat16, ANY_DEVICE, ANY_DEVICE, scaler=False, tf32=True),
    # fp16 training needs GradScaler's inf checks and unscaling, which only CUDA gets right (ours: the CPU
    # has bf16, which needs no scaler).
    PrecisionRule('fp16', torch.float16, ANY_DEVICE, ('cuda',), scaler=True, tf32=True),
)}
PRECISION_NAMES: Tuple[str, ...] = tuple(PRECISION_TABLE)     # the --precision choices of every job


@dataclass(frozen=True)
class RunPrecision:
    """A precision resolved for one device and one use (inference or training)."""
    rule: PrecisionRule
    device: torch.device
    training: bool
    tf32_requested: bool = False       # --tf32

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def tf32(self) -> Optional[bool]:
        """Whether float32 matmuls and convolutions may use TF32: the precision's rule, or --tf32; None off CUDA
        (no such setting there): what the outputs record."""
        if self.device.type != 'cuda':
            return None
        return self.rule.tf32 or self.tf32_requested

    @property
    def dtype(self) -> torch.dtype:
        return self.rule.dtype

    @property
    def needs_scaler(self) -> bool:
        return self.training and self.rule.scaler

    def autocast(self) -> ContextManager:
        """Autocast to ``dtype`` on the device (a null context for fp32): training's forward pass and loss,
        and the eager model's inference; the fast path casts its weights instead and needs none."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler:
        """The loss scaler of training, disabled unless the precision needs one (so a checkpoint saves and
        restores its state dict alike in every precision)."""
        return torch.amp.GradScaler('cuda' if self.device.type == 'cuda' else 'cpu', enabled=self.needs_scaler)


def precision_rule(name: str) -> PrecisionRule:
    """The table's row for ``name``; a ValueError names the flag and the allowed values."""
    rule = PRECISION_TABLE.get(name)
    if rule is None:
        raise ValueError(f'--precision must be one of {PRECISION_NAMES}, got {name!r}')
    return rule


def _device_words(device_type: str) -> str:
    return 'a GPU' if device_type == 'cuda' else device_type.upper()


def resolve_precision(name: str, device: Union[str, torch.device], training: bool = False,
                      tf32: bool = False) -> RunPrecision:
    """``name`` checked against the table for ``device`` and the use; a ValueError says what to use instead.
    ``tf32`` (--tf32): allow TF32 on CUDA in fp32 too (the 16-bit precisions allow it anyway)."""
    rule = precision_rule(name)
    device = torch.device(device)
    if not rule.allows(device, training):
        allowed = rule.training_devices if training else rule.inference_devices
        where = ' or '.join(_device_words(d) for d in allowed)
        how = 'with a loss scaler ' if training and rule.scaler else ''
        instead = ' or '.join(r.name for r in PRECISION_TABLE.values()
                              if r.dtype != torch.float32 and r.allows(device, training))
        raise ValueError(f'--precision {name} {"trains" if training else "runs"} {how}on {where} only; on '
                         f'{_device_words(device.type)} use {instead or "fp32"}')
    return RunPrecision(rule, device, training, tf32)


# ------------------------------------------------------------------------------------------- device

def resolve_device(requested: Optional[Union[str, torch.device]] = None,
                   ctx: Optional[DistContext] = None) -> torch.device:
    """The device a job (a rank of it) runs on: ``requested`` (--device) when given, else CUDA when present,
    else the CPU. A bare 'cuda' is this rank's GPU: cuda:LOCAL_RANK under torchrun (``ctx`` distributed),
    else the current one. CUDA asked for without CUDA is a ValueError, not a silent CPU run."""
    text = None if requested is None else str(requested)
    if text is not None and not text.startswith('cuda'):
        try:
            return torch.device(text)
        except RuntimeError as e:
            raise ValueError(f'--device {text!r}: {e}') from e
    if not torch.cuda.is_available():
        if text is None:
            return torch.device('cpu')
        raise ValueError(f'--device {text}: CUDA is not available here (torch.cuda.is_available() is False; '
                         f'torch {torch.__version__}, built for CUDA {torch.version.cuda or "none"}); '
                         'use --device cpu, or leave --device out')
    if text not in (None, 'cuda'):
        return torch.device(text)
    distributed = ctx is not None and ctx.distributed
    return torch.device('cuda', ctx.local_rank if distributed else torch.cuda.current_device())


def pin_memory(device: torch.device) -> bool:
    """The loader's pin_memory: page-locked batches on CUDA, so that ``to_device`` copies them asynchronously."""
    return torch.device(device).type == 'cuda'


def decode_worker_init(worker_id: int) -> None:
    """Every job's DataLoader ``worker_init_fn``: a forked decode worker gives up the kept heap it inherits from the
    job (zoo.heap: large buffers reused, never returned, for the network's activations), which in a worker only
    holds on to the peak of its frame buffers (measured in benchmarks/jobs-*.txt: the per-worker memory)."""
    from zoo.heap import release_freed_memory
    release_freed_memory()


def loader_options(device: torch.device, workers: int) -> dict:
    """The DataLoader arguments every job's decoding shares: its worker count, pinned batches on CUDA, and each
    worker's start (``decode_worker_init``). Jobs build their loader with ``decode_loader``, which adds these."""
    return {'num_workers': workers, 'pin_memory': pin_memory(device),
            'worker_init_fn': decode_worker_init if workers else None}


def forget_dead_shared_storages() -> int:
    """Drop torch.multiprocessing's records of received shared-memory storages that are no longer used; returns how
    many were dropped.

    A batch from a decode worker arrives as shared-memory storages, and torch.multiprocessing keeps a weak
    reference to each in ``reductions.shared_cache`` until 128 have piled up. A weak reference keeps the storage's
    small C++ object allocated after its pages are gone, so every batch leaves a few small blocks behind, placed in
    the holes the network's freed activations left in the job's kept heap (zoo.heap). Those holes then no longer fit
    the next activations and the heap grows: measured on a 30k-frame video with one worker, the job's heap climbed
    from ~600 to 850-1,190 MB in four of five runs; with this called after every batch it levelled off (500-800 MB)
    in all ten runs with one or two workers (docs/performance.md). Nothing to do with no worker; a torch without that
    cache: 0."""
    try:
        from torch.multiprocessing.reductions import shared_cache
    except ImportError:
        return 0
    free = getattr(shared_cache, 'free_dead_references', None)
    lock = getattr(shared_cache, 'lock', None)
    if free is None or lock is None:
        return 0
    with lock:
        before = len(shared_cache)
        free()
        return before - len(shared_cache)


class DecodeLoader(torch.utils.data.DataLoader):
    """A job's DataLoader: with decode workers, each batch's iteration also forgets the shared-memory storages
    of the batches before it (``forget_dead_shared_storages``)."""

    def __iter__(self):
        batches = super().__iter__()
        if not self.num_workers:
            return batches
        return _forgetting(batches)


def _forgetting(batches: Iterator) -> Iterator:
    for batch in batches:
        forget_dead_shared_storages()
        yield batch


def decode_loader(dataset, device: torch.device, workers: int, **kwargs) -> DecodeLoader:
    """The DataLoader of every job's decoding (scoring, features, fine-tuning, FVD): ``loader_options`` for the
    device and worker count, ``kwargs`` the job's own (batching, collation, sampler)."""
    return DecodeLoader(dataset, **kwargs, **loader_options(device, workers))


def to_device(batch: Any, device: torch.device) -> Any:
    """A loader's tensor (or a tuple / list of them) on ``device``: on CUDA a non-blocking copy from pinned
    memory (the uint8 pixels, 4x less than float; normalised on the device); on the CPU the tensors
    themselves, no copy."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device, non_blocking=True)


@contextlib.contextmanager
def job_backend(device: torch.device, precision: RunPrecision, fixed_shapes: bool = True) -> Iterator[None]:
    """The backend switches of a job on CUDA, restored on exit (a job run inside another, fine-tuning's
    validation, leaves the outer one's): TF32 as the precision's rule says, and cudnn.benchmark for a job
    whose shapes are fixed (every job here: one clip or snippet geometry per run) unless deterministic
    algorithms are asked for (benchmarking may pick a different algorithm each run). Nothing on the CPU."""
    if torch.device(device).type != 'cuda':
        yield
        return
    switches = (torch.backends.cuda.matmul, 'allow_tf32'), (torch.backends.cudnn, 'allow_tf32'), \
        (torch.backends.cudnn, 'benchmark')
    saved = [getattr(owner, name) for owner, name in switches]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(precision.tf32)
    torch.backends.cudnn.benchmark = fixed_shapes and not torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        for (owner, name), value in zip(switches, saved):
            setattr(owner, name, value)
