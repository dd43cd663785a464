"""FLOP and parameter report of a zoo model with fvcore, per view and per video of a multi-view test.
The command line is eval.score.flop_report (python -m eval.flops).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch

import zoo

from eval.kit.config import fully_conv_head, view_spec


@dataclass
class FlopReport:
    model: str
    frames: int
    crop: int
    spatial_views: int
    temporal_views: int
    params: int
    flops_per_view: float      # fvcore: one fused multiply-add = 1 flop
    by_operator: dict

    @property
    def views(self) -> int:
        return self.spatial_views * self.temporal_views

    @property
    def flops_per_video(self) -> float:
        return self.flops_per_view * self.views

    def to_dict(self) -> dict:
        return {**asdict(self), 'views': self.views, 'flops_per_video': self.flops_per_video}

    def table(self) -> str:
        rows = [
            ('model', self.model),
            ('parameters', f'{self.params / 1e6:.2f} M'),
            ('view (C x T x H x W)', f'3 x {self.frames} x {self.crop} x {self.crop}'),
            ('GFLOPs per view', f'{self.flops_per_view / 1e9:.2f}'),
            ('views per video', f'{self.spatial_views} crops x {self.temporal_views} clips = {self.views}'),
            ('GFLOPs per video', f'{self.flops_per_video / 1e9:.1f}'),
        ]
        rows += [(f'  {op}', f'{n / 1e9:.2f} G') for op, n in sorted(self.by_operator.items(), key=lambda kv: -kv[1])]
        width = max(len(k) for k, _ in rows)
        return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def count_flops(model: torch.nn.Module, frames: int, crop: int, model_name: str = '',
                views: Tuple[int, int] = (1, 1), fully_conv: Optional[bool] = None) -> FlopReport:
    """fvcore's count for one (1, 3, frames, crop, crop) view; ``fully_conv`` defaults to eval.kit.config's rule."""
    with warnings.catch_warnings():  # fvcore's import and tracer use torch.jit APIs that now warn of deprecation
        warnings.simplefilter('ignore', FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    if fully_conv is None:
        fully_conv = fully_conv_head(getattr(model, 'pretrained_cfg', None), crop)
    x = torch.zeros(1, 3, frames, crop, crop)

    class _View(torch.nn.Module):  # fvcore traces forward(x) only; fix the head mode
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, clip):
            return self.net(clip, fully_conv=True) if fully_conv else self.net(clip)

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)
            analysis = FlopCountAnalysis(_View(model), x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total, by_op = analysis.total(), dict(analysis.by_operator())
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(model_name or type(model).__name__, frames, crop, views[0], views[1], params, float(total), by_op)


def flop_report(model_name: str, views: Tuple[int, int] = (1, 1), frames: Optional[int] = None,
                crop: Optional[int] = None, model: Optional[torch.nn.Module] = None) -> FlopReport:
    """The FLOPs of the views eval.kit.config.view_spec makes of the model's config: those a run would score."""
    cfg = zoo.get_pretrained_cfg(model_name)
    spec = view_spec(cfg, views, frames=frames, crop=crop, scale=max(cfg.test_scale, crop or 0))
    model = model if model is not None else zoo.create_model(model_name)
    return count_flops(model, spec.num_frames, spec.crop_size, model_name=model_name, views=views)


