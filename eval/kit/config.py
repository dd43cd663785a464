"""One resolved configuration per run: the flags merged with the model's pretrained config, once.

``RunRequest`` is what the user asked for (flags, nothing derived). ``resolve_config`` turns it, the chosen
model and the benchmark's class list into a frozen ``RunConfig``; the engine, the FLOP report, the manifest
and the speed benchmarks read that record and never re-derive a rule. Each rule is one function here:
which head runs (``fully_conv_head``), which classes a model scores (``model_class_names``), the view
geometry (``view_spec``), the run folder's name (``default_out_dir``), batch and worker defaults.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

import zoo

from eval.kit.distributed import DEFAULT_TIMEOUT_S, usable_cpus
from eval.kit.runtime import precision_rule, resolve_precision
from eval.data.decode import resolve_fps
from eval.data.views import ViewSpec

AGGREGATIONS = ('softmax', 'logits')
DEFAULT_MAX_FAILED = 0.01


@dataclass(frozen=True)
class RunRequest:
    """The flags of one run, as given (None: not given, a rule decides)."""
    benchmark: str = 'kinetics400'
    model: Optional[str] = None
    data: Optional[str] = None
    annotations: Optional[str] = None
    split: Optional[str] = None
    views: Optional[str] = None
    frames: Optional[int] = None
    rate: Optional[int] = None
    scale: Optional[int] = None
    crop: Optional[int] = None
    fps: Optional[float] = None
    aggregate: str = 'softmax'
    checkpoint: Optional[str] = None
    weights_file: Optional[str] = None
    random_weights: bool = False
    batch_size: Optional[int] = None
    workers: Optional[int] = None
    device: Optional[str] = None
    precision: str = 'fp32'
    tf32: bool = False
    no_fast_path: bool = False
    compile: Optional[bool] = None      # --compile / --no-compile; None: eval.kit.compiling's rule
    seed: int = 0
    retry_failed: bool = False
    max_failed: float = DEFAULT_MAX_FAILED
    dist_timeout: float = DEFAULT_TIMEOUT_S
    max_videos: Optional[int] = None
    out: Optional[str] = None
    cache_dir: Optional[str] = None
    no_flops: bool = False
    no_progress: bool = False
    quiet: bool = False          # errors only, no progress bar: the caller reports the outcome itself
    command: str = ''

    @classmethod
    def from_namespace(cls, args: Any, command: str = '') -> 'RunRequest':
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in known and v is not None}
        return cls(**values, command=command)

    @property
    def demo(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class RunConfig:
    """Everything a run does, decided: the engine reads this and nothing else."""
    request: RunRequest
    model_name: str
    weights: Dict[str, Any]                  # kind (pretrained / checkpoint / random), source, licence, ...
    spec: ViewSpec
    fully_conv: bool
    class_names: Tuple[str, ...] = field(repr=False)
    fps: Optional[float]                     # video files are resampled to this rate (None: native)
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    channel_order: str
    precision: str
    fast_path: bool
    compile: Optional[bool]                  # as requested; the decision: eval.kit.compiling, per run
    batch_size: int
    workers: int
    device: str
    out_dir: str
    stamp: str
    tf32: Optional[bool] = None              # on CUDA, whether float32 may use TF32 (runtime's rule); None elsewhere

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def aggregation(self) -> str:
        return self.request.aggregate

    @property
    def demo(self) -> bool:
        return self.request.demo


# ------------------------------------------------------------------------------------------- the rules

def fully_conv_head(cfg, crop_size: int) -> bool:
    """The Caffe2 fully-convolutional test head runs when the crop exceeds the training crop (256 > 224):
    tools/test_net_video.py sets CROP_SIZE = JITTER_SCALES[0] with TEST_FULLY_CONV. The crops decide, for every
    model: the configs carry no head flag (Inception-I3D's published test, a centre 224 crop, runs the plain
    head by this rule; a larger crop of it has no published head and gets the Caffe2 one)."""
    return cfg is not None and crop_size > cfg.crop_size


def model_num_classes(model: torch.nn.Module) -> int:
    """How many classes the model's classifier scores (a new head may differ from its pretrained config)."""
    return getattr(model, 'num_classes', None) or model.pretrained_cfg.num_classes


def model_class_names(cfg) -> Tuple[str, ...]:
    """The names of the classes a model's classifier scores, in its order."""
    if cfg.class_names and len(cfg.class_names) == cfg.num_classes:
        return tuple(cfg.class_names)
    if cfg.label_set == 'kinetics400' and cfg.num_classes == 400:
        return zoo.kinetics400_class_names()
    return tuple(f'class {i}' for i in range(cfg.num_classes))


def parse_views(text: str) -> Tuple[int, int]:
    """'SxT' -> (spatial crops, temporal clips)."""
    try:
        spatial, temporal = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'views must look like SxT (spatial crops x temporal clips), e.g. 3x10; got {text!r}')
    if spatial < 1 or temporal < 1:
        raise ValueError(f'views must be positive, got {text!r}')
    return spatial, temporal


def view_spec(cfg, views: Optional[Tuple[int, int]] = None, frames: Optional[int] = None,
              rate: Optional[int] = None, scale: Optional[int] = None, crop: Optional[int] = None) -> ViewSpec:
    """The views run: the model's published test unless ``views`` is given; fields overridable."""
    return ViewSpec.from_cfg(cfg, tuple(views or cfg.test_views), frames=frames, rate=rate, scale=scale, crop=crop)


