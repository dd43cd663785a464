"""The model registry: names -> entry functions and their pretrained configs (timm-style)."""
from __future__ import annotations

import difflib
import fnmatch
import sys
from typing import Callable, Dict, Iterable, List, Optional, Union

from ._pretrained import VideoPretrainedCfg

_model_entrypoints: Dict[str, Callable] = {}
_model_to_module: Dict[str, str] = {}
_pretrained_cfgs: Dict[str, VideoPretrainedCfg] = {}


def register_model(fn: Callable) -> Callable:
    """Decorator: register ``fn`` under its own name.

    The config comes from the ``default_cfgs`` dict of the function's module, as in timm, so an entry is
    a three-line function that only fills arguments.
    """
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f'model {name!r} is registered twice')
    module = sys.modules[fn.__module__]
    cfg = getattr(module, 'default_cfgs', {}).get(name)
    if cfg is None:
        cfg = VideoPretrainedCfg(architecture=name)
    elif not cfg.architecture:
        cfg = cfg.replace(architecture=name)
    _model_entrypoints[name] = fn
    _model_to_module[name] = fn.__module__
    _pretrained_cfgs[name] = cfg
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


def get_pretrained_cfg(name: str) -> VideoPretrainedCfg:
    if name not in _pretrained_cfgs:
        raise _unknown_model_error(name)
    return _pretrained_cfgs[name]


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


def resolve_pretrained_cfg(name: str, overlay: Optional[dict] = None) -> VideoPretrainedCfg:
    return get_pretrained_cfg(name).replace(overlay)
