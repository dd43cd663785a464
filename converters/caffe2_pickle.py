"""Reads a Caffe2 video-nonlocal-net checkpoint (a Python 2 cPickle of `{'blobs': {...}}`) into numpy arrays.

Only the numpy globals that arrays need are allowed (see safe_unpickle). A file that is not such a pickle
(gzip, an HTML page, truncated, empty, some other object) gets a Caffe2CheckpointError that says which.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Dict

import numpy as np

from .safe_unpickle import UnsafePickleError, restricted_load

# Training state video-nonlocal-net's checkpoints.py saved beside the weights: SGD momentum of every
# trained parameter, the learning rate and the iteration counter. None of it belongs in a model.
TRAINING_STATE = re.compile(r'.*_momentum|lr|model_iter')


class Caffe2CheckpointError(ValueError):
    """A file that cannot be read as a Caffe2 checkpoint; ``kind`` says why and the message names the file.

    Kinds: missing, empty, gzip, zip, html, not_pickle, truncated, unsafe_global, corrupt, not_blobs.
    """

    def __init__(self, path: str, kind: str, detail: str):
        super().__init__(f'{path}: {detail}')
        self.path = path
        self.kind = kind


def _sniff(path: str, head: bytes) -> None:
    """Recognise the files users save under a .pkl name by mistake, before unpickling them."""
    if not head:
        raise Caffe2CheckpointError(path, 'empty', 'the file is empty (0 bytes): an interrupted download? '
                                                   'delete it and download again')
    if head.startswith(b'\x1f\x8b'):
        raise Caffe2CheckpointError(path, 'gzip', 'is a gzip-compressed file, not a pickle: decompress it '
                                                  '(gunzip) or download the uncompressed .pkl')
    if head.startswith(b'PK\x03\x04'):
        raise Caffe2CheckpointError(path, 'zip', 'is a zip archive (a PyTorch .pth checkpoint?), not a Caffe2 '
                                                 'pickle: load it as a zoo .pth instead')
    # '<' is not a pickle opcode, so a leading '<' is markup: typically an error or login page that a
    # browser or proxy saved under the checkpoint's name.
    if head.lstrip().startswith(b'<'):
        start = head.lstrip()[:40].decode('latin1').split('\n')[0]
        raise Caffe2CheckpointError(path, 'html', f'is an HTML/XML page ({start!r}...), not a pickle: the '
                                                  'download returned an error page; download it again')


def _unpickle(path: str):
    try:
        return restricted_load(path, encoding='latin1')  # Python 2 `str` -> latin1 keeps every byte
    except UnsafePickleError as e:
        raise Caffe2CheckpointError(path, 'unsafe_global', f'refused: {str(e).split(": ", 1)[-1]}') from e
    except EOFError as e:
        raise Caffe2CheckpointError(path, 'truncated', 'the pickle ends early (truncated download?): '
                                                       'delete it and download again') from e
    except pickle.UnpicklingError as e:
        if 'truncated' in str(e):
            raise Caffe2CheckpointError(path, 'truncated', 'the pickle data is truncated (interrupted '
                                                           'download?): delete it and download again') from e
        if 'invalid load key' in str(e):
            raise Caffe2CheckpointError(path, 'not_pickle', f'is not a pickle ({e})') from e
        raise Caffe2CheckpointError(path, 'corrupt', f'the pickle is corrupt: {e}') from e
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError, MemoryError) as e:
        # Raised by numpy's array reconstruction or by opcodes fed garbage.
        raise Caffe2CheckpointError(path, 'corrupt', f'the pickle is corrupt: {type(e).__name__}: {e}') from e


def read_caffe2_blobs(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """The named arrays of a Caffe2 checkpoint, minus its training state (momentum, lr, model_iter)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise Caffe2CheckpointError(path, 'missing', 'no such file')
    with open(path, 'rb') as f:
        head = f.read(512)
    _sniff(path, head)
    obj = _unpickle(path)
    if not isinstance(obj, dict) or 'blobs' not in obj:
        what = f'a dict with keys {sorted(map(str, obj))[:8]}' if isinstance(obj, dict) else type(obj).__name__
        raise Caffe2CheckpointError(path, 'not_blobs', f"holds {what}, not a Caffe2 checkpoint {{'blobs': ...}}")
    blobs = obj['blobs']
    if not isinstance(blobs, dict):
        raise Caffe2CheckpointError(path, 'not_blobs', f"['blobs'] is a {type(blobs).__name__}, not a dict of arrays")
    arrays, bad = {}, []
    for name, value in blobs.items():
        if isinstance(name, str) and TRAINING_STATE.fullmatch(name):
            continue
        if isinstance(name, str) and isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            bad.append(f'{name!r} ({type(value).__name__})')
    if bad:
        raise Caffe2CheckpointError(path, 'not_blobs', f"['blobs'] holds entries that are not named arrays: "
                                                       f"{', '.join(sorted(bad))}")
    if not arrays:
        raise Caffe2CheckpointError(path, 'not_blobs', "['blobs'] holds no weights")
    return arrays

