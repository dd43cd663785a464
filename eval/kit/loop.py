"""Running a model on the views of a dataset: cut views, batch them across videos, feed the meter.

Generic: any model taking (N, 3, T, H, W) and returning class scores, any Dataset yielding VideoSample /
FailedVideo items (eval.data.records), any ViewSpec. The model's pretrained config supplies the pixel
normalisation; the fully-convolutional Caffe2 head is asked for only when the crop is larger than the
crop the model was trained on (cfg.crop_size). By default the model runs through the exact inference fast
path (zoo.inference: BatchNorm folded, channels_last_3d) in fp32; reduced precision only when asked.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from zoo.inference import PRECISIONS

from eval.kit.config import fully_conv_head, model_class_names
from eval.data.crops import cut, mirrored_frames
from eval.data.decode import resolve_fps
from eval.data.pixels import PixelNormalizer
from eval.data.records import FailedVideo, MultiViewDataset, VideoRecord, VideoSample
from eval.kit.meter import MultiViewMeter
from eval.data.views import ViewSampler, ViewSpec

_AUTOCAST_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def default_device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def iter_views(sample: VideoSample, frames: Optional[torch.Tensor] = None) -> Iterator[Tuple[int, torch.Tensor]]:
    """(view index, uint8 view (T, c, c, 3)) of a sample, clip-major: view v = clip v // S, crop v % S."""
    frames = sample.frames if frames is None else frames
    plan = sample.plan
    mirrored = mirrored_frames(frames, plan.boxes)
    index = torch.as_tensor(plan.clip_index)
    for k in range(index.shape[0]):
        clip_index = index[k].to(frames.device)
        for s, box in enumerate(plan.boxes):
            # crop first (a view; a mirrored crop, of the frames mirrored once), then gather the clip's
            # frames: copies only the crop, not whole frames
            yield k * len(plan.boxes) + s, cut(frames, box, mirrored)[clip_index]


def model_call_kwargs(model: torch.nn.Module, crop_size: int) -> dict:
    """``fully_conv=True`` when eval.kit.config.fully_conv_head says the Caffe2 test head applies."""
    return {'fully_conv': True} if fully_conv_head(getattr(model, 'pretrained_cfg', None), crop_size) else {}


@dataclass
class Failure:
    """A video of the result that was not scored: missing (never found) or failed (found, not decodable)."""
    index: int
    record: VideoRecord
    reason: str
    missing: bool = False


@dataclass
class VideoOutcome:
    """A video finished by the runner: scored (its view sums, as the meter holds them) or failed (why)."""
    index: int
    record: VideoRecord
    scored: bool
    views: int = 0
    prob_sum: Optional[np.ndarray] = None
    output_sum: Optional[np.ndarray] = None
    reason: str = ''


