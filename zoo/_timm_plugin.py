"""Registers every zoo entry in timm's registry, so timm.create_model(name) builds the same network."""
from __future__ import annotations

import sys

from ._registry import _model_entrypoints


def _timm_entry(name: str):
    zoo_entry = _model_entrypoints[name]

    def entry(pretrained=False, **kwargs):
        return zoo_entry(pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = zoo_entry.__doc__
    return entry


def register_with_timm() -> list:
    """Register the zoo entries timm does not know yet; returns their names. No-op without timm."""
    try:
        from timm.models import _registry as timm_registry
    except ImportError:
        return []
    added = []
    module = sys.modules[__name__]
    for name in sorted(_model_entrypoints):
        if name in timm_registry._model_entrypoints:
            if getattr(timm_registry._model_entrypoints[name], '__module__', None) == __name__:
                continue
            raise RuntimeError(f'timm already has a model named {name!r}; the zoo entry would shadow it')
        fn = _timm_entry(name)
        setattr(module, name, fn)
        timm_registry.register_model(fn)
        added.append(name)
    return added
