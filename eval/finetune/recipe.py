"""The optimisation recipe of fine-tuning: which parameters train and decay, SGD with Nesterov momentum, the
learning-rate schedule (linear warmup, then steps or a cosine), frozen BatchNorm, and the CPU bf16 clip check
(the precisions themselves, autocast and the loss scaler: eval.kit.runtime).

Defaults follow video-nonlocal-net where it has one: lib/core/config.py sets SOLVER.NESTEROV True,
SOLVER.MOMENTUM 0.9, SOLVER.WEIGHT_DECAY 1e-4 (its linear warmup, SOLVER.WARMUP, is off by default); its
Kinetics configs set SOLVER.WEIGHT_DECAY_BN 0 and dropout 0.5 before the `pred` layer. The cosine default,
the warmup's start at 0.1 of the rate, the step milestones and the frozen-BN threshold are ours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

MOMENTUM = 0.9              # SOLVER.MOMENTUM
WEIGHT_DECAY = 1e-4         # SOLVER.WEIGHT_DECAY; WEIGHT_DECAY_BN 0: no decay on BN (nor, here, on biases)
DROPOUT = 0.5               # TRAIN.DROPOUT_RATE of the Kinetics configs, before the classifier
WARMUP_FACTOR = 0.1         # ours: the warmup starts at 0.1 of the rate
SCHEDULES = ('cosine', 'step')
BN_MODES = ('auto', 'train', 'frozen', 'frozen-affine')
# ours: below this many clips per device, batch statistics are too noisy to train BN on ('auto')
MIN_BN_BATCH = 8


def is_batchnorm(module: nn.Module) -> bool:
    """BatchNorm layers with running statistics: torch's, and Inception-I3D's scale-free BatchNormNoScale3d."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (
        hasattr(module, 'running_mean') and hasattr(module, 'running_var'))


def resolve_bn_mode(mode: str, per_device_batch: int) -> str:
    """'auto' -> 'frozen' for fewer than MIN_BN_BATCH clips per device (as the Caffe2 frozen-BN models were
    trained), else 'train'."""
    if mode not in BN_MODES:
        raise ValueError(f'--bn must be one of {BN_MODES}, got {mode!r}')
    if mode != 'auto':
        return mode
    return 'frozen' if per_device_batch < MIN_BN_BATCH else 'train'


def classifier_module(model: nn.Module) -> nn.Module:
    """The new head (timm's get_classifier)."""
    return model.get_classifier()


def set_trainable(model: nn.Module, bn_mode: str, freeze_backbone: bool) -> None:
    """requires_grad of every parameter: the head always trains; the backbone unless ``freeze_backbone``
    (a linear probe); BN's affine parameters not with 'frozen-affine'."""
    head = {id(p) for p in classifier_module(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head or not freeze_backbone)
    if bn_mode == 'frozen-affine':
        for m in model.modules():
            if is_batchnorm(m):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)


def set_train_mode(model: nn.Module, bn_mode: str, freeze_backbone: bool) -> nn.Module:
    """Training mode, except BN layers whose statistics are frozen (eval mode: running statistics used and
    never updated); a frozen backbone freezes them all, so a linear probe leaves the backbone bit-identical."""
    model.train()
    if bn_mode in ('frozen', 'frozen-affine') or freeze_backbone:
        for m in model.modules():
            if is_batchnorm(m):
                m.eval()
    return model


def parameter_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Trainable parameters in two groups, decayed and not: timm's rule (no decay on 1-D tensors, i.e. BN
    scales and shifts and every bias, nor on the model's ``no_weight_decay()`` names)."""
    from timm.optim._param_groups import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = WEIGHT_DECAY,
                   momentum: float = MOMENTUM, nesterov: bool = True) -> torch.optim.SGD:
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError('no trainable parameter: nothing to fine-tune')
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


@dataclass
class LRFactor:
    """The learning rate at optimizer step s, as a factor of the base rate (a picklable LambdaLR function).

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_steps``; then 'cosine': half a cosine from 1 to 0
    over the remaining steps, or 'step': ``gamma`` to the number of ``milestones`` (steps) passed.
    """
    total_steps: int
    schedule: str = 'cosine'
    warmup_steps: int = 0
    warmup_factor: float = WARMUP_FACTOR
    milestones: Sequence[int] = ()
    gamma: float = 0.1

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f'--schedule must be one of {SCHEDULES}, got {self.schedule!r}')

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_steps
        if self.schedule == 'step':
            return self.gamma ** sum(step >= m for m in self.milestones)
        span = max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - self.warmup_steps, span) / span))


def make_scheduler(optimizer: torch.optim.Optimizer, factor: LRFactor) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------- precision

def short_clip_bf16_convs(model: nn.Module, frames: int, crop: int) -> List[str]:
    """The Conv3d layers of ``model`` whose input, for a ``frames`` x ``crop`` x ``crop`` clip, has more than one
    frame but fewer than the layer's temporal kernel (e.g. 2 frames into a 3x1x1 convolution).

    There PyTorch's CPU bfloat16 convolution backward (oneDNN; torch 2.15 measured on the AMD EPYC) reads
    memory it never wrote when it computes the weight gradient: with the heap holding NaNs from earlier work,
    the gradient was non-finite in 18-37 of 40 trials for T = 2 with a 3-frame kernel and T = 3 or 4 with a
    5-frame kernel, and never for T = 1 or T >= the kernel, nor in float32. Finite garbage is as likely, so
    such a run trains on wrong gradients silently. One forward pass in eval mode on zeros, no gradients; every
    module's train/eval mode is restored."""
    found: List[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv3d) and module.kernel_size[0] > 1:
            def hook(mod, inputs, output, name=name):
                t = inputs[0].shape[2]
                if 1 < t < mod.kernel_size[0]:
                    found.append(f'{name} ({t} frames into a {mod.kernel_size[0]}-frame kernel)')
            hooks.append(module.register_forward_hook(hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, frames, crop, crop))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return found


def default_milestones(total_steps: int) -> List[int]:
    """'step' schedule without --lr-steps: x0.1 at 50% and 75% of the run (ours)."""
    return [total_steps // 2, (3 * total_steps) // 4]


def trainable_count(model: nn.Module, trainable: Optional[bool] = True) -> int:
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)
