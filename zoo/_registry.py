"""The model registry: names -> entry functions and their pretrained configs (timm-style)."""
from __future__ import annotations

import difflib
import fnmatch
import sys
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from ._pretrained import VideoPretrainedCfg

_model_entrypoints: Dict[str, Callable] = {}
_model_to_module: Dict[str, str] = {}
_pretrained_cfgs: Dict[str, VideoPretrainedCfg] = {}          # architecture -> its default (first) weights
_pretrained_tags: Dict[str, Dict[str, VideoPretrainedCfg]] = {}   # architecture -> tag -> config, default first


def register_model(fn: Callable) -> Callable:
    """Decorator: register ``fn`` under its own name.

    The configs come from the ``default_cfgs`` dict of the function's module, as in timm, so an entry is
    a three-line function that only fills arguments: ``default_cfgs[name]`` or ``default_cfgs['name.tag']``
    (several weights of one architecture; the first listed is the default).
    """
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f'model {name!r} is registered twice')
    module = sys.modules[fn.__module__]
    found = [cfg for key, cfg in getattr(module, 'default_cfgs', {}).items() if split_model_name_tag(key)[0] == name]
    tags: Dict[str, VideoPretrainedCfg] = {}
    for cfg in found or [VideoPretrainedCfg(architecture=name)]:
        cfg = cfg if cfg.architecture else cfg.replace(architecture=name)
        if (cfg.tag or '') in tags:
            raise ValueError(f'{name}: pretrained tag {cfg.tag!r} is registered twice')
        tags[cfg.tag or ''] = cfg
    _model_entrypoints[name] = fn
    _model_to_module[name] = fn.__module__
    _pretrained_tags[name] = tags
    _pretrained_cfgs[name] = next(iter(tags.values()))
    return fn


def _unknown_model_error(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_model_entrypoints), n=5, cutoff=0.5)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    return KeyError(f'unknown model {name!r}{hint} (zoo.list_models() lists all {len(_model_entrypoints)})')


def is_model(name: str) -> bool:
    return name in _model_entrypoints


def model_entrypoint(name: str) -> Callable:
    if name not in _model_entrypoints:
        raise _unknown_model_error(name)
    return _model_entrypoints[name]


def split_model_name_tag(name: str) -> Tuple[str, str]:
    """'i3d_r50.c2_kinetics400' -> ('i3d_r50', 'c2_kinetics400'); a name without a tag gets ''."""
    architecture, _, tag = name.partition('.')
    return architecture, tag


def get_pretrained_cfg(name: str) -> VideoPretrainedCfg:
    """The config of a model name, with or without its pretrained tag (``i3d_r50`` or ``i3d_r50.c2_kinetics400``)."""
    architecture, tag = split_model_name_tag(name)
    if architecture not in _pretrained_cfgs:
        raise _unknown_model_error(architecture)
    if not tag:
        return _pretrained_cfgs[architecture]
    tags = _pretrained_tags[architecture]
    if tag not in tags:
        known = ', '.join(f'{architecture}.{t}' for t in tags if t)
        raise KeyError(f'{architecture} has no pretrained tag {tag!r}; its weights are {known}')
    return tags[tag]


def list_pretrained_tags(name: str) -> List[str]:
    """Every ``architecture.tag`` of an architecture's weights, the default first."""
    architecture, _ = split_model_name_tag(name)
    if architecture not in _pretrained_tags:
        raise _unknown_model_error(architecture)
    return [f'{architecture}.{t}' if t else architecture for t in _pretrained_tags[architecture]]


def list_models(filter: Union[str, Iterable[str]] = '', pretrained: bool = False,
                exclude_filters: Union[str, Iterable[str]] = ()) -> List[str]:
    """Sorted names matching any of the shell-style ``filter`` patterns.

    ``pretrained=True`` keeps only the entries whose config names a source of weights.
    """
    names = sorted(_model_entrypoints)
    includes = [filter] if isinstance(filter, str) else list(filter)
    includes = [f for f in includes if f]
    if includes:
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in includes)]
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    for pattern in excludes:
        names = [n for n in names if not fnmatch.fnmatch(n, pattern)]
    if pretrained:
        names = [n for n in names if _pretrained_cfgs[n].has_weights]
    return names


def list_modules() -> List[str]:
    return sorted(set(_model_to_module.values()))


def resolve_pretrained_cfg(name: str, pretrained_cfg: Any = None,
                           overlay: Optional[Mapping] = None) -> VideoPretrainedCfg:
    """The config a model is built with: the registered one, or ``pretrained_cfg`` (a tag as timm passes it
    for ``name.tag``, a VideoPretrainedCfg, or a dict of changes), then ``overlay`` (timm's keys or ours)."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        cfg = get_pretrained_cfg(f'{name}.{pretrained_cfg}' if pretrained_cfg else name)
    elif isinstance(pretrained_cfg, VideoPretrainedCfg):
        cfg = pretrained_cfg
    elif isinstance(pretrained_cfg, Mapping):
        # timm's config.json drops null fields: they come from the registered weights the dict names by its tag
        tag = pretrained_cfg.get('tag')
        base = f'{name}.{tag}' if tag and tag in _pretrained_tags.get(name, {}) else name
        cfg = get_pretrained_cfg(base).overlay(pretrained_cfg)
    else:
        raise TypeError(f'{name}: pretrained_cfg must be a tag, a dict or a VideoPretrainedCfg, '
                        f'got {type(pretrained_cfg).__name__}')
    return cfg.overlay(overlay)
