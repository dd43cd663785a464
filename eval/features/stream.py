"""Videos -> batches of snippet frames -> pooled features: the decoding stream and the network side.

The decoding side streams each video once, front to back (``eval.data.decode.iter_frames``), resizes each
needed frame once, keeps a frame only until the last snippet that needs it is cut, and hands out chunks:
the distinct frames of a few consecutive snippets and, per snippet, which of them it uses. Memory is a
few snippets, not the video, so a three-hour UCF-Crime video costs what a ten-second one does.
``FeatureStream`` runs that in DataLoader workers (each video in one worker; a failed decode is tried once
more from the start). The network side (``snippet_batch``, ``PooledFeatures``) cuts every crop of every
snippet of a chunk into one batch and runs one forward pass.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, Generator, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from eval.data.crops import GEOMETRY_OF_COUNT, Crop, crop_boxes, cut, mirrored_frames
from eval.data.decode import (FrameCount, FrameFolder, Source, VideoDecodeError, iter_frames, open_source, resize_exact,
                              resize_short_side)
from eval.data.pixels import PixelNormalizer, network_channel_order
from eval.features.presets import NORMS, PRE_LOGITS, FeatureSettings
from eval.data.snippets import ZERO_FRAME, ShortVideoError, SnippetPlan, last_use, plan_snippets
from eval.kit.runtime import RunPrecision, to_device


@dataclass(frozen=True)
class VideoJob:
    """One video to extract: its position in the run, id, path and output stem."""
    index: int
    video_id: str
    path: str
    stem: str


@dataclass
class VideoMeta:
    """What the decoder learnt about a video (sent with its last chunk)."""
    num_frames: int
    fps: Optional[float]
    source_fps: Optional[float]
    source_size: Tuple[int, int]
    size: Tuple[int, int]
    plan: SnippetPlan
    crops: List[Crop]


@dataclass
class SnippetChunk:
    """Snippets first_snippet .. first_snippet + len(rows) - 1 of a video: their distinct frames
    (U, H, W, 3) uint8 and, per snippet, indices into them (ZERO_FRAME for a zero frame)."""
    job: VideoJob
    attempt: int
    first_snippet: int
    frames: torch.Tensor
    rows: torch.Tensor
    meta: Optional[VideoMeta] = None         # set on the last chunk of the video

    @property
    def last(self) -> bool:
        return self.meta is not None

    def pin_memory(self) -> 'SnippetChunk':
        """The DataLoader's pin_memory=True (a CUDA device) calls this: the pixels in page-locked memory."""
        return dataclasses.replace(self, frames=self.frames.pin_memory(), rows=self.rows.pin_memory())


@dataclass
class VideoFailure:
    job: VideoJob
    reason: str
    kind: str            # 'decode' (unreadable: counts against --max-failed) or 'short' (refused by the tail rule)


def _fps(value) -> Optional[float]:
    return float(value) if value else None


