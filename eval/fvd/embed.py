"""The embedding network and the videos it takes: I3D logits averaged over time, and checked input tensors.

FVD's embedding is TF-Hub ``deepmind/i3d-kinetics-400/1``'s ``RGB/inception_i3d/Mean:0``: the 400 pre-softmax
logits averaged over time. That is the output of the zoo's ``i3d_inception`` (the same weights, converted
from the same module) at 224x224, where the pooled map is 1x1. It runs through the kit: the zoo's exact fast
path (BatchNorm folded, channels_last_3d) in float32, TF32 off on CUDA (eval.kit.runtime's precision rule);
bf16 / fp16 only when asked, and recorded, since they are not the protocol's numbers.
"""
from __future__ import annotations

import contextlib

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from eval.kit.compiling import CompileDecision, compiled_inference, decide_compile
from eval.kit.config import default_batch_size
from eval.kit.models import load_model, weights_fingerprint
from eval.kit.runtime import job_backend, resolve_device, resolve_precision, to_device
from eval.fvd.preprocess import clip_indices, network_input
from eval.fvd.protocols import I3D_WORDS, Protocol

FVD_MODEL = 'i3d_inception'
EMBEDDING_DIM = 400
VALUE_RANGES = {'uint8': (0.0, 255.0), '0-255': (0.0, 255.0), '0-1': (0.0, 1.0), '-1-1': (-1.0, 1.0)}


def fvd_batch_size(device: torch.device) -> int:
    """Clips per forward pass by default: 16x224 clips are small (10 MB each), and on the CPU I3D runs 3.7x
    faster per clip in passes of 4 than of 1, within 3% of passes of 8 (benchmarks/fvd-cpu-2core-amd.txt); on
    CUDA the kit's default."""
    return 4 if device.type == 'cpu' else default_batch_size(device)


class Embedder:
    """The network built once (device, precision, fast path, compile): clips in, (N, 400) float32 out.

    Clips run in forward passes of exactly ``batch_size`` (default: ``fvd_batch_size``),
    a last partial batch padded with copies of its last clip: a clip's embedding then never depends on how
    many clips came with it (oneDNN's and cuDNN's float32 sums can change with the batch size, not with the
    other clips), so any split into updates, ranks or resumed attempts gives the same embeddings.
    """

    def __init__(self, model: Union[str, torch.nn.Module] = FVD_MODEL, *, device=None, precision: str = 'fp32',
                 fast_path: bool = True, compile: bool = False, checkpoint: Optional[str] = None,
                 weights_file: Optional[str] = None, random_weights: bool = False, seed: int = 0,
                 batch_size: Optional[int] = None):
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size or fvd_batch_size(self.device)))
        self.precision = resolve_precision(precision, self.device)
        if isinstance(model, str):
            self.name = model
            model, self.weights = load_model(model, pretrained=not random_weights, checkpoint=checkpoint,
                                             weights_file=weights_file, seed=seed)
        else:
            self.name = getattr(getattr(model, 'pretrained_cfg', None), 'architecture', None) or type(model).__name__
            self.weights = {'kind': 'given', 'source': None}
        model.eval()
        self.state_dict_sha256 = weights_fingerprint(model)
        self.fast_path, self.compiled = fast_path, False
        self.model = model
        if fast_path:
            from zoo.inference import prepare_for_inference
            self.net = prepare_for_inference(model, device=self.device, precision=precision)
        else:
            self.net = model.to(self.device)
        self.compile_decision = None
        if compile:
            self.set_compile(decide_compile(True, self.device, self.precision.name))

    def set_compile(self, decision: CompileDecision, say=print) -> None:
        """Compile the network when ``decision`` says so (eval.kit.compiling), at this embedder's fixed batch."""
        self.compile_decision = decision
        self.net = compiled_inference(self.net, decision, self.device, self.batch_size, say)
        self.compiled = decision.compiled

    def describe(self) -> str:
        """The network in a citation line: the FVD network in words, anything else by what it is."""
        if self.name == FVD_MODEL and self.weights.get('kind') == 'pretrained' and self.precision.name == 'fp32':
            return I3D_WORDS
        return (f'{self.name} ({self.weights.get("kind")} weights, state dict sha256 '
                f'{self.state_dict_sha256[:12]}), {self.precision.name} (NOT the FVD network in float32)')

    def identity(self) -> dict:
        """What the embeddings depend on besides the protocol (a statistics file records it)."""
        return {'model': self.name, 'state_dict_sha256': self.state_dict_sha256, 'weights': self.weights,
                'precision': self.precision.name, 'fast_path': self.fast_path}

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        """(N, 3, T, S, S) float32 network input -> (N, 400) float32 embeddings, in passes of ``batch_size``."""
        parts = []
        for i in range(0, clips.shape[0], self.batch_size):
            batch = clips[i:i + self.batch_size]
            real = batch.shape[0]
            if real < self.batch_size:
                batch = torch.cat([batch, batch[-1:].expand(self.batch_size - real, *batch.shape[1:])])
            parts.append(self._forward(batch)[:real])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _forward(self, clips: torch.Tensor) -> np.ndarray:
        with job_backend(self.device, self.precision), torch.inference_mode():
            x = to_device(clips, self.device)
            if self.fast_path:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with self.precision.autocast() if not self.fast_path else contextlib.nullcontext():
                out = self.net(x)        # the fast path casts its weights itself
        return out.float().cpu().numpy()