def prepare_model(model: torch.nn.Module, device: torch.device, precision: str = 'fp32', fast_path: bool = True,
                  compile: bool = False) -> torch.nn.Module:
    """The module the runner calls: the zoo fast path (exact in fp32), or the plain eager model."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    from zoo.inference import InferenceModel, prepare_for_inference
    if not fast_path:
        model = model.to(device).eval()
        return torch.compile(model) if compile else model
    if isinstance(model, InferenceModel):
        return model.to(device)
    return prepare_for_inference(model, precision=precision, compile=compile, device=device)


@dataclass
class EvalResult:
    records: List[VideoRecord]
    spec: ViewSpec
    meter: MultiViewMeter
    failures: List[Failure] = field(default_factory=list)
    seconds: float = 0.0
    device: str = 'cpu'
    fully_conv: bool = False
    precision: str = 'fp32'
    fast_path: bool = True

    @property
    def scored(self) -> np.ndarray:
        return self.meter.complete

    def counts(self) -> dict:
        labels = np.array([r.label for r in self.records], dtype=np.int64)
        scored = self.scored
        missing = sum(f.missing for f in self.failures)
        return {'annotated': len(self.records), 'scored': int(scored.sum()), 'failed': len(self.failures),
                'missing': missing, 'decode_failed': len(self.failures) - missing,
                'labelled': int((labels >= 0).sum()), 'labelled_scored': int(((labels >= 0) & scored).sum())}


def _identity(item):
    return item


class ViewBatcher:
    """Views of consecutive videos share forward passes of up to ``batch_size`` views; each video is reported
    (``report``) as soon as its last view is scored. ``autocast_dtype``: the eager model's reduced precision
    (the fast path applies its own)."""

    def __init__(self, model, call_kwargs: dict, normalise: PixelNormalizer, meter: MultiViewMeter,
                 records: Sequence[VideoRecord], report: Callable[[List[VideoOutcome]], None], batch_size: int,
                 device: torch.device, autocast_dtype: Optional[torch.dtype]):
        self.model, self.call_kwargs, self.normalise, self.meter = model, call_kwargs, normalise, meter
        self.records, self.report, self.batch_size = records, report, batch_size
        self.device, self.autocast_dtype = device, autocast_dtype
        self.views: List[torch.Tensor] = []
        self.videos: List[int] = []

    def add(self, video: int, view: torch.Tensor) -> None:
        self.views.append(view)
        self.videos.append(video)
        if len(self.views) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.views:
            return
        x = self.normalise(torch.stack(self.views))
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            out = self.model(x, **self.call_kwargs)
        meter = self.meter
        meter.add(self.videos, out.float().cpu().numpy())
        finished = [v for v in dict.fromkeys(self.videos) if meter.view_count[v] == meter.num_views]
        self.views.clear()
        self.videos.clear()
        self.report([VideoOutcome(v, self.records[v], True, int(meter.view_count[v]), meter.prob_sum[v].copy(),
                                  meter.output_sum[v].copy()) for v in finished])


def _show_progress(bar, meter: MultiViewMeter, failed: int) -> None:
    top1 = meter.running_top1()
    status = f'top1 {100 * top1:.1f}%' if top1 is not None else 'top1 -'
    bar.set_postfix_str(status + (f', failed {failed}' if failed else ''), refresh=False)


def evaluate(model: torch.nn.Module, records: Sequence[VideoRecord], spec: ViewSpec, *,
             cfg=None, batch_size: int = 8, workers: int = 0, device: Optional[torch.device] = None,
             aggregation: str = 'softmax', fps: Optional[float] = None,
             progress: bool = True, dataset: Optional[torch.utils.data.Dataset] = None,
             precision: str = 'fp32', fast_path: bool = True, compile: bool = False,
             num_classes: Optional[int] = None, fully_conv: Optional[bool] = None,
             indices: Optional[Sequence[int]] = None,
             on_results: Optional[Callable[[List[VideoOutcome]], None]] = None,
             progress_desc: Optional[str] = None) -> EvalResult:
    """Score every record (or only those at ``indices``) with ``spec``'s views; missing or unreadable videos
    end up in ``failures``.

    Views of consecutive videos share a batch of up to ``batch_size`` views. ``cfg`` (default: the model's
    pretrained_cfg) gives the normalisation; ``fps`` resamples video files (default cfg.fps).
    ``precision`` 'fp32' (default), 'bf16' or 'fp16'; ``num_classes`` and ``fully_conv`` default to the rules
    of eval.kit.config for the model's config;
    ``fast_path=False`` runs the model as given (eager); ``compile`` wraps it in torch.compile.
    ``on_results`` receives each group of videos as they finish (after every forward pass that completes
    one, and at once for a failure), so a caller can store them durably while the run goes on.
    """
    from tqdm import tqdm

    cfg = cfg if cfg is not None else model.pretrained_cfg
    device = torch.device(device) if device is not None else default_device()
    fps = resolve_fps(fps, cfg.fps)
    records = list(records)
    dataset = dataset if dataset is not None else MultiViewDataset(records, ViewSampler(spec), fps=fps)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))   # items keep their index into ``records``
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_identity, pin_memory=device.type == 'cuda')
    meter = MultiViewMeter(len(records), spec.num_views, num_classes or len(model_class_names(cfg)),
                           aggregation=aggregation)
    normalise = PixelNormalizer.from_cfg(cfg)
    if fully_conv is None:
        fully_conv = fully_conv_head(getattr(model, 'pretrained_cfg', None), spec.crop_size)
    call_kwargs = {'fully_conv': True} if fully_conv else {}
    model = prepare_model(model, device, precision, fast_path, compile)
    result = EvalResult(records, spec, meter, device=str(device), fully_conv=bool(call_kwargs),
                        precision=precision, fast_path=fast_path)
    report = on_results or (lambda outcomes: None)

    batcher = ViewBatcher(model, call_kwargs, normalise, meter, records, report, batch_size, device,
                          _AUTOCAST_DTYPES.get(precision) if not fast_path else None)
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), unit='video', disable=not progress, dynamic_ncols=True, mininterval=1.0,
               desc=progress_desc)
    with torch.inference_mode():
        for item in loader:
            if isinstance(item, FailedVideo):
                result.failures.append(Failure(item.index, item.record, item.reason))
                report([VideoOutcome(item.index, item.record, False, reason=item.reason)])
            else:
                meter.set_label(item.index, item.record.label)
                for _, view in iter_views(item, item.frames.to(device, non_blocking=True)):
                    batcher.add(item.index, view)
            bar.update(1)
            _show_progress(bar, meter, len(result.failures))
        batcher.flush()
    bar.close()
    result.seconds = time.perf_counter() - start
    return result
