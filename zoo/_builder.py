"""Builds a registered model: resolve its config, construct it, load pretrained or local weights."""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ._pretrained import VideoPretrainedCfg
from ._registry import model_entrypoint, resolve_pretrained_cfg

_logger = logging.getLogger(__name__)

# source_format -> 'module:function' returning the model's full state dict for a config. Resolved lazily:
# zoo never imports converters at module level (imports flow from converters to zoo).
PRETRAINED_LOADERS: Dict[str, str] = {
    'caffe2_pickle': 'converters.caffe2:load_pretrained',
    'deepmind_i3d_pickle': 'converters.deepmind_i3d:load_pretrained',
}


def _resolve_loader(cfg: VideoPretrainedCfg) -> Callable[..., Dict[str, torch.Tensor]]:
    spec = PRETRAINED_LOADERS.get(cfg.source_format or '')
    if spec is None:
        raise RuntimeError(f'{cfg.architecture}: no loader for source format {cfg.source_format!r}; '
                           f'known formats: {sorted(PRETRAINED_LOADERS)}')
    module_name, fn_name = spec.split(':')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise NotImplementedError(
                f'{cfg.architecture}: pretrained weights are not yet available: the converter '
                f'{module_name} for {cfg.source_format} files is not part of this installation') from e
        raise
    return getattr(module, fn_name)


def load_state_dict_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A zoo state dict from ``.pth`` (loaded with weights_only=True) or ``.safetensors``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # the unpickler's own message says which global it refused
        raise RuntimeError(f'{path}: cannot be read as a weights-only PyTorch checkpoint: {e}') from e
    for key in ('state_dict', 'model', 'model_state'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RuntimeError(f'{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}')
    return obj


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Strict load, except that a classifier whose class count differs from the checkpoint's is kept as
    freshly initialised (fine-tuning on a new label set). Every other mismatch is an error naming the keys."""
    classifier = model.pretrained_cfg.classifier if hasattr(model, 'pretrained_cfg') else 'fc'
    own = model.state_dict()
    state_dict = dict(state_dict)
    for suffix in ('weight', 'bias'):
        key = f'{classifier}.{suffix}'
        if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
            _logger.info('%s: %s has shape %s, model wants %s: keeping the new head', source, key,
                         tuple(state_dict[key].shape), tuple(own[key].shape))
            state_dict[key] = own[key]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit {type(model).__name__}:']
        lines += [f'  missing from checkpoint: {k}' for k in missing]
        lines += [f'  not in model: {k}' for k in unexpected]
        lines += [f'  shape {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}: {k}' for k in mismatched]
        raise RuntimeError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=True)


def build_model_with_cfg(model_cls: Callable[..., nn.Module], model_name: str, pretrained: bool = False, *,
                         num_classes: Optional[int] = None, checkpoint_path: Optional[str] = None,
                         pretrained_cfg_overlay: Optional[dict] = None, pretrained_cfg: Any = None,
                         cache_dir: Optional[str] = None, **kwargs) -> nn.Module:
    """Construct ``model_cls`` for a registered name and load weights; the model is returned in eval mode.

    ``pretrained_cfg`` is accepted for timm's create_model, which passes its own (empty) record; ours
    comes from the zoo registry, changed by ``pretrained_cfg_overlay``.
    """
    if isinstance(pretrained_cfg, VideoPretrainedCfg):
        cfg = pretrained_cfg.replace(pretrained_cfg_overlay)
    else:
        cfg = resolve_pretrained_cfg(model_name, pretrained_cfg_overlay)
    if num_classes is None:
        num_classes = cfg.num_classes
    model = model_cls(num_classes=num_classes, **kwargs)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name for the same record
    if pretrained:
        if not cfg.has_weights:
            raise RuntimeError(f'{model_name}: no pretrained weights are registered for this entry')
        loader = _resolve_loader(cfg)
        state_dict = loader(cfg, model_name=model_name, cache_dir=cache_dir)
        load_weights(model, state_dict, source=f'pretrained weights of {model_name}')
    if checkpoint_path:
        load_weights(model, load_state_dict_file(checkpoint_path), source=str(checkpoint_path))
    return model.eval()


def create_model(model_name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 checkpoint_path: Optional[str] = None, pretrained_cfg_overlay: Optional[dict] = None,
                 **kwargs) -> nn.Module:
    """Create a registered model, in eval mode.

    Args:
        model_name: a name from ``zoo.list_models()``.
        pretrained: load the entry's pretrained weights (downloaded, verified and converted on first use).
        num_classes: a new classifier of this size; the pretrained backbone is kept.
        checkpoint_path: a zoo ``.pth``/``.safetensors`` state dict loaded after construction.
        pretrained_cfg_overlay: fields replacing those of the registered config, e.g. ``dict(file=...)``.
        **kwargs: passed to the architecture (e.g. ``fully_conv_test=True``, ``drop_rate``).
    """
    entry = model_entrypoint(model_name)
    return entry(pretrained=pretrained, num_classes=num_classes, checkpoint_path=checkpoint_path,
                 pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