def _channel_axis(shape: Sequence[int], layout: Optional[str], integer: bool) -> str:
    if layout is None:
        layout = 'NTHWC' if integer else 'NCTHW'
        axis = 4 if integer else 1
        if shape[axis] != 3:
            other = 1 if integer else 4
            if shape[other] == 3:
                layout = 'NCTHW' if integer else 'NTHWC'
            else:
                raise ValueError(f'videos of shape {tuple(shape)}: expected (N, T, H, W, 3) or (N, 3, T, H, W)')
    if layout not in ('NTHWC', 'NCTHW'):
        raise ValueError(f'layout {layout!r}: expected NTHWC or NCTHW')
    channels = shape[4] if layout == 'NTHWC' else shape[1]
    if channels != 3:
        raise ValueError(f'videos of shape {tuple(shape)} in layout {layout}: {channels} channels, expected 3 (RGB)')
    return layout


def detect_value_range(x: torch.Tensor, value_range: Optional[str]) -> str:
    """The value range of float videos: given, or read from the values when they can only mean one thing
    (any value below 0: [-1, 1]; above 1: 0..255); values all within [0, 1] are ambiguous and refused."""
    if value_range is not None:
        if value_range not in VALUE_RANGES:
            raise ValueError(f'value_range {value_range!r}: expected one of {", ".join(VALUE_RANGES)}')
        return value_range
    lo, hi = float(x.min()), float(x.max())
    if lo < 0:
        return '-1-1'
    if hi > 1:
        return '0-255'
    raise ValueError(f'float videos with every value in [{lo:g}, {hi:g}] could be [0, 1] or [-1, 1] videos: '
                     "say which with value_range='0-1' or '-1-1' (uint8 videos need nothing)")


def as_pixels(videos, layout: Optional[str] = None, value_range: Optional[str] = None) -> torch.Tensor:
    """Videos as given (numpy or torch; (N, T, H, W, 3) or (N, 3, T, H, W); uint8, or float in 0..255, [0, 1] or
    [-1, 1]) -> (N, T, H, W, 3) float32 on 0..255, on the videos' device, every problem a ValueError."""
    x = torch.as_tensor(videos) if isinstance(videos, np.ndarray) else videos
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'videos must be a numpy array or a torch tensor, got {type(videos).__name__}')
    if x.dim() != 5:
        raise ValueError(f'videos of shape {tuple(x.shape)}: expected 5 dimensions, (N, T, H, W, 3) or (N, 3, T, H, W)')
    integer = not (x.is_floating_point() or x.is_complex())
    layout = _channel_axis(x.shape, layout, integer)
    if layout == 'NCTHW':
        x = x.permute(0, 2, 3, 4, 1)
    if integer:
        if x.dtype != torch.uint8 and (int(x.min()) < 0 or int(x.max()) > 255):
            raise ValueError(f'integer videos must be on 0..255, got values {int(x.min())}..{int(x.max())}')
        return x.float()
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f'{int((~torch.isfinite(x)).sum())} video values are NaN or infinite')
    kind = detect_value_range(x, value_range)
    lo, hi = VALUE_RANGES[kind]
    if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
        raise ValueError(f'videos declared {kind} have values {float(x.min()):g}..{float(x.max()):g}')
    return (x - lo) * (255.0 / (hi - lo))


def clips_of(pixels: torch.Tensor, protocol: Protocol, rng: np.random.Generator) -> Tuple[torch.Tensor, list]:
    """(N, T, H, W, 3) on 0..255 -> (N, 3, F, S, S) network input of each video's clip, and each clip's start."""
    out, starts = [], []
    for k, video in enumerate(pixels):
        try:
            index = clip_indices(video.shape[0], protocol, rng)
        except ValueError as e:
            raise ValueError(f'video {k}: {e} ({protocol.name}: {protocol.frames} frames, step {protocol.step}; '
                             'the protocol does not pad short videos)') from None
        starts.append(int(index[0]))
        out.append(network_input(video[torch.as_tensor(index, device=video.device)], protocol))
    return torch.stack(out), starts
