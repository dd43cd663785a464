"""timm's feature protocol for networks that run their ``trunk`` of children in order: forward_features,
forward_intermediates at the ``feature_info`` taps, prune_intermediate_layers and gradient checkpointing."""

import contextlib
from typing import List, Optional, Union

import torch
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _running_statistics_kept(module: nn.Module):
    """The buffers of ``module`` (BatchNorm running statistics and their counters, whatever norm class holds
    them) as they were on entry, whatever runs inside: a block recomputed in backward has already updated
    them in its forward, and must not update them twice."""
    buffers = [b for b in module.buffers()] if module.training else []
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, kept in zip(buffers, saved):
                b.copy_(kept)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` without keeping its activations: recomputed in backward (non-reentrant checkpoint,
    the RNG replayed so dropout draws the same masks), with BatchNorm statistics updated once, not twice."""
    if torch.compiler.is_compiling():
        # Traced by torch.compile, the block's buffer updates are applied once, after the forward graph, and the
        # recomputation in the backward graph does not repeat them (nor can dynamo trace a context_fn).
        return checkpoint(module, x, use_reentrant=False)
    return checkpoint(module, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _running_statistics_kept(module)))


class TrunkFeaturesMixin:
    """For an nn.Module with ``trunk`` (names of the children from input to the last feature map, in
    registration order, which is the order they run in), ``feature_info`` (timm's list of dicts, each
    naming its tap's ``module``), ``grad_checkpointing``, ``num_features`` and ``reset_classifier``."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each trunk block in backward instead of keeping its activations (Sequential stages
        are checkpointed block by block)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def _run_checkpointed(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Sequential):
            for block in module:
                x = self._run_checkpointed(block, x)
            return x
        if any(p.requires_grad for p in module.parameters()):
            return checkpointed(module, x)
        return module(x)  # nothing to save memory on (pools, activations)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) clips -> the last feature map (N, num_features, T', H', W')."""
        torch._assert(x.dim() == 5, 'expected a (N, C, T, H, W) clip batch')
        for name, module in self.named_children():   # registration order is execution order
            if name in self.trunk:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = self._run_checkpointed(module, x)
                else:
                    x = module(x)
        return x

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCTHW',
                              intermediates_only: bool = False):
        """The maps (N, C, T, H, W) at the ``feature_info`` taps, and the final map unless
        ``intermediates_only``. ``indices``: the last n taps if an int, these taps if a list, all if None.
        ``output_fmt`` is channels first ('NCTHW'; timm's 'NCHW' is accepted as its name for it). There
        is no final norm, so ``norm`` changes nothing."""
        assert output_fmt in ('NCTHW', 'NCHW'), 'output_fmt must be NCTHW (channels first)'
        torch._assert(x.dim() == 5, 'expected a (N, C, T, H, W) clip batch')
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = {info['module']: i for i, info in enumerate(self.feature_info)}
        intermediates = []
        for name in self.trunk:
            module = getattr(self, name)
            x = self._run_checkpointed(module, x) if self.grad_checkpointing else module(x)
            index = taps.get(name)
            if index is not None and index in take_indices:
                intermediates.append(x)
            if stop_early and index == max_index:
                break
        if intermediates_only:
            return intermediates
        return x, intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the trunk after the last tap of ``indices`` (and the head); returns the kept tap indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self.trunk.index(self.feature_info[max_index]['module'])
        for name in self.trunk[last + 1:]:
            setattr(self, name, nn.Sequential() if isinstance(getattr(self, name), nn.Sequential) else nn.Identity())
        pruned = max_index < len(self.feature_info) - 1
        if pruned:  # the features now end at the tap
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or pruned:
            self.reset_classifier(0, '')
        return take_indices
