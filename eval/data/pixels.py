"""uint8 RGB pixels -> a network's float32 input: its channel order, then (x - mean) / std per channel.

One rule for every job: the channel order is the network's, ``pretrained_cfg.channel_order`` (RGB for a
model without a config), whatever decides mean and std (the model's config, or a feature preset's --norm).
mean and std are per channel of the network's input, on 0-255 pixels.

Two kernels, kept apart because they round differently in the last bit and each reproduces its reference:

- ``divide=False``: ``(x - mean) * (1 / std)``, as Caffe2's ClipTransformFlex computes the classifier's
  input (the scoring and fine-tuning jobs).
- ``divide=True``: ``(x - mean) / std``, correctly rounded; for [-1, 1] that is (x - 127.5) / 127.5, the
  correctly rounded value of the public feature extractors' x * 2 / 255 - 1 (the feature job).
"""
from __future__ import annotations

from typing import Sequence

import torch

CHANNEL_ORDERS = ('RGB', 'BGR')


def network_channel_order(cfg) -> str:
    """The channel order a network takes: its pretrained config's (RGB without a config)."""
    return cfg.channel_order if cfg is not None else 'RGB'


class PixelNormalizer:
    """Pixels in (decoded RGB) -> the network's values: channel order, then (x - mean) / std (see the module
    docstring for ``divide``). Runs on the pixels' device, so a loader moves uint8 (4x less data)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_order: str = 'RGB',
                 divide: bool = False):
        if channel_order.upper() not in CHANNEL_ORDERS:
            raise ValueError(f'channel order {channel_order!r}: expected RGB or BGR')
        self.bgr = channel_order.upper() == 'BGR'
        self.divide = divide
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.inv_std = 1.0 / self.std

    @classmethod
    def from_cfg(cls, cfg, divide: bool = False) -> 'PixelNormalizer':
        """The model's own normalisation (its pretrained config, or a run's resolved record of it)."""
        return cls(cfg.mean, cfg.std, network_channel_order(cfg), divide)

    @property
    def channel_order(self) -> str:
        return 'BGR' if self.bgr else 'RGB'

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) views -> float (B, 3, T, H, W) model input, channels_last_3d in memory."""
        # The permuted uint8 views keep channels innermost in memory, so .float() yields channels_last_3d,
        # the layout the fast path wants; in-place arithmetic avoids two more full-size temporaries.
        x = views.permute(0, 4, 1, 2, 3).float()
        if self.bgr:
            x = x.flip(1)
        return self._scale_(x, (1, 3, 1, 1, 1))

    def channels_last_(self, pixels: torch.Tensor) -> torch.Tensor:
        """float32 pixels (..., 3), channels last -> the network's values, same shape; in place when RGB."""
        if self.bgr:
            pixels = pixels.flip(-1)
        return self._scale_(pixels, (3,))

    def _scale_(self, x: torch.Tensor, shape) -> torch.Tensor:
        x.sub_(self.mean.view(shape).to(x.device))
        if self.divide:
            return x.div_(self.std.view(shape).to(x.device))
        return x.mul_(self.inv_std.view(shape).to(x.device))
