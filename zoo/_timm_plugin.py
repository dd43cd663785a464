"""Registers every zoo entry in timm's registry, with its pretrained config under its tag, so
timm.create_model(name), timm.list_pretrained() and timm.models.get_pretrained_cfg(name) see our entries."""
from __future__ import annotations

import sys
from collections import deque

from ._pretrained import to_timm_pretrained_cfg
from ._registry import _model_entrypoints, _pretrained_tags

# timm's register_model reads the pretrained configs of an entry from its module's ``default_cfgs``: here,
# timm's own records derived from ours (zoo._pretrained.timm_fields), filled in by register_with_timm.
default_cfgs: dict = {}


def _timm_entry(name: str):
    zoo_entry = _model_entrypoints[name]

    def entry(pretrained=False, **kwargs):
        return zoo_entry(pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = zoo_entry.__doc__
    return entry


def register_with_timm() -> list:
    """Register the zoo entries timm does not know yet; returns their names."""
    from timm.models import _registry as timm_registry
    from timm.models._pretrained import DefaultCfg
    added = []
    module = sys.modules[__name__]
    for name in sorted(_model_entrypoints):
        if name in timm_registry._model_entrypoints:
            if getattr(timm_registry._model_entrypoints[name], '__module__', None) == __name__:
                continue
            raise RuntimeError(f'timm already has a model named {name!r}; the zoo entry would shadow it')
        tags = _pretrained_tags[name]
        default_cfgs[name] = DefaultCfg(tags=deque(tags), cfgs={t: to_timm_pretrained_cfg(c) for t, c in tags.items()})
        fn = _timm_entry(name)
        setattr(module, name, fn)
        timm_registry.register_model(fn)
        added.append(name)
    return added
