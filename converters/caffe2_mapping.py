"""Caffe2 video-nonlocal-net blob names <-> zoo ResNet3D state-dict keys: one rule table, used both ways, strict.

Also infers which of the models it is given a checkpoint fits, from its blob names and shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------------------
# The rule table. A `{field}` stands for the same thing on both sides, spelt as FIELDS says.

BLOB_RULES: Tuple[Tuple[str, str], ...] = (
    # Caffe2 blob                                  zoo state-dict key
    ('conv1_w',                                    'conv1.weight'),
    ('res_conv1_bn_{bn}',                          'bn1.{bn}'),
    ('res{stage}_{block}_branch2{branch}_w',       'layer{stage}.{block}.conv{branch}.weight'),
    ('res{stage}_{block}_branch2{branch}_bn_{bn}', 'layer{stage}.{block}.bn{branch}.{bn}'),
    ('res{stage}_{block}_branch1_w',               'layer{stage}.{block}.downsample.0.weight'),
    ('res{stage}_{block}_branch1_bn_{bn}',         'layer{stage}.{block}.downsample.1.{bn}'),
    ('nonlocal_conv{stage}_{block}_{nl}_{param}',  'layer{stage}.{block}.non_local.{nl}.{param}'),
    ('nonlocal_conv{stage}_{block}_bn_{bn}',       'layer{stage}.{block}.non_local.bn.{bn}'),
    ('pred_{param}',                               'fc.{param}'),
)


@dataclass(frozen=True)
class Field:
    """How one placeholder is spelt in Caffe2 and in the zoo, and how to turn one into the other."""
    caffe2_pattern: str
    zoo_pattern: str
    to_zoo: Callable[[str], str]
    to_caffe2: Callable[[str], str]

    @classmethod
    def vocabulary(cls, caffe2_to_zoo: Mapping[str, str]) -> 'Field':
        zoo_to_caffe2 = {z: c for c, z in caffe2_to_zoo.items()}
        return cls(_alternatives(caffe2_to_zoo), _alternatives(zoo_to_caffe2),
                   caffe2_to_zoo.__getitem__, zoo_to_caffe2.__getitem__)


def _alternatives(words) -> str:
    return '|'.join(re.escape(w) for w in sorted(words, key=len, reverse=True))


FIELDS: Dict[str, Field] = {
    # Caffe2 numbers the residual stages res2..res5 (res1 is the stem); the zoo, like torchvision, layer1..4.
    'stage': Field(r'[2-5]', r'[1-4]', lambda s: str(int(s) - 1), lambda s: str(int(s) + 1)),
    'block': Field(r'0|[1-9]\d*', r'0|[1-9]\d*', str, str),
    'branch': Field.vocabulary({'a': '1', 'b': '2', 'c': '3'}),   # branch2a/b/c: the bottleneck's three convs
    # SpatialBN / AffineChannel blobs. `riv` is the running variance despite its name (not inverted).
    'bn': Field.vocabulary({'s': 'weight', 'b': 'bias', 'rm': 'running_mean', 'riv': 'running_var'}),
    'param': Field.vocabulary({'w': 'weight', 'b': 'bias'}),
    'nl': Field.vocabulary({n: n for n in ('theta', 'phi', 'g', 'out')}),  # nonlocal_helper.py's convs
}

# Keys with no Caffe2 blob: BatchNorm's batch counter. Caffe2 does not count batches; the counter only
# matters for momentum=None (cumulative averages), which the zoo never uses, so it is filled with 0 as in
# a freshly built BatchNorm.
UNBACKED_KEY = re.compile(r'.*\.num_batches_tracked')


def _compile(template: str, side: str) -> re.Pattern:
    parts = re.split(r'\{(\w+)\}', template)
    regex = ''.join(re.escape(p) if i % 2 == 0 else f'(?P<{p}>{getattr(FIELDS[p], side + "_pattern")})'
                    for i, p in enumerate(parts))
    return re.compile(regex)


@dataclass(frozen=True)
class _Rule:
    caffe2: str
    zoo: str
    caffe2_regex: re.Pattern
    zoo_regex: re.Pattern


_RULES = tuple(_Rule(c, z, _compile(c, 'caffe2'), _compile(z, 'zoo')) for c, z in BLOB_RULES)


def _translate(name: str, source: str, target: str) -> Optional[str]:
    matches = [r for r in _RULES if getattr(r, f'{source}_regex').fullmatch(name)]
    if not matches:
        return None
    if len(matches) > 1:  # a bug in the table, not in the file
        raise AssertionError(f'{name!r} matches several rules: {[getattr(r, source) for r in matches]}')
    rule = matches[0]
    groups = getattr(rule, f'{source}_regex').fullmatch(name).groupdict()
    convert = 'to_zoo' if target == 'zoo' else 'to_caffe2'
    return getattr(rule, target).format(**{k: getattr(FIELDS[k], convert)(v) for k, v in groups.items()})


def zoo_key(blob: str) -> Optional[str]:
    """The zoo state-dict key of a Caffe2 blob name, or None when no rule covers it."""
    return _translate(blob, 'caffe2', 'zoo')


def caffe2_blob_name(key: str) -> Optional[str]:
    """The Caffe2 blob name of a zoo state-dict key, or None when no rule covers it."""
    return _translate(key, 'zoo', 'caffe2')


# ----------------------------------------------------------------------------------------------------------
# Strict conversion.

Shape = Tuple[int, ...]


class Caffe2MappingError(ValueError):
    """The blobs do not fit the target model exactly. The first line of the message summarises; one line
    follows for every blob that could not be placed, every key left empty and every shape mismatch."""

    def __init__(self, source: str, target: str, unplaced: Sequence[str], empty: Sequence[str],
                 mismatched: Sequence[str], note: str = ''):
        self.source, self.target = source, target
        self.unplaced, self.empty, self.mismatched = list(unplaced), list(empty), list(mismatched)
        counts = [f'{len(self.unplaced)} blob(s) not placed', f'{len(self.empty)} key(s) left empty',
                  f'{len(self.mismatched)} shape/dtype mismatch(es)']
        lines = [f'{source} does not fit {target}: {", ".join(counts)}{note}']
        lines += [f'  blob not placed: {b}' for b in self.unplaced]
        lines += [f'  key left empty: {k}' for k in self.empty]
        lines += [f'  mismatch: {m}' for m in self.mismatched]
        super().__init__('\n'.join(lines))


@dataclass
class Conversion:
    """A converted state dict and where each tensor came from."""
    state_dict: Dict[str, torch.Tensor]
    placed: List[Tuple[str, str, Shape]] = field(default_factory=list)   # (blob, key, shape)
    filled: List[str] = field(default_factory=list)                      # keys with no blob, set to 0

    def table(self) -> str:
        """blob -> key -> shape, one line each, then the keys filled without a blob."""
        width_blob = max((len(b) for b, _, _ in self.placed), default=4)
        width_key = max((len(k) for _, k, _ in self.placed), default=3)
        lines = [f'{b:<{width_blob}}  ->  {k:<{width_key}}  {tuple(s)}' for b, k, s in self.placed]
        lines += [f'{"(no blob: 0)":<{width_blob}}  ->  {k}' for k in self.filled]
        return '\n'.join(lines)


def _as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # Arrays unpickled from a str buffer may be read-only; copy only then (checkpoints are hundreds of MB).
    array = np.require(array, requirements=['C', 'W'])
    return torch.from_numpy(array).to(dtype)


def blobs_to_state_dict(blobs: Mapping[str, np.ndarray], target: Mapping[str, torch.Tensor],
                        source: str = 'checkpoint', target_name: str = 'the model') -> Conversion:
    """Place every blob at its key of ``target`` (a state dict; only its keys, shapes and dtypes are read).

    Strict: every key of ``target`` is filled, every blob is used, every shape and dtype kind checked; any
    failure raises one Caffe2MappingError listing all of them.
    """
    state_dict: Dict[str, torch.Tensor] = {}
    conversion = Conversion(state_dict)
    unplaced, mismatched, mismatched_keys = [], [], set()
    for blob in sorted(blobs):
        array = blobs[blob]
        key = zoo_key(blob)
        if key is None:
            unplaced.append(f'{blob} {tuple(array.shape)} (no rule for this name)')
            continue
        if key not in target:
            unplaced.append(f'{blob} {tuple(array.shape)} -> {key} (not a key of {target_name})')
            continue
        want = target[key]
        if tuple(array.shape) != tuple(want.shape):
            mismatched.append(f'{blob} has shape {tuple(array.shape)}, {key} needs {tuple(want.shape)}')
            mismatched_keys.add(key)
            continue
        if want.dtype.is_floating_point and array.dtype.kind != 'f':
            mismatched.append(f'{blob} has dtype {array.dtype}, {key} needs {want.dtype}')
            mismatched_keys.add(key)
            continue
        state_dict[key] = _as_tensor(array, want.dtype)
        conversion.placed.append((blob, key, tuple(array.shape)))
    empty = []
    for key, want in target.items():
        if key in state_dict:
            continue
        if UNBACKED_KEY.fullmatch(key):
            state_dict[key] = torch.zeros(want.shape, dtype=want.dtype)
            conversion.filled.append(key)
        elif key not in mismatched_keys:  # a key whose blob has the wrong shape is reported once, as that
            blob = caffe2_blob_name(key)
            empty.append(f'{key} (expects blob {blob})' if blob else f'{key} (no rule names a blob for it)')
    if unplaced or empty or mismatched:
        raise Caffe2MappingError(source, target_name, unplaced, empty, mismatched)
    # The model's own key order, so saved files and the printed table read like the model.
    conversion.state_dict = {k: state_dict[k] for k in target}
    order = {k: i for i, k in enumerate(target)}
    conversion.placed.sort(key=lambda placed: order[placed[1]])
    return conversion


def state_dict_to_blobs(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """The reverse: a zoo state dict as Caffe2 blobs (weights and statistics; no training state).

    Keys without a Caffe2 counterpart (num_batches_tracked) are dropped; any other key no rule covers
    is an error.
    """
    blobs, unmapped = {}, []
    for key, tensor in state_dict.items():
        if UNBACKED_KEY.fullmatch(key):
            continue
        blob = caffe2_blob_name(key)
        if blob is None:
            unmapped.append(key)
            continue
        blobs[blob] = tensor.detach().cpu().numpy().copy()
    if unmapped:
        raise Caffe2MappingError('state dict', 'Caffe2 blob names', unmapped, [], [])
    return blobs


# ----------------------------------------------------------------------------------------------------------
# Which model a checkpoint is.

# Why some models cannot be told apart: the 8x8/32x4 layout differs from 32x2/128x1 only in conv1's
# temporal stride and pool1's kernel and stride, which hold no weights.
AMBIGUITY_NOTE = ('32x2 vs 8x8 (and 128x1 vs 32x4) cannot be inferred from a checkpoint: they differ only in '
                  "the stem's temporal stride and pool1, which have no weights, so every weight has the same "
                  'shape and the converted state dict is the same for each')


@dataclass(frozen=True)
class CheckpointTraits:
    """What the blob names and shapes say about the architecture."""
    conv1_temporal_kernel: int
    nonlocal_blocks: int
    frozen_bn: bool

    @property
    def family(self) -> str:
        return 'C2D' if self.conv1_temporal_kernel == 1 else 'I3D'

    def describe(self) -> str:
        nl = f'{self.nonlocal_blocks} non-local blocks' if self.nonlocal_blocks else 'no non-local blocks'
        bn = 'frozen BN (affine _s/_b only)' if self.frozen_bn else 'BatchNorm with running statistics'
        return f'{self.family} (conv1 temporal kernel {self.conv1_temporal_kernel}), {nl}, {bn}'


def checkpoint_traits(shapes: Mapping[str, Shape], source: str = 'checkpoint') -> CheckpointTraits:
    """C2D vs I3D from conv1_w's temporal size, non-local from its blobs, frozen BN from missing _rm/_riv."""
    if 'conv1_w' not in shapes or len(shapes['conv1_w']) != 5:
        raise Caffe2MappingError(source, 'any video-nonlocal-net model', [], ['conv1.weight (expects blob conv1_w '
                                 'of shape (64, 3, T, 7, 7))'], [])
    nonlocal_blocks = {m.group(1) for m in map(re.compile(r'nonlocal_conv(\d+_\d+)_').match, shapes) if m}
    has_scale = any(b.endswith('_bn_s') for b in shapes)
    has_stats = any(b.endswith(('_bn_rm', '_bn_riv')) for b in shapes)
    return CheckpointTraits(int(shapes['conv1_w'][2]), len(nonlocal_blocks), has_scale and not has_stats)


def matching_models(shapes: Mapping[str, Shape], targets: Mapping[str, Mapping[str, torch.Tensor]]) -> List[str]:
    """The models of ``targets`` (name -> state dict) whose every weight blob has exactly these names and shapes."""
    found = {b: tuple(s) for b, s in shapes.items()}
    names = []
    for name, target in targets.items():
        wanted = {caffe2_blob_name(k): tuple(t.shape) for k, t in target.items() if not UNBACKED_KEY.fullmatch(k)}
        if wanted == found:
            names.append(name)
    return names


def closest_models(traits: CheckpointTraits, targets: Mapping[str, Mapping[str, torch.Tensor]]) -> List[str]:
    """The models of ``targets`` with the same traits (used to explain why nothing fits exactly)."""
    names = []
    for name, target in targets.items():
        own = checkpoint_traits({caffe2_blob_name(k): tuple(t.shape) for k, t in target.items()
                                 if not UNBACKED_KEY.fullmatch(k)})
        if own == traits:
            names.append(name)
    return names
