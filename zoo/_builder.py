"""Builds a registered model: resolve its config, construct it, load pretrained or local weights."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from converters.caffe2 import ZOO_STATE_DICT_SUFFIXES
from converters.pytorch_i3d import PORT_SOURCE_FORMATS

from ._pretrained import VideoPretrainedCfg
from ._registry import model_entrypoint, resolve_pretrained_cfg, split_model_name_tag

_logger = logging.getLogger(__name__)

# A family's pretrained loader, handed to the builder by the family module (as timm's pretrained_filter_fn):
# loader(cfg, model_name=..., target=..., cache_dir=...) -> the full state dict of the checkpoint, where
# ``target`` is the state dict (keys, shapes, dtypes; on the meta device) of the architecture the checkpoint
# was trained as (the config's class count, 3 input channels).
PretrainedLoader = Callable[..., Dict[str, torch.Tensor]]

# A pretrained ``file`` with a zoo state-dict suffix is loaded as is, except for source formats whose own files
# are PyTorch state dicts (.pt/.pth of another layout): their loader reads them (and takes a zoo state dict too).
LOADER_READS_TORCH_FILES = frozenset(PORT_SOURCE_FORMATS)


# Fields of a model's pretrained config that a fine-tuned checkpoint may carry with its weights (its classes,
# and the clip geometry it was trained on); ``create_model(..., checkpoint_path=...)`` applies them.
CHECKPOINT_CFG_KEY = 'pretrained_cfg'


def read_checkpoint_file(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict, config fields saved with it) of a zoo ``.pth`` (weights_only) or ``.safetensors`` file.

    The fields are those ``save_checkpoint_file`` wrote (class names, class count, clip geometry): ``{}`` for
    a plain state dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    if path.endswith('.safetensors'):
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
        fields = json.loads(metadata[CHECKPOINT_CFG_KEY]) if CHECKPOINT_CFG_KEY in metadata else {}
        return load_file(path), fields
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # the unpickler's own message says which global it refused
        raise RuntimeError(f'{path}: cannot be read as a weights-only PyTorch checkpoint: {e}') from e
    fields = obj.get(CHECKPOINT_CFG_KEY) if isinstance(obj, dict) else None
    fields = fields if isinstance(fields, dict) else {}
    for key in ('state_dict', 'model', 'model_state'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RuntimeError(f'{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}')
    return obj, fields


def load_state_dict_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A zoo state dict from ``.pth`` (loaded with weights_only=True) or ``.safetensors``."""
    return read_checkpoint_file(path)[0]


def save_checkpoint_file(path: str | os.PathLike, state_dict: Dict[str, torch.Tensor],
                         cfg_fields: Optional[Dict[str, Any]] = None) -> None:
    """Write a zoo ``.pth`` that ``create_model(name, checkpoint_path=path)`` loads with its own head size and
    the config fields given (e.g. ``num_classes``, ``class_names``), atomically (a reader never sees a part)."""
    from converters.file_io import atomic_write
    payload = {'state_dict': {k: v.detach().cpu() for k, v in state_dict.items()},
               CHECKPOINT_CFG_KEY: dict(cfg_fields or {})}
    with atomic_write(path) as f:
        torch.save(payload, f)


def checkpoint_cfg_of(cfg: VideoPretrainedCfg, fields: Dict[str, Any], num_classes: int) -> VideoPretrainedCfg:
    """The config of a model that carries a checkpoint's head of ``num_classes``: the fields saved with the
    checkpoint when they describe that head, else the registered config with the class count (names unknown
    when it differs from the registered one)."""
    if fields.get('num_classes') == num_classes:
        fields = dict(fields)
        if 'class_names' in fields:
            fields['class_names'] = tuple(fields['class_names'])
        return cfg.replace(fields)
    if num_classes == cfg.num_classes:
        return cfg
    return cfg.replace(num_classes=num_classes, class_names=(), label_set=None)