def clip_size_problem(model_name: str, cfg, frames: int, crop: int) -> Optional[str]:
    """Why clips of ``frames`` x ``crop`` x ``crop`` are too small for the model (its config's minimum input,
    from its pooling), or None."""
    min_frames, min_crop = getattr(cfg, 'min_frames', 1), getattr(cfg, 'min_crop_size', 1)
    if frames >= min_frames and crop >= min_crop:
        return None
    return (f'{model_name} needs clips of at least {min_frames} frames and {min_crop}x{min_crop} pixels (its '
            f'temporal and spatial pooling), this run gives {frames} frames of {crop}x{crop}')


def default_batch_size(device: torch.device) -> int:
    return 8 if device.type == 'cuda' else 2      # on CPU a bigger batch only costs memory


# On the CPU the network's intra-op threads already use every core, so a decode process competes with it: measured
# on a 2-core AMD EPYC (issue 23), one worker bought no speed for feature extraction (467 s vs 463 s, 28,800 frames)
# and cost 0.5-1.1 GB; scoring's decoding is ~5-10% of the network's time per Kinetics video. From this many CPUs per
# rank a core given to decoding costs the network less than intra-op scaling loses there (not measured here).
CPU_WORKER_MIN_CPUS = 8


def default_workers(local_world_size: int, device: Union[str, torch.device, None] = None) -> int:
    """Decode processes per rank. With the network on a GPU: the rank's share of the CPUs minus the one feeding the
    GPU, at most 4 (decoding is then the CPU's whole job). With the network on the CPU: in-process (0) below
    CPU_WORKER_MIN_CPUS CPUs per rank, where a worker only takes cores from the network; above it one worker per
    8 CPUs, at most 2."""
    cpus = usable_cpus() // max(1, local_world_size)
    if device is not None and torch.device(device).type != 'cpu':
        return min(4, max(0, cpus - 1))
    return 0 if cpus < CPU_WORKER_MIN_CPUS else min(2, cpus // CPU_WORKER_MIN_CPUS)


def default_out_dir(model_name: str, spec: ViewSpec, stamp: str) -> str:
    return os.path.join('runs', f'{model_name}-{spec.name}-{stamp}')


def check_request(request: RunRequest) -> None:
    """Flag values no rule can repair, refused before anything is loaded."""
    precision_rule(request.precision)
    if request.aggregate not in AGGREGATIONS:
        raise ValueError(f'--aggregate must be one of {AGGREGATIONS}, got {request.aggregate!r}')
    if not 0 <= request.max_failed <= 1:
        raise ValueError(f'--max-failed is a fraction between 0 and 1, got {request.max_failed}')
    if request.views:
        parse_views(request.views)
    resolve_fps(request.fps, None)


def resolve_config(request: RunRequest, model_name: str, model: torch.nn.Module, weights: Dict[str, Any],
                   class_names: Optional[Sequence[str]], device: torch.device, local_world_size: int,
                   stamp: str, cfg=None) -> RunConfig:
    """The frozen record of the run. ``class_names``: the benchmark's own list (None: the model's); ``cfg``:
    the pretrained config whose rules apply (default the model's)."""
    cfg = cfg if cfg is not None else model.pretrained_cfg
    spec = view_spec(cfg, parse_views(request.views) if request.views else None, request.frames,
                     request.rate, request.scale, request.crop)
    return RunConfig(
        request=request, model_name=model_name, weights=weights, spec=spec,
        fully_conv=fully_conv_head(cfg, spec.crop_size),
        class_names=tuple(class_names) if class_names else model_class_names(cfg),
        fps=resolve_fps(request.fps, cfg.fps), mean=tuple(cfg.mean), std=tuple(cfg.std),
        channel_order=cfg.channel_order,
        precision=resolve_precision(request.precision, device).name, fast_path=not request.no_fast_path,
        tf32=resolve_precision(request.precision, device, tf32=request.tf32).tf32,
        compile=request.compile,
        batch_size=request.batch_size or default_batch_size(device),
        workers=request.workers if request.workers is not None else default_workers(local_world_size, device),
        device=str(device), out_dir=request.out or default_out_dir(model_name, spec, stamp), stamp=stamp)


def library_config(model: torch.nn.Module, spec: ViewSpec, *, cfg=None, device='cpu', **flags) -> RunConfig:
    """The RunConfig of a test run from Python: ``spec``'s views and any RunRequest flag (batch_size, workers,
    precision, aggregate, fps, no_fast_path, compile...), resolved by the same rules as the command line.
    No clip-size check: a library caller may run any model on any views."""
    request = RunRequest(views=spec.name, frames=spec.num_frames, rate=spec.sampling_rate, scale=spec.scale,
                         crop=spec.crop_size, device=str(device), **flags)
    cfg = cfg if cfg is not None else model.pretrained_cfg
    name = getattr(cfg, 'architecture', None) or type(model).__name__
    weights = {'kind': 'given', 'trained': None, 'source': None}
    return resolve_config(request, name, model, weights, None, torch.device(device), 1, stamp='', cfg=cfg)
