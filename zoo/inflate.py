"""Inflation of 2D ResNet weights (timm / torchvision key names) into a 3D zoo network, with einops.

A 2D kernel W becomes T copies of W/T along time, so a static clip (all frames equal) gives the 2D
response wherever temporal padding does not reach; summing over time ("deflating") gives W back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch
from einops import reduce, repeat
from torch import nn

_logger = logging.getLogger(__name__)


def inflate_conv_weight(weight_2d: torch.Tensor, time: int) -> torch.Tensor:
    """(O, I, H, W) -> (O, I, time, H, W), each temporal slice weight_2d / time."""
    if weight_2d.dim() != 4:
        raise ValueError(f'expected a 2D conv weight (O, I, H, W), got shape {tuple(weight_2d.shape)}')
    return repeat(weight_2d, 'o i h w -> o i t h w', t=time) / time


def deflate_conv_weight(weight_3d: torch.Tensor) -> torch.Tensor:
    """(O, I, T, H, W) -> (O, I, H, W), summed over time: the inverse of inflate_conv_weight."""
    return reduce(weight_3d, 'o i t h w -> o i h w', 'sum')


@dataclass
class InflationReport:
    """The inflated state dict (complete: keys with no 2D source keep the model's own values) and what
    happened to every key."""
    state_dict: Dict[str, torch.Tensor]
    inflated: List[str] = field(default_factory=list)     # 2D conv kernels inflated in time
    copied: List[str] = field(default_factory=list)       # same shape in 2D and 3D
    unused: List[str] = field(default_factory=list)       # 2D keys with no place in the 3D model
    missing: List[str] = field(default_factory=list)      # 3D keys no 2D key filled
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # same name, shapes incompatible

    @property
    def complete(self) -> bool:
        return not (self.unused or self.missing or self.mismatched)

    def __str__(self) -> str:
        lines = [f'inflated {len(self.inflated)}, copied {len(self.copied)}, '
                 f'unused {len(self.unused)}, missing {len(self.missing)}, mismatched {len(self.mismatched)}']
        lines += [f'  unused 2D key: {k}' for k in self.unused]
        lines += [f'  missing 3D key (kept its initialisation): {k}' for k in self.missing]
        lines += [f'  shape mismatch {k}: 2D {a} vs 3D {b} (kept the 3D initialisation)'
                  for k, a, b in self.mismatched]
        return '\n'.join(lines)


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in ('module.', 'model.'):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def inflate_state_dict(state_dict_2d: Mapping[str, torch.Tensor], model_3d: nn.Module,
                       strict: bool = False) -> InflationReport:
    """Place a 2D ResNet state dict (timm or torchvision names) into ``model_3d``'s keys.

    Conv kernels are inflated to the 3D kernel's temporal size; everything else of equal shape is copied.
    Returns an InflationReport listing every key that could not be placed (also logged); with
    ``strict=True`` any such key is an error. Load the result with ``model_3d.load_state_dict(r.state_dict)``.
    """
    source = _strip_prefix(state_dict_2d)
    target = model_3d.state_dict()
    report = InflationReport(state_dict={k: v.clone() for k, v in target.items()})
    for key, value in source.items():
        if key not in target:
            report.unused.append(key)
            continue
        want = target[key]
        if value.dim() == 4 and want.dim() == 5 and value.shape == want.shape[:2] + want.shape[3:]:
            report.state_dict[key] = inflate_conv_weight(value.to(want.dtype), want.shape[2])
            report.inflated.append(key)
        elif value.shape == want.shape:
            report.state_dict[key] = value.to(want.dtype).clone()
            report.copied.append(key)
        else:
            report.mismatched.append((key, tuple(value.shape), tuple(want.shape)))
    placed = set(report.inflated) | set(report.copied) | {k for k, _, _ in report.mismatched}
    report.missing = sorted(set(target) - placed)
    if not report.complete:
        if strict:
            raise RuntimeError(f'inflation into {type(model_3d).__name__} is incomplete:\n{report}')
        _logger.warning('inflation into %s: %s', type(model_3d).__name__, report)
    return report