def resize_frame(pixels: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    rule = settings.resize_rule
    if rule.kind == 'exact':
        return resize_exact(pixels, rule.height, rule.width, rule.filter)
    if rule.kind == 'short':
        from PIL import Image
        if rule.filter == 'bilinear':
            return resize_short_side(Image.fromarray(pixels), rule.short)      # eval's reference resize
        from eval.data.views import scaled_size
        h, w = scaled_size(pixels.shape[0], pixels.shape[1], rule.short)
        return resize_exact(pixels, h, w, rule.filter)
    return pixels


def snippet_crops(height: int, width: int, settings: FeatureSettings) -> List[Crop]:
    """The crops of a resized frame: --crops N as its named geometry (eval.data.crops)."""
    return crop_boxes(height, width, settings.crop_size, GEOMETRY_OF_COUNT[settings.crops])


def stream_video(job: VideoJob, settings: FeatureSettings, snippets_per_chunk: int, attempt: int, source: Source,
                 n: int) -> Generator[SnippetChunk, None, int]:
    """The chunks of one video planned for ``n`` frames, in order; returns how many frames the decode found.
    When that is not ``n`` the plan was wrong and the last chunk is not yielded (``stream_video_checked``
    streams the video again). Raises VideoDecodeError (unreadable), ShortVideoError (refused)."""
    plan = plan_snippets(n, settings.snippet, settings.stride, settings.tail, settings.align, settings.lookahead)
    free_after = last_use(plan)
    ready = plan.frames.max(axis=1)
    buffer: Dict[int, np.ndarray] = {}
    next_snippet, decoded = 0, 0
    sizes = None
    crops: List[Crop] = []

    def chunk(k0: int, k1: int, meta: Optional[VideoMeta]) -> SnippetChunk:
        rows = plan.frames[k0:k1]
        used = np.unique(rows[rows != ZERO_FRAME])
        local = {int(f): i for i, f in enumerate(used)}
        local_rows = np.vectorize(lambda f: local.get(int(f), ZERO_FRAME), otypes=[np.int64])(rows)
        frames = np.stack([buffer[int(f)] for f in used])
        return SnippetChunk(job, attempt, k0, torch.from_numpy(frames), torch.from_numpy(local_rows), meta)

    def release(upto: int) -> None:
        for f in [f for f in buffer if free_after[f] < upto]:
            del buffer[f]

    pending_from = 0
    if isinstance(source, FrameFolder):   # random access: read only the frames some snippet needs
        frames = ((int(i), source.read([int(i)], None).frames[0]) for i in np.flatnonzero(free_after >= 0))
    else:
        frames = iter_frames(source, scale=None)
    for i, pixels in frames:
        decoded = i + 1
        if i >= n:
            continue                       # counted, never used: the plan is redone below
        if sizes is None:
            sizes = (pixels.shape[:2], None)
        if free_after[i] >= 0:
            buffer[i] = resize_frame(pixels, settings)
            if sizes[1] is None:
                sizes = (sizes[0], buffer[i].shape[:2])
                crops = snippet_crops(*sizes[1], settings)
        while next_snippet < plan.num_snippets and ready[next_snippet] <= i:
            next_snippet += 1
            if next_snippet - pending_from == snippets_per_chunk and next_snippet < plan.num_snippets:
                yield chunk(pending_from, next_snippet, None)
                pending_from = next_snippet
                release(next_snippet)
    if isinstance(source, FrameFolder):
        decoded = n                         # a folder's frame count is exact
    if decoded != n:
        return decoded
    if sizes is None or sizes[1] is None:
        raise VideoDecodeError('no frame could be decoded')
    fps = _fps(source.fps) if getattr(source, 'fps', None) else _fps(getattr(source, 'source_fps', None))
    fps = fps or settings.fps
    meta = VideoMeta(n, fps, _fps(getattr(source, 'source_fps', None)), tuple(sizes[0]), tuple(sizes[1]), plan, crops)
    yield chunk(pending_from, plan.num_snippets, meta)
    return n


def open_feature_source(path: str, settings: FeatureSettings) -> Source:
    """A video file through ffmpeg's JPEGs when the settings ask for the round trip (a frame folder is already
    JPEGs); else eval.data.decode's source."""
    if settings.jpeg_roundtrip and not os.path.isdir(path):
        from eval.data.jpeg_roundtrip import JpegRoundTrip, require_ffmpeg
        if not os.path.exists(path):
            raise VideoDecodeError('file does not exist')
        try:
            return JpegRoundTrip(path, require_ffmpeg())
        except ValueError as e:
            raise VideoDecodeError(str(e)) from e
    return open_source(path, fps=settings.fps)


def stream_video_checked(job: VideoJob, settings: FeatureSettings, snippets_per_chunk: int,
                         attempt: int = 0) -> Iterator[SnippetChunk]:
    """``stream_video`` planned with the true frame count (eval.data.decode.FrameCount): when the container's
    estimate was off, the video is streamed again, as the next attempt, planned with the count decoded."""
    source = open_feature_source(job.path, settings)
    count = FrameCount(source.num_frames)
    while True:
        decoded = yield from stream_video(job, settings, snippets_per_chunk, attempt, source, count.planned)
        if count.settled(decoded):
            return
        attempt += 1


class FeatureStream(torch.utils.data.IterableDataset):
    """Chunks of every job, or a VideoFailure per video that could not be read (never raises).

    In DataLoader workers each worker takes every W-th job and streams its videos one after the other, so
    a video's chunks arrive in order. A video that fails to decode is streamed once more from its start (a
    network file system read can fail once); the consumer drops the chunks of an abandoned attempt (a new
    ``attempt`` number for the same job means: start again).
    """

    attempts = 2

    def __init__(self, jobs: Sequence[VideoJob], settings: FeatureSettings, snippets_per_chunk: int):
        self.jobs = list(jobs)
        self.settings = settings
        self.snippets_per_chunk = snippets_per_chunk

    def __iter__(self) -> Iterator[Union[SnippetChunk, VideoFailure]]:
        info = torch.utils.data.get_worker_info()
        jobs = self.jobs if info is None else self.jobs[info.id::info.num_workers]
        for job in jobs:
            yield from self.video(job)

    def video(self, job: VideoJob) -> Iterator[Union[SnippetChunk, VideoFailure]]:
        reasons = []
        for attempt in range(self.attempts):
            try:
                yield from stream_video_checked(job, self.settings, self.snippets_per_chunk, attempt=2 * attempt)
                return
            except ShortVideoError as e:
                yield VideoFailure(job, str(e), 'short')
                return
            except VideoDecodeError as e:
                reasons.append(str(e))
            except Exception as e:   # a decoder bug must not end a long run; it is listed with its type
                reasons.append(f'{type(e).__name__}: {e}')
        if len(set(reasons)) == 1:
            reason = f'{reasons[0]} (failed {len(reasons)} times)'
        else:
            reason = ' | '.join(f'attempt {k + 1}: {r}' for k, r in enumerate(reasons))
        yield VideoFailure(job, reason, 'decode')


# ------------------------------------------------------------------------------------ the network side

def normalisation(settings: FeatureSettings, cfg=None) -> PixelNormalizer:
    """The network input of a feature run: --norm decides mean and std (NORMS, or the model config's for
    'model'); the channel order is the network's (eval.data.pixels.network_channel_order: the config's, RGB
    without one); ``(x - mean) / std`` divides, the public extractors' correctly rounded [-1, 1]."""
    if settings.norm == 'model':
        if cfg is None:
            raise ValueError('--norm model needs a model with a pretrained_cfg')
        mean, std = cfg.mean, cfg.std
    else:
        mean, std = NORMS[settings.norm]
    return PixelNormalizer(mean, std, network_channel_order(cfg), divide=True)


def snippet_batch(frames: torch.Tensor, rows: torch.Tensor, crops: Sequence[Crop],
                  pixels: PixelNormalizer) -> torch.Tensor:
    """Every crop of every snippet as one network batch (B * C, 3, S, c, c) float32, snippet-major
    (row b * C + j is snippet b, crop j), channels_last_3d in memory.

    Pixels become the network's values (``pixels``, see ``normalisation``); zero frames are zero after that
    scaling. The scaling and the mirroring run once over the snippets' frames (5.8x fewer pixels than 10
    crops of 224 from 340x256), and each crop is copied once, straight into its place in the batch.
    """
    b, s = rows.shape
    zero = rows == ZERO_FRAME
    src = pixels.channels_last_(frames.float()[rows.clamp(min=0)])      # (B, S, H, W, 3)
    if bool(zero.any()):
        src[zero] = 0.0
    mirrored = mirrored_frames(src, crops)
    size = crops[0].size
    out = torch.empty((b, len(crops), s, size, size, 3), dtype=torch.float32, device=src.device)
    for j, crop in enumerate(crops):
        out[:, j] = cut(src, crop, mirrored)
    return out.flatten(0, 1).permute(0, 4, 1, 2, 3)                     # channels innermost: channels_last_3d


RESNET_STAGE_ALIASES = {'res2': 'layer1', 'res3': 'layer2', 'res4': 'layer3', 'res5': 'layer4'}


class UnknownLayerError(ValueError):
    pass


def layer_choices(model: torch.nn.Module) -> List[str]:
    """The names --layer accepts, short list for messages: pre_logits, stage aliases, top-level modules."""
    names = [PRE_LOGITS]
    if hasattr(model, 'stages'):
        names += list(RESNET_STAGE_ALIASES)
    names += [n for n, _ in model.named_children() if n not in ('drop', 'fc', 'logits')]
    return names


def resolve_layer(model: torch.nn.Module, layer: str) -> Optional[str]:
    """The module name a --layer refers to (None for pre_logits); UnknownLayerError names the valid ones."""
    if layer == PRE_LOGITS:
        return None
    name = RESNET_STAGE_ALIASES.get(layer, layer) if hasattr(model, 'stages') else layer
    if name in dict(model.named_modules()) and name:
        return name
    raise UnknownLayerError(
        f'--layer {layer!r}: {type(model).__name__} has no such layer; valid: {", ".join(layer_choices(model))} '
        '(or any submodule name, e.g. layer3.5 / Mixed_4f.branch_0)')


class _Stop(Exception):
    pass


class PooledFeatures(torch.nn.Module):
    """net -> (N, D) features: the pre-logits feature (``forward_head(..., pre_logits=True)``: res5 global
    average pool for the ResNets, Mixed_5c (2, 7, 7) average pool then mean for Inception-I3D), or the
    global (T, H, W) mean of a named layer's output, the rest of the network not run."""

    def __init__(self, net: torch.nn.Module, module_name: Optional[str]):
        super().__init__()
        self.net = net
        self.module_name = module_name

    # forward_features / forward_head / get_classifier: the zoo protocol, so that the fast path's reduced
    # precision (zoo.inference.ReducedPrecisionBody) runs the network in bf16/fp16 and the pooling in float32.
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map that is pooled: the network's last one, or the named layer's output."""
        if self.module_name is None:
            return self.net.forward_features(x)
        box = []

        def grab(module, inputs, output):
            box.append(output)
            raise _Stop

        handle = self.net.get_submodule(self.module_name).register_forward_hook(grab)
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return box[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.module_name is None:
            kwargs = {'fully_conv': False} if 'fully_conv' in self.net.forward_head.__code__.co_varnames else {}
            return self.net.forward_head(x, pre_logits=True, **kwargs)
        return x.float().mean(dim=tuple(range(2, x.dim())))

    def get_classifier(self) -> torch.nn.Module:
        return self.net.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class AutocastFeatures(torch.nn.Module):
    """The eager model (--no-fast-path) in a reduced precision: autocast around it, features in float32."""

    def __init__(self, net: torch.nn.Module, precision: RunPrecision):
        super().__init__()
        self.net = net
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.net(x).float()


def feature_compile_problem(model: torch.nn.Module, layer: str) -> Optional[str]:
    """Why this feature network is not compiled (eval.kit.compiling's ``unsupported``), or None: a named layer is
    read by a forward hook that stops the network, which torch.compile cannot trace."""
    if resolve_layer(model, layer) is not None:
        return f'--layer {layer} is read by a forward hook, which torch.compile does not trace'
    return None


def prepare_feature_model(model: torch.nn.Module, layer: str, device: torch.device, fast_path: bool = True,
                          precision: Optional[RunPrecision] = None, decision=None, batch_size: Optional[int] = None,
                          say=print):
    """The callable that turns a snippet batch into features: the zoo inference fast path (BatchNorm folded,
    channels_last_3d, inference mode; ``precision`` bf16/fp16: the network's weights and activations cast once,
    the pooling in float32) around PooledFeatures, or the eager model (under autocast for bf16/fp16). Default
    fp32. ``decision`` (eval.kit.compiling.CompileDecision): compiled with a fixed batch of ``batch_size`` clips."""
    from eval.kit.compiling import compiled_inference
    name = precision.name if precision is not None else 'fp32'
    module_name = resolve_layer(model, layer)
    wrapped = PooledFeatures(model, module_name)
    wrapped.pretrained_cfg = getattr(model, 'pretrained_cfg', None)
    if not fast_path:
        wrapped = wrapped.to(device).eval()
        net = wrapped if name == 'fp32' else AutocastFeatures(wrapped, precision)
    else:
        from zoo.inference import prepare_for_inference
        net = prepare_for_inference(wrapped, device=device, precision=name)
    return net if decision is None else compiled_inference(net, decision, device, batch_size, say)


@dataclass
class VideoFeatures:
    """The features of one finished video: (K, C, D) float32 and what the decoder learnt."""
    job: VideoJob
    features: np.ndarray
    meta: VideoMeta


class FeatureAccumulator:
    """Collects a video's chunk features in order; a chunk of a newer attempt restarts the video."""

    def __init__(self):
        self.parts: Dict[int, Tuple[int, List[np.ndarray]]] = {}

    def add(self, chunk: SnippetChunk, features: np.ndarray) -> Optional[VideoFeatures]:
        attempt, parts = self.parts.get(chunk.job.index, (chunk.attempt, []))
        if chunk.attempt != attempt:
            attempt, parts = chunk.attempt, []
        if chunk.first_snippet != sum(p.shape[0] for p in parts):
            parts = []   # a restarted stream begins at snippet 0 again
        parts.append(features)
        if chunk.last:
            self.parts.pop(chunk.job.index, None)
            return VideoFeatures(chunk.job, np.concatenate(parts), chunk.meta)
        self.parts[chunk.job.index] = (attempt, parts)
        return None

    def drop(self, job_index: int) -> None:
        self.parts.pop(job_index, None)


def chunk_crops(chunk: SnippetChunk, settings: FeatureSettings) -> List[Crop]:
    """The crop boxes of a chunk's (resized) frames."""
    return snippet_crops(chunk.frames.shape[1], chunk.frames.shape[2], settings)


def run_chunk(model, chunk: SnippetChunk, settings: FeatureSettings, pixels: PixelNormalizer,
              device: torch.device) -> np.ndarray:
    """(B, C, D) float32 features of a chunk's B snippets x C crops, in one forward pass."""
    crops = chunk_crops(chunk, settings)
    frames, rows = to_device((chunk.frames, chunk.rows), device)
    x = snippet_batch(frames, rows, crops, pixels)
    with torch.inference_mode():
        out = model(x)
    return out.float().cpu().numpy().reshape(chunk.rows.shape[0], len(crops), -1)