def classifier_size(state_dict: Dict[str, torch.Tensor], cfg: VideoPretrainedCfg) -> Optional[int]:
    """Rows of the checkpoint's classifier (None when it has none)."""
    weight = state_dict.get(f'{cfg.classifier}.weight')
    return None if weight is None else int(weight.shape[0])


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-conv kernel trained on RGB for ``in_chans`` input channels, as timm adapts 2D ones: summed for
    one channel, else the RGB kernels repeated and scaled by 3 / in_chans (the response to a grey input
    is unchanged). Any kernel rank, so 3D kernels too."""
    if weight.shape[1] != 3:
        raise ValueError(f'expected an RGB first-conv kernel, got shape {tuple(weight.shape)}')
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // 3)
    weight = weight.repeat(1, repeats, *([1] * (weight.dim() - 2)))[:, :in_chans]
    return weight * (3.0 / in_chans)


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Strict load, except that a classifier whose class count differs from the checkpoint's is kept as
    freshly initialised (fine-tuning on a new label set) and one removed (``num_classes=0``) is not loaded.
    Every other mismatch is an error naming the keys."""
    classifier = model.pretrained_cfg.classifier if hasattr(model, 'pretrained_cfg') else 'fc'
    own = model.state_dict()
    state_dict = dict(state_dict)
    for suffix in ('weight', 'bias'):
        key = f'{classifier}.{suffix}'
        if key in state_dict and key not in own and getattr(model, 'num_classes', None) == 0:
            del state_dict[key]
        elif key in state_dict and key in own and state_dict[key].shape != own[key].shape:
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


