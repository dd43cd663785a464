"""A restricted unpickler for foreign checkpoints: only the numpy globals that arrays need, nothing else.

Unpickling runs whatever callable the file names; a downloaded checkpoint must not be able to name
``os.system``. Files written by Python 2 cPickle need ``encoding='latin1'`` for their byte strings.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import BinaryIO, FrozenSet, Tuple, Union

# What a pickle of numpy arrays and plain containers references, under numpy 1.x and 2.x module names.
NUMPY_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset({
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('_codecs', 'encode'),  # how Python 3 writes bytes at protocol <= 2; only re-encodes a string
})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allowed set; nothing it names was called."""


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, allowed: FrozenSet[Tuple[str, str]], source: str, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise UnsafePickleError(
                f'{self.source}: refusing to load global {module}.{name}: a weights file only needs numpy '
                f'arrays; this file may try to run code (allowed: '
                f'{", ".join(sorted(f"{m}.{n}" for m, n in self.allowed))})')
        # numpy 2 moved numpy.core to numpy._core; old pickles name the old path.
        if module.startswith('numpy.core'):
            import numpy
            if hasattr(numpy, '_core'):
                module = 'numpy._core' + module[len('numpy.core'):]
        return super().find_class(module, name)


def restricted_load(source: Union[str, os.PathLike, bytes, BinaryIO],
                    allowed: FrozenSet[Tuple[str, str]] = NUMPY_GLOBALS, encoding: str = 'latin1'):
    """Unpickle ``source`` (a path, the bytes, or a binary file) allowing only ``allowed`` globals."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, 'rb') as f:
            return RestrictedUnpickler(f, allowed, os.fspath(source), encoding=encoding).load()
    if isinstance(source, bytes):
        return RestrictedUnpickler(io.BytesIO(source), allowed, '<bytes>', encoding=encoding).load()
    name = getattr(source, 'name', '<stream>')
    return RestrictedUnpickler(source, allowed, str(name), encoding=encoding).load()
