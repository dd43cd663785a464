"""Synthetic video-nonlocal-net checkpoints, written opcode for opcode as Python 2 cPickle (protocol 2) wrote them.

The real files cannot be downloaded in tests. These have their structure: `{'blobs': {...}}` with every
weight and BN statistic under its Caffe2 name (from resnet_video.py / nonlocal_helper.py naming), the SGD
momentum of every trained parameter, `lr` (an array) and `model_iter` (an int); strings are Python 2 `str`
(SHORT_BINSTRING / BINSTRING) and arrays reference `numpy.core.multiarray._reconstruct`, so Python 3's
plain `pickle.load` fails on them exactly as it does on the published files.

The blob names are derived here from the Caffe2 naming rules and the zoo's ResNet3DSpec, independently of
the converter's rule table, so a test that converts them checks the table rather than restating it.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

import zoo
from zoo.resnet3d import ResNet3D, ResNet3DSpec

# ----------------------------------------------------------------------------------------------------------
# A Python 2 cPickle protocol-2 emitter: only the opcodes cPickle used for these files.


class Py2Str(bytes):
    """A Python 2 `str` (bytes): written with SHORT_BINSTRING / BINSTRING, as cPickle did."""


class RawData(Py2Str):
    """An array's raw buffer: a fresh `str` object per array in Python 2, so never shared through the memo."""


class Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class Reduce:
    """What `obj.__reduce__()` returned: callable(*args), then BUILD with `state`. `memo_key` marks objects
    that were one Python object in Python 2 (numpy's cached float32 dtype), written once then fetched."""

    def __init__(self, func: Global, args: tuple, state=None, memo_key=None):
        self.func, self.args, self.state, self.memo_key = func, args, state, memo_key


NDARRAY_RECONSTRUCT = Global('numpy.core.multiarray', '_reconstruct')
NDARRAY = Global('numpy', 'ndarray')
DTYPE = Global('numpy', 'dtype')


def py2_ndarray(array: np.ndarray) -> Reduce:
    """numpy 1.x `ndarray.__reduce__` under Python 2: _reconstruct(ndarray, (0,), 'b') then
    __setstate__((1, shape, dtype, is_fortran, raw bytes as str))."""
    array = np.ascontiguousarray(array)
    descr = array.dtype.str  # e.g. '<f4'
    byte_order, kind = descr[0], descr[1:]
    # numpy 1.x dtype.__reduce__: dtype(kind, 0, 1) then state (3, byteorder, subarray, names, fields,
    # elsize, alignment, flags); '|' for single-byte types.
    dtype = Reduce(DTYPE, (Py2Str(kind.encode()), 0, 1),
                   (3, Py2Str(byte_order.encode()), None, None, None, -1, -1, 0), memo_key=('dtype', descr))
    return Reduce(NDARRAY_RECONSTRUCT, (NDARRAY, (0,), Py2Str(b'b')),
                  (1, tuple(int(d) for d in array.shape), dtype, False, RawData(array.tobytes())))


