"""Reading Caffe2 checkpoints: Python 2 cPickle files, training state dropped, every kind of bad file named."""
import gzip
import os
import pickle
import pickletools

import numpy as np
import pytest

from caffe2_checkpoints import (Py2Str, model_spec, py2_cpickle_dumps, random_blobs, training_checkpoint,
                                write_caffe2_checkpoint)
from converters.caffe2_pickle import Caffe2CheckpointError, read_caffe2_blobs


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A synthetic i3d_nl_r50_8x8 checkpoint and its weight blobs."""
    path = tmp_path_factory.mktemp('caffe2') / 'i3d_nonlocal_8x8_IN_pretrain_400k.pkl'
    return path, write_caffe2_checkpoint(path, 'i3d_nl_r50_8x8')


@pytest.fixture(scope='module')
def small_checkpoint_bytes():
    """A few real-looking blobs as Python 2 wrote them: enough for the bad-file cases."""
    rng = np.random.default_rng(1)
    weights = {'conv1_w': rng.standard_normal((64, 3, 5, 7, 7), dtype=np.float32),
               'pred_b': rng.standard_normal(400, dtype=np.float32)}
    return py2_cpickle_dumps(training_checkpoint(weights, frozen=False))


def test_generator_writes_python2_str_opcodes_and_numpy_core_globals(small_checkpoint_bytes):
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(small_checkpoint_bytes)]
    names = {name for name, _ in ops}
    assert ops[0] == ('PROTO', 2)
    assert {'SHORT_BINSTRING', 'BINSTRING'} <= names           # py2 str: keys, dtype codes, raw data
    assert not names & {'SHORT_BINUNICODE', 'BINUNICODE', 'BINBYTES', 'SHORT_BINBYTES'}  # nothing Python 3
    assert ('GLOBAL', 'numpy.core.multiarray _reconstruct') in ops
    assert ('GLOBAL', 'numpy dtype') in ops
    assert ('SHORT_BINSTRING', 'conv1_w_momentum') in ops
    assert ('SHORT_BINSTRING', 'model_iter') in ops


def test_plain_pickle_load_fails_on_a_python2_checkpoint(checkpoint):
    path, _ = checkpoint
    with open(path, 'rb') as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)  # what users of the real files see without encoding='latin1'


def test_reader_returns_every_weight_blob_bit_exact(checkpoint):
    path, weights = checkpoint
    blobs = read_caffe2_blobs(path)
    assert sorted(blobs) == sorted(weights)
    for name, array in weights.items():
        assert blobs[name].dtype == np.float32 and blobs[name].shape == array.shape
        assert np.array_equal(blobs[name], array), name


def test_reader_drops_momentum_lr_and_model_iter(checkpoint):
    path, _ = checkpoint
    blobs = read_caffe2_blobs(path)
    raw = pickle.load(open(path, 'rb'), encoding='latin1')['blobs']
    assert {'lr', 'model_iter', 'conv1_w_momentum', 'pred_w_momentum'} <= set(raw)
    assert not any(n.endswith('_momentum') or n in ('lr', 'model_iter') for n in blobs)


def test_frozen_bn_checkpoint_has_only_scale_and_shift(tmp_path):
    spec = model_spec('i3d_r50_32x4')
    weights = {k: v for k, v in random_blobs(spec).items() if k.startswith(('conv1', 'res_conv1'))}
    path = tmp_path / 'frozen.pkl'
    path.write_bytes(py2_cpickle_dumps(training_checkpoint(weights, frozen=True)))
    assert sorted(read_caffe2_blobs(path)) == ['conv1_w', 'res_conv1_bn_b', 'res_conv1_bn_s']
    raw = pickle.load(open(path, 'rb'), encoding='latin1')['blobs']
    assert 'res_conv1_bn_s_momentum' not in raw  # AffineChannel is not trained, so has no momentum


def _error(path) -> Caffe2CheckpointError:
    with pytest.raises(Caffe2CheckpointError) as info:
        read_caffe2_blobs(path)
    assert str(path) in str(info.value)
    return info.value


def test_gzip_file_is_named_as_gzip(tmp_path, small_checkpoint_bytes):
    path = tmp_path / 'model.pkl'
    path.write_bytes(gzip.compress(small_checkpoint_bytes))
    error = _error(path)
    assert error.kind == 'gzip' and 'gzip' in str(error)


@pytest.mark.parametrize('page', [b'<!DOCTYPE html>\n<html><body>404 Not Found</body></html>',
                                  b'<html><head><title>Access denied</title></head></html>',
                                  b'\n  <?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>'])
def test_html_error_page_is_named_as_html(tmp_path, page):
    path = tmp_path / 'model.pkl'
    path.write_bytes(page)
    error = _error(path)
    assert error.kind == 'html' and 'HTML' in str(error)


@pytest.mark.parametrize('keep', [0.5, -1], ids=['inside-array-data', 'before-stop'])
def test_truncated_pickle_is_named_as_truncated(tmp_path, small_checkpoint_bytes, keep):
    path = tmp_path / 'model.pkl'
    cut = int(len(small_checkpoint_bytes) * keep) if keep > 0 else len(small_checkpoint_bytes) + keep
    path.write_bytes(small_checkpoint_bytes[:cut])
    error = _error(path)
    assert error.kind == 'truncated' and 'truncated' in str(error)


def test_empty_file_is_named_as_empty(tmp_path):
    path = tmp_path / 'model.pkl'
    path.write_bytes(b'')
    error = _error(path)
    assert error.kind == 'empty' and 'empty' in str(error)


def test_missing_file_is_named_as_missing(tmp_path):
    error = _error(tmp_path / 'nowhere.pkl')
    assert error.kind == 'missing'


@pytest.mark.parametrize('obj, detail', [
    (400000, 'holds int'),
    ({'model': {}}, "not a Caffe2 checkpoint {'blobs'"),
    ({'blobs': (1, 2)}, "['blobs'] is a tuple"),
    ({'blobs': {'conv1_w': Py2Str(b'text')}}, "'conv1_w' (str)"),
], ids=['int', 'dict-without-blobs', 'blobs-not-dict', 'blob-not-array'])
def test_pickle_that_is_not_a_blobs_dict_is_named(tmp_path, obj, detail):
    path = tmp_path / 'model.pkl'
    path.write_bytes(py2_cpickle_dumps(obj))
    error = _error(path)
    assert error.kind == 'not_blobs' and detail in str(error)


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_naming_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'model.pkl'
    path.write_bytes(pickle.dumps({'blobs': _RunsShell(f'touch {marker}')}, protocol=2))
    error = _error(path)
    assert error.kind == 'unsafe_global' and 'system' in str(error)
    assert not marker.exists()


def test_the_refused_payload_does_run_under_an_unrestricted_unpickler(tmp_path):
    # Control for the test above: the payload is live, so its refusal is what kept the marker away.
    marker = tmp_path / 'ran'
    pickle.loads(pickle.dumps(_RunsShell(f'touch {marker}'), protocol=2))
    assert marker.exists()
