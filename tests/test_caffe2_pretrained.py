"""`pretrained=True` for Caffe2 entries (convert once, cache by sha256) and the `python -m zoo.convert_caffe2` CLI."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import converters.caffe2 as caffe2
import converters.download as download
import zoo
from caffe2_checkpoints import write_caffe2_checkpoint
from converters.caffe2 import load_pretrained as caffe2_load_pretrained
from converters.caffe2_mapping import zoo_key
from zoo.convert_caffe2 import main
from zoo.video_nonlocal_net import caffe2_target_state_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def i3d_checkpoint(tmp_path_factory):
    """A synthetic i3d_baseline_32x2 checkpoint (fits i3d_r50 and i3d_r50_8x8) and its weight blobs."""
    path = tmp_path_factory.mktemp('caffe2') / 'i3d_baseline_32x2_IN_pretrain_400k.pkl'
    return path, write_caffe2_checkpoint(path, 'i3d_r50', seed=11)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cfg(**overlay):
    return zoo.get_pretrained_cfg('i3d_r50').replace(overlay)


def load_pretrained(cfg, model_name, cache_dir):
    """The loader as the builder calls it, with the state dict of the architecture the checkpoint holds."""
    return caffe2_load_pretrained(cfg, model_name=model_name, target=caffe2_target_state_dict(model_name),
                                  cache_dir=cache_dir)


def _assert_holds_blobs(state_dict, weights):
    for blob, array in weights.items():
        assert torch.equal(state_dict[zoo_key(blob)], torch.from_numpy(array)), blob


# ---- load_pretrained

def test_load_pretrained_converts_a_local_pickle_into_the_full_state_dict(i3d_checkpoint, tmp_path):
    path, weights = i3d_checkpoint
    state_dict = load_pretrained(_cfg(file=str(path)), model_name='i3d_r50', cache_dir=tmp_path)
    assert list(state_dict) == list(zoo.create_model('i3d_r50').state_dict())
    _assert_holds_blobs(state_dict, weights)


def test_second_load_reads_the_cached_conversion_without_unpickling(i3d_checkpoint, tmp_path, monkeypatch):
    path, weights = i3d_checkpoint
    first = load_pretrained(_cfg(file=str(path)), model_name='i3d_r50', cache_dir=tmp_path)
    cached = tmp_path / 'converted' / f'i3d_r50-{_sha256(path)[:16]}.safetensors'
    assert cached.is_file()

    def no_unpickling(_path):
        raise AssertionError('the pickle was parsed a second time')
    monkeypatch.setattr(caffe2, 'read_caffe2_blobs', no_unpickling)
    second = load_pretrained(_cfg(file=str(path)), model_name='i3d_r50', cache_dir=tmp_path)
    assert list(second) == list(first) and all(torch.equal(second[k], first[k]) for k in first)


def test_a_different_source_file_gets_its_own_conversion(i3d_checkpoint, tmp_path):
    path, _ = i3d_checkpoint
    other = tmp_path / 'other.pkl'
    other_weights = write_caffe2_checkpoint(other, 'i3d_r50', seed=12)
    load_pretrained(_cfg(file=str(path)), model_name='i3d_r50', cache_dir=tmp_path)
    state_dict = load_pretrained(_cfg(file=str(other)), model_name='i3d_r50', cache_dir=tmp_path)
    _assert_holds_blobs(state_dict, other_weights)
    assert len(list((tmp_path / 'converted').glob('i3d_r50-*.safetensors'))) == 2


def test_without_a_file_the_registered_url_is_fetched_with_its_checksum(i3d_checkpoint, tmp_path, monkeypatch):
    path, weights = i3d_checkpoint
    calls = []

    def fake_fetch(url, **kwargs):
        calls.append((url, kwargs))
        return path
    monkeypatch.setattr(download, 'fetch', fake_fetch)
    cfg = _cfg(size=path.stat().st_size)
    state_dict = load_pretrained(cfg, model_name='i3d_r50', cache_dir=tmp_path)
    assert calls == [(cfg.url, dict(sha256=None, size=path.stat().st_size, cache_dir=tmp_path))]
    assert cfg.url == 'https://dl.fbaipublicfiles.com/video-nonlocal/i3d_baseline_32x2_IN_pretrain_400k.pkl'
    _assert_holds_blobs(state_dict, weights)


def test_local_file_that_differs_from_a_pinned_sha256_is_refused(i3d_checkpoint, tmp_path):
    path, _ = i3d_checkpoint
    with pytest.raises(download.ChecksumError, match=str(path)):
        load_pretrained(_cfg(file=str(path), sha256='0' * 64), model_name='i3d_r50', cache_dir=tmp_path)
    assert not (tmp_path / 'converted').exists()


def test_a_converted_zoo_safetensors_file_is_accepted_as_the_source(i3d_checkpoint, tmp_path, monkeypatch):
    path, weights = i3d_checkpoint
    out = tmp_path / 'i3d_r50.safetensors'
    assert main([str(path), str(out), '--model', 'i3d_r50', '--quiet']) == 0
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path / 'cache'))
    net = zoo.create_model('i3d_r50', pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    _assert_holds_blobs(net.state_dict(), weights)
    assert not (tmp_path / 'cache').exists()  # loaded as is: nothing converted


# ---- zoo.create_model end to end

def test_create_model_pretrained_with_a_local_pickle(i3d_checkpoint, tmp_path, monkeypatch):
    path, weights = i3d_checkpoint
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path))
    net = zoo.create_model('i3d_r50', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not net.training
    _assert_holds_blobs(net.state_dict(), weights)
    assert list((tmp_path / 'converted').glob('i3d_r50-*.safetensors'))


def test_num_classes_101_keeps_the_backbone_and_reinitialises_the_head(i3d_checkpoint, tmp_path, monkeypatch):
    path, weights = i3d_checkpoint
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path))
    net = zoo.create_model('i3d_r50', pretrained=True, num_classes=101, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_holds_blobs(net.state_dict(), {b: a for b, a in weights.items() if not b.startswith('pred_')})
    assert net.fc.weight.shape == (101, 2048)
    assert not torch.equal(net.fc.weight, torch.from_numpy(weights['pred_w'][:101]))
    assert torch.equal(net.fc.bias, torch.zeros(101))  # fresh head: Caffe2-style zero bias


# ---- the CLI

@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_cli_writes_the_state_dict_and_prints_blob_key_shape(i3d_checkpoint, tmp_path, capsys, suffix):
    path, weights = i3d_checkpoint
    out = tmp_path / f'i3d_r50{suffix}'
    assert main([str(path), str(out), '--model', 'i3d_r50']) == 0
    printed = capsys.readouterr().out
    assert any(line.split() == ['res2_0_branch2a_w', '->', 'layer1.0.conv1.weight', '(64,', '64,', '3,', '1,', '1)']
               for line in printed.splitlines())
    assert 'model: i3d_r50 (the same weights also fit i3d_r50_8x8)' in printed
    state_dict = load_file(out) if suffix == '.safetensors' else torch.load(out, weights_only=True)
    assert sorted(state_dict) == sorted(zoo.create_model('i3d_r50').state_dict())  # safetensors sorts keys
    _assert_holds_blobs(state_dict, weights)


def test_cli_without_model_writes_the_weights_and_names_every_model_they_fit(i3d_checkpoint, tmp_path, capsys):
    path, _ = i3d_checkpoint
    assert main([str(path), str(tmp_path / 'out.pth'), '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'the weights fit i3d_r50 and i3d_r50_8x8' in printed and 'cannot be inferred' in printed
    assert (tmp_path / 'out.pth').is_file()


def test_cli_with_a_model_the_weights_do_not_fit_exits_2_naming_the_blobs(i3d_checkpoint, tmp_path, capsys):
    path, _ = i3d_checkpoint
    assert main([str(path), str(tmp_path / 'out.pth'), '--model', 'c2d_r50', '--quiet']) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f'error: {path} does not fit c2d_r50') and 'the blobs fit i3d_r50, i3d_r50_8x8' in first
    assert 'conv1_w has shape (64, 3, 5, 7, 7), conv1.weight needs (64, 3, 1, 7, 7)' in err
    assert not (tmp_path / 'out.pth').exists()


def test_cli_bad_file_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / 'i3d.pkl'
    bad.write_bytes(b'<!DOCTYPE html><html>403 Forbidden</html>')
    result = subprocess.run([sys.executable, '-m', 'zoo.convert_caffe2', str(bad), str(tmp_path / 'o.pth')],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1 and result.stderr.startswith(f'error: {bad}: is an HTML')
    assert 'Traceback' not in result.stderr


def test_cli_sha256_prints_checksum_and_size(i3d_checkpoint, capsys):
    path, _ = i3d_checkpoint
    assert main(['--sha256', str(path)]) == 0
    printed = capsys.readouterr().out
    assert f'sha256: {_sha256(path)}' in printed and f'size:   {path.stat().st_size}' in printed


def test_cli_download_fetches_the_entry_url_into_the_cache(i3d_checkpoint, tmp_path, capsys, monkeypatch):
    path, _ = i3d_checkpoint
    calls = []

    def fake_fetch(url, **kwargs):
        calls.append((url, kwargs['cache_dir']))
        return path
    monkeypatch.setattr(download, 'fetch', fake_fetch)
    assert main(['--download', 'i3d_nl_r50', '--cache-dir', str(tmp_path)]) == 0
    assert calls == [('https://dl.fbaipublicfiles.com/video-nonlocal/i3d_nonlocal_32x2_IN_pretrain_400k.pkl',
                      str(tmp_path))]
    assert f'sha256: {_sha256(path)}' in capsys.readouterr().out


def test_cli_download_failure_exits_2(tmp_path, capsys, monkeypatch):
    def offline(url, **kwargs):
        raise download.OfflineError(f'{url} is not in the cache and downloads are switched off')
    monkeypatch.setattr(download, 'fetch', offline)
    assert main(['--download', 'i3d_r50']) == 2
    assert capsys.readouterr().err.startswith('error: https://dl.fbaipublicfiles.com/')
