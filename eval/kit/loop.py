"""Running a model on the views of a dataset: cut views, batch them across videos, feed the meter.

Generic: any model taking (N, 3, T, H, W) and returning class scores, any Dataset yielding VideoSample /
FailedVideo items (eval.data.records), any ViewSpec. The model's pretrained config supplies the pixel
normalisation; the fully-convolutional Caffe2 head is asked for only when the crop is larger than the
crop the model was trained on (cfg.crop_size). By default the model runs through the exact inference fast
path (zoo.inference: BatchNorm folded, channels_last_3d) in fp32; reduced precision only when asked.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from eval.kit.compiling import CompileDecision, compile_summary, compiled_inference, decide_compile, network_flop
from eval.kit.console import progress_bar
from eval.data.crops import cut, mirrored_frames
from eval.data.pixels import PixelNormalizer
from eval.data.records import FailedVideo, MultiViewDataset, VideoRecord, VideoSample
from eval.kit.meter import MultiViewMeter
from eval.data.views import ViewSampler, ViewSpec
from eval.kit.runtime import job_backend, decode_loader, resolve_precision, to_device


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


def prepare_model(model: torch.nn.Module, device: torch.device, precision: str = 'fp32',
                  fast_path: bool = True) -> torch.nn.Module:
    """The eager module the runner calls: the zoo fast path (exact in fp32; reduced precision casts its weights),
    or the plain eager model (reduced precision: the runner's autocast). Compiling it is eval.kit.compiling's."""
    resolve_precision(precision, device)
    from zoo.inference import InferenceModel, prepare_for_inference
    if not fast_path:
        return model.to(device).eval()
    if isinstance(model, InferenceModel):
        return model.to(device)
    return prepare_for_inference(model, precision=precision, device=device)


def scoring_compile_decision(model: torch.nn.Module, config, videos: int) -> CompileDecision:
    """eval.kit.compiling's rule for a scoring run of ``videos`` videos on this rank: every view one forward of
    the run's clip geometry and head (FLOPs counted on the meta device)."""
    spec = config.spec
    flop = None
    if config.compile is None:
        per_view = network_flop(model, (1, 3, spec.num_frames, spec.crop_size, spec.crop_size),
                                **({'fully_conv': True} if config.fully_conv else {}))
        flop = None if per_view is None else per_view * spec.num_views * videos
    return decide_compile(config.compile, torch.device(config.device), config.precision, flop,
                          plain_model=not config.fast_path)


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
    compile: Optional[dict] = None       # eval.kit.compiling.CompileDecision.record()

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
    (``report``) as soon as its last view is scored. ``model`` takes the stacked uint8 views and normalises them
    itself (eval.kit.compiling.compiled_inference's ``pixels``). ``autocast``: the context of every forward pass
    (the eager model's reduced precision; a null context for the fast path, which applies its own)."""

    def __init__(self, model, call_kwargs: dict, meter: MultiViewMeter,
                 records: Sequence[VideoRecord], report: Callable[[List[VideoOutcome]], None], batch_size: int,
                 device: torch.device, autocast: Callable[[], ContextManager]):
        self.model, self.call_kwargs, self.meter = model, call_kwargs, meter
        self.records, self.report, self.batch_size = records, report, batch_size
        self.device, self.autocast = device, autocast
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
        views = torch.stack(self.views)
        with self.autocast():
            out = self.model(views, **self.call_kwargs)
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


def evaluate(model: torch.nn.Module, records: Sequence[VideoRecord], config, *,
             indices: Optional[Sequence[int]] = None,
             on_results: Optional[Callable[[List[VideoOutcome]], None]] = None,
             progress: bool = False, progress_desc: Optional[str] = None,
             dataset: Optional[torch.utils.data.Dataset] = None,
             compile_decision: Optional[CompileDecision] = None,
             say: Callable[[str], None] = print) -> EvalResult:
    """Score every record (or only those at ``indices``) with the views of ``config``, the run's resolved
    eval.kit.config.RunConfig (views, batch, workers, device, precision, head, classes, normalisation, fps:
    decided there, never here; ``library_config`` makes one from Python). Missing or unreadable videos end up
    in ``failures``. Views of consecutive videos share a batch of up to ``config.batch_size`` views.
    ``on_results`` receives each group of videos as they finish (after every forward pass that completes
    one, and at once for a failure), so a caller can store them durably while the run goes on. ``dataset``
    replaces the decoding (benchmarks time the loop with it). ``compile_decision``: the run's (the engine decides
    it once for all ranks), else eval.kit.compiling's rule for the videos of this call; ``say`` prints its lines.
    """
    spec, device = config.spec, torch.device(config.device)
    run_precision = resolve_precision(config.precision, device, tf32=bool(config.tf32))
    records = list(records)
    dataset = dataset if dataset is not None else MultiViewDataset(records, ViewSampler(spec), fps=config.fps)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))   # items keep their index into ``records``
    loader = decode_loader(dataset, device, config.workers, batch_size=None, shuffle=False, collate_fn=_identity)
    meter = MultiViewMeter(len(records), spec.num_views, config.num_classes, aggregation=config.aggregation)
    normalise = PixelNormalizer(config.mean, config.std, config.channel_order)
    call_kwargs = {'fully_conv': True} if config.fully_conv else {}
    decision = compile_decision or scoring_compile_decision(model, config, len(dataset))
    net = compiled_inference(prepare_model(model, device, config.precision, config.fast_path), decision, device,
                             config.batch_size, say, pixels=normalise)
    result = EvalResult(records, spec, meter, device=str(device), fully_conv=config.fully_conv,
                        precision=config.precision, fast_path=config.fast_path, compile=decision.record())
    report = on_results or (lambda outcomes: None)
    batcher = ViewBatcher(net, call_kwargs, meter, records, report, config.batch_size, device,
                          run_precision.autocast if not config.fast_path else contextlib.nullcontext)
    start = time.perf_counter()
    bar = progress_bar(len(dataset), 'video', progress, progress_desc)
    with torch.inference_mode(), job_backend(device, run_precision):
        for item in loader:
            if isinstance(item, FailedVideo):
                result.failures.append(Failure(item.index, item.record, item.reason))
                report([VideoOutcome(item.index, item.record, False, reason=item.reason)])
            else:
                meter.set_label(item.index, item.record.label)
                for _, view in iter_views(item, to_device(item.frames, device)):
                    batcher.add(item.index, view)
            bar.update(1)
            _show_progress(bar, meter, len(result.failures))
        batcher.flush()
    bar.close()
    result.seconds = time.perf_counter() - start
    result.compile = compile_summary(net, decision)
    return result