def _checkpoint_target(model_cls: Callable[..., nn.Module], cfg: VideoPretrainedCfg,
                       kwargs: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The state dict of the architecture a checkpoint holds (its class count, RGB input), on the meta device."""
    arch_kwargs = {k: v for k, v in kwargs.items() if k not in ('in_chans', 'device', 'dtype')}
    with torch.device('meta'):
        return model_cls(num_classes=cfg.num_classes, **arch_kwargs).state_dict()


def load_shared_state_dict(cfg: VideoPretrainedCfg) -> Dict[str, torch.Tensor]:
    """The zoo state dict of a timm sharing source: a ``save_for_hf`` folder (``local-dir:``, ``cfg.file`` is the
    folder) or a Hugging Face Hub repository (``hf-hub:``, ``cfg.hf_hub_id``), read by timm's own functions."""
    from timm.models._hub import load_state_dict_from_hf, load_state_dict_from_path
    if cfg.source == 'local-dir':
        return load_state_dict_from_path(os.path.expanduser(cfg.file))
    return load_state_dict_from_hf(cfg.hf_hub_id)


def load_pretrained(model: nn.Module, model_cls: Callable[..., nn.Module], model_name: str,
                    cfg: VideoPretrainedCfg, loader: Optional[PretrainedLoader], kwargs: Dict[str, Any],
                    cache_dir: Optional[str] = None) -> None:
    """Load the weights a config names into ``model``: a timm sharing source (local-dir / hf-hub) or a zoo
    state-dict ``file`` directly, anything else through the family's loader (a source format whose files are
    themselves PyTorch state dicts, ``LOADER_READS_TORCH_FILES``, always through its loader); the first conv is
    adapted when the model's input channels are not RGB."""
    shared = cfg.source in ('local-dir', 'hf-hub')
    local_only = cfg.source_format in LOADER_READS_TORCH_FILES   # its loader says where to get the file
    if not (cfg.has_weights or local_only or shared):
        raise RuntimeError(f'{model_name}: no pretrained weights are registered for this entry')
    zoo_file = cfg.file and str(cfg.file).endswith(ZOO_STATE_DICT_SUFFIXES) \
        and cfg.source_format not in LOADER_READS_TORCH_FILES
    if shared:
        state_dict = load_shared_state_dict(cfg)
    elif zoo_file:
        state_dict = load_state_dict_file(os.path.expanduser(cfg.file))
    elif loader is None:
        raise RuntimeError(f'{model_name}: no loader for source format {cfg.source_format!r}')
    else:
        state_dict = loader(cfg, model_name=model_name, target=_checkpoint_target(model_cls, cfg, kwargs),
                            cache_dir=cache_dir)
    in_chans = kwargs.get('in_chans', 3)
    first = f'{cfg.first_conv}.weight'
    if in_chans != 3 and first in state_dict:
        state_dict = {**state_dict, first: adapt_input_conv(state_dict[first], in_chans)}
    load_weights(model, state_dict, source=f'pretrained weights of {model_name}')


def _feature_class(feature_cls: Any):
    """timm's feature-extraction wrapper for ``feature_cls`` (a class, or timm's names for them)."""
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet
    from timm.models._features_fx import FeatureGraphNet
    if feature_cls is None:
        return FeatureListNet
    if isinstance(feature_cls, type):
        return feature_cls
    name = str(feature_cls).lower()
    classes = dict(list=FeatureListNet, dict=FeatureDictNet, hook=FeatureHookNet, fx=FeatureGraphNet,
                   getter=FeatureGetterNet)
    if name not in classes:
        raise ValueError(f'unknown feature_cls {feature_cls!r}; use one of {sorted(classes)}')
    return classes[name]


def build_model_with_cfg(model_cls: Callable[..., nn.Module], model_name: str, pretrained: bool = False, *,
                         pretrained_loader: Optional[PretrainedLoader] = None, num_classes: Optional[int] = None,
                         checkpoint_path: Optional[str] = None, pretrained_cfg: Any = None,
                         pretrained_cfg_overlay: Optional[dict] = None, cache_dir: Optional[str] = None,
                         features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                         feature_cls: Any = None, feature_cfg: Optional[dict] = None, **kwargs) -> nn.Module:
    """Construct ``model_cls`` for a registered name and load weights; the model is returned in eval mode.

    ``pretrained_cfg`` is what timm's create_model passes: a tag (from ``name.tag``), a dict of changes or a
    VideoPretrainedCfg; ``pretrained_cfg_overlay`` changes fields (timm's keys or ours). ``device``/``dtype``
    go to the architecture. ``features_only`` wraps the network in timm's feature extractor
    (``feature_cls``: 'list' (default), 'getter', 'dict', 'hook', 'fx'), returning ``out_indices`` maps.
    """
    cfg = resolve_pretrained_cfg(model_name, pretrained_cfg, pretrained_cfg_overlay)
    kwargs.pop('pretrained_model_args', None)    # timm's record of a saved folder's arguments, already in kwargs
    kwargs = {**dict(cfg.arch_args), **kwargs}   # what the weights need (e.g. a port's BN epsilon)
    checkpoint, checkpoint_cfg = read_checkpoint_file(checkpoint_path) if checkpoint_path else (None, {})
    if num_classes is None:  # a checkpoint's own head decides, else the config's
        num_classes = (checkpoint is not None and classifier_size(checkpoint, cfg)) or cfg.num_classes
    if checkpoint is not None and num_classes == classifier_size(checkpoint, cfg):
        cfg = checkpoint_cfg_of(cfg, checkpoint_cfg, num_classes)
    model = model_cls(num_classes=num_classes, **kwargs)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name for the same record
    if pretrained:
        load_pretrained(model, model_cls, model_name, cfg, pretrained_loader, kwargs, cache_dir)
    if checkpoint is not None:
        load_weights(model, checkpoint, source=str(checkpoint_path))
    if features_only:
        feature_cfg = dict(feature_cfg or {})
        feature_cls = feature_cfg.pop('feature_cls', feature_cls)
        feature_cfg['out_indices'] = tuple(out_indices if out_indices is not None
                                           else feature_cfg.get('out_indices', range(len(model.feature_info))))
        model = _feature_class(feature_cls)(model, **feature_cfg)
        model.pretrained_cfg = model.default_cfg = cfg
    return model.eval()


def create_model(model_name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 checkpoint_path: Optional[str] = None, pretrained_cfg_overlay: Optional[dict] = None,
                 **kwargs) -> nn.Module:
    """Create a registered model, in eval mode.

    Args:
        model_name: a name from ``zoo.list_models()``, optionally with its pretrained tag
            (``i3d_r50.c2_kinetics400``).
        pretrained: load the entry's pretrained weights (downloaded, verified and converted on first use).
        num_classes: a new classifier of this size; the pretrained backbone is kept.
        checkpoint_path: a zoo ``.pth``/``.safetensors`` state dict loaded after construction; without
            ``num_classes`` the head takes the checkpoint's size, and the config fields saved with it
            (``save_checkpoint_file``: class names, clip geometry) replace the registered ones.
        pretrained_cfg_overlay: fields replacing those of the registered config, e.g. ``dict(file=...)``.
        **kwargs: passed to the builder (``features_only``, ``out_indices``, ``pretrained_cfg`` ...) and the
            architecture (e.g. ``fully_conv_test=True``, ``drop_rate``, ``global_pool``, ``device``, ``dtype``).
    """
    model_name, tag = split_model_name_tag(model_name)
    if tag:
        kwargs.setdefault('pretrained_cfg', tag)
    entry = model_entrypoint(model_name)
    return entry(pretrained=pretrained, num_classes=num_classes, checkpoint_path=checkpoint_path,
                 pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