class Py2Pickler:
    """Serialises Py2Str, int, bool, None, tuple, dict, Global, Reduce and numpy arrays as cPickle protocol 2."""

    SETITEMS_BATCH = 1000  # cPickle's BATCHSIZE

    def __init__(self, file: BinaryIO):
        self.out = _Appender(file)
        self.memo: Dict[object, int] = {}
        self.memo_size = 0

    def dump(self, obj) -> None:
        self.out += b'\x80\x02'  # PROTO 2
        self.save(obj)
        self.out += b'.'  # STOP

    def _put(self, key=None) -> None:
        index = self.memo_size
        self.memo_size += 1
        if key is not None:
            self.memo[key] = index
        self.out += b'q' + bytes([index]) if index < 256 else b'r' + struct.pack('<I', index)  # (LONG_)BINPUT

    def _get(self, key) -> bool:
        index = self.memo.get(key)
        if index is None:
            return False
        self.out += b'h' + bytes([index]) if index < 256 else b'j' + struct.pack('<I', index)  # (LONG_)BINGET
        return True

    def save(self, obj) -> None:
        if isinstance(obj, np.ndarray):
            obj = py2_ndarray(obj)
        if obj is None:
            self.out += b'N'
        elif obj is True or obj is False:
            self.out += b'\x88' if obj else b'\x89'  # NEWTRUE / NEWFALSE
        elif isinstance(obj, int):
            self._save_int(obj)
        elif isinstance(obj, Py2Str):
            self._save_str(obj)
        elif isinstance(obj, tuple):
            self._save_tuple(obj)
        elif isinstance(obj, dict):
            self._save_dict(obj)
        elif isinstance(obj, Global):
            if not self._get(('global', obj.module, obj.name)):
                self.out += b'c' + f'{obj.module}\n{obj.name}\n'.encode()
                self._put(('global', obj.module, obj.name))
        elif isinstance(obj, Reduce):
            self._save_reduce(obj)
        else:
            raise TypeError(f'no Python 2 pickle form for {type(obj).__name__}; wrap strings in Py2Str')

    def _save_int(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b'K' + bytes([value])                  # BININT1
        elif 0 <= value < 65536:
            self.out += b'M' + struct.pack('<H', value)        # BININT2
        elif -2 ** 31 <= value < 2 ** 31:
            self.out += b'J' + struct.pack('<i', value)        # BININT
        else:
            raise ValueError(f'{value} is a Python 2 long; not needed for these files')

    def _save_str(self, value: Py2Str) -> None:
        key = None if isinstance(value, RawData) else ('str', bytes(value))
        if key is not None and self._get(key):
            return
        if len(value) < 256:
            self.out += b'U' + bytes([len(value)]) + value                  # SHORT_BINSTRING
        else:
            self.out += b'T' + struct.pack('<i', len(value))                # BINSTRING
            self.out += value
        self._put(key)

    def _save_tuple(self, items: tuple) -> None:
        if not items:
            self.out += b')'                                    # EMPTY_TUPLE, never memoized
            return
        if len(items) <= 3:
            for item in items:
                self.save(item)
            self.out += {1: b'\x85', 2: b'\x86', 3: b'\x87'}[len(items)]   # TUPLE1/2/3
        else:
            self.out += b'('                                    # MARK
            for item in items:
                self.save(item)
            self.out += b't'                                    # TUPLE
        self._put()

    def _save_dict(self, mapping: dict) -> None:
        self.out += b'}'                                        # EMPTY_DICT
        self._put()
        items = list(mapping.items())
        for start in range(0, len(items), self.SETITEMS_BATCH):
            batch = items[start:start + self.SETITEMS_BATCH]
            if len(batch) == 1:
                key, value = batch[0]
                self.save(Py2Str(key.encode()) if isinstance(key, str) else key)
                self.save(value)
                self.out += b's'                                # SETITEM
                continue
            self.out += b'('
            for key, value in batch:
                self.save(Py2Str(key.encode()) if isinstance(key, str) else key)
                self.save(value)
            self.out += b'u'                                    # SETITEMS

    def _save_reduce(self, obj: Reduce) -> None:
        if obj.memo_key is not None and self._get(obj.memo_key):
            return
        self.save(obj.func)
        self.save(obj.args)
        self.out += b'R'                                        # REDUCE
        self._put(obj.memo_key)
        if obj.state is not None:
            self.save(obj.state)
            self.out += b'b'                                    # BUILD


class _Appender:
    """`out += chunk` onto a binary file: arrays of hundreds of MB are streamed, not concatenated."""

    def __init__(self, file: BinaryIO):
        self.file = file

    def __iadd__(self, chunk: bytes) -> '_Appender':
        self.file.write(chunk)
        return self


def py2_cpickle_dump(obj, file: BinaryIO) -> None:
    """`cPickle.dump(obj, file, 2)` as Python 2 with numpy 1.x wrote it; Python `str` keys become Py2Str."""
    Py2Pickler(file).dump(obj)


def py2_cpickle_dumps(obj) -> bytes:
    buffer = io.BytesIO()
    py2_cpickle_dump(obj, buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Caffe2 blob names and shapes of a family member, from the naming of video-nonlocal-net's resnet_video.py.

BN_STATISTICS = ('rm', 'riv')
Shape = Tuple[int, ...]


def _bn_blobs(prefix: str, channels: int, frozen: bool) -> Iterator[Tuple[str, Shape]]:
    # Caffe2 SpatialBN stores scale/shift/running mean/running variance; AffineChannel only scale/shift.
    for suffix in ('s', 'b') if frozen else ('s', 'b') + BN_STATISTICS:
        yield f'{prefix}_{suffix}', (channels,)


def caffe2_blob_shapes(spec: ResNet3DSpec, num_classes: int = 400) -> Dict[str, Shape]:
    """Every weight/statistic blob a Caffe2 checkpoint of this architecture holds, with its shape."""
    frozen = spec.norm == 'frozen_affine'
    shapes: Dict[str, Shape] = {'conv1_w': (spec.stem_width, 3, spec.conv1_temporal_kernel, 7, 7)}
    shapes.update(_bn_blobs('res_conv1_bn', spec.stem_width, frozen))
    in_ch = spec.stem_width
    for stage_index, (count, width) in enumerate(zip(spec.layers, spec.widths)):
        stage = stage_index + 2  # Caffe2 stages are res2..res5
        out_ch = 4 * width
        for i in range(count):
            name = f'res{stage}_{i}'
            shapes[f'{name}_branch2a_w'] = (width, in_ch, spec.temporal_kernels[stage_index][i], 1, 1)
            shapes.update(_bn_blobs(f'{name}_branch2a_bn', width, frozen))
            shapes[f'{name}_branch2b_w'] = (width, width, 1, 3, 3)
            shapes.update(_bn_blobs(f'{name}_branch2b_bn', width, frozen))
            shapes[f'{name}_branch2c_w'] = (out_ch, width, 1, 1, 1)
            shapes.update(_bn_blobs(f'{name}_branch2c_bn', out_ch, frozen))
            if i == 0:  # projection shortcut: the channel count changes in every stage's first block
                shapes[f'{name}_branch1_w'] = (out_ch, in_ch, 1, 1, 1)
                shapes.update(_bn_blobs(f'{name}_branch1_bn', out_ch, frozen))
            if i in spec.nonlocal_blocks[stage_index]:
                nl, inner = f'nonlocal_conv{stage}_{i}', out_ch // 2
                for branch in ('theta', 'phi', 'g'):
                    shapes[f'{nl}_{branch}_w'] = (inner, out_ch, 1, 1, 1)
                    shapes[f'{nl}_{branch}_b'] = (inner,)
                shapes[f'{nl}_out_w'] = (out_ch, inner, 1, 1, 1)
                shapes[f'{nl}_out_b'] = (out_ch,)
                if spec.nonlocal_norm != 'none':  # NONLOCAL.USE_BN / USE_AFFINE False: no blob after `out`
                    shapes.update(_bn_blobs(f'{nl}_bn', out_ch, spec.nonlocal_norm == 'frozen_affine'))
            in_ch = out_ch
    shapes['pred_w'] = (num_classes, in_ch)
    shapes['pred_b'] = (num_classes,)
    return shapes


def is_trained(blob: str, frozen: bool) -> bool:
    """Whether Caffe2's SGD kept a `_momentum` blob for it: not for BN statistics, nor frozen affine."""
    if blob.endswith(tuple(f'_bn_{s}' for s in BN_STATISTICS)):
        return False
    if frozen and '_bn_' in blob:
        return False
    return True


def random_blobs(spec: ResNet3DSpec, seed: int = 0, num_classes: int = 400) -> Dict[str, np.ndarray]:
    """float32 weights of the right shapes, small enough that a forward pass stays finite; running
    variances positive."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for name, shape in caffe2_blob_shapes(spec, num_classes).items():
        if name.endswith('_riv'):
            blobs[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith('_w') and len(shape) == 5:
            blobs[name] = rng.standard_normal(shape, dtype=np.float32)
            blobs[name] *= np.float32((2.0 / np.prod(shape[1:])) ** 0.5)  # MSRA scale keeps activations finite
        else:
            blobs[name] = rng.standard_normal(shape, dtype=np.float32)
            blobs[name] *= np.float32(0.1)
    return blobs


def training_checkpoint(weights: Dict[str, np.ndarray], frozen: bool, model_iter: int = 400000,
                        lr: float = 1e-4) -> dict:
    """The dict video-nonlocal-net's checkpoints.py saved: weights plus momentum, `lr` and `model_iter`."""
    blobs = dict(weights)
    for name, value in weights.items():
        if is_trained(name, frozen):
            blobs[f'{name}_momentum'] = np.zeros_like(value)
    blobs['lr'] = np.array([lr], dtype=np.float32)
    blobs['model_iter'] = model_iter
    return {'blobs': blobs}


def model_spec(model_name: str) -> ResNet3DSpec:
    with torch.device('meta'):  # only the spec is wanted; no memory for the weights
        model = zoo.create_model(model_name)
    assert isinstance(model, ResNet3D)
    return model.spec


def write_caffe2_checkpoint(path: Union[str, Path], model: Union[str, ResNet3DSpec], seed: int = 0,
                            weights: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Write a synthetic Caffe2 checkpoint for a registered model (or a spec); returns its weight blobs."""
    spec = model_spec(model) if isinstance(model, str) else model
    weights = random_blobs(spec, seed) if weights is None else weights
    with open(path, 'wb') as f:
        py2_cpickle_dump(training_checkpoint(weights, spec.norm == 'frozen_affine'), f)
    return weights
