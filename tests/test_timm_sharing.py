"""timm's way of sharing weights: ``timm.models.save_for_hf(model, DIR)`` then
``timm.create_model('local-dir:DIR', pretrained=True)`` gives back every entry bit for bit with its video
config; ``python -m zoo.convert_caffe2 IN.pkl --hf DIR`` writes such a folder; ``hf-hub:`` is read through the
same code from a Hugging Face cache, offline."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import zoo
from caffe2_checkpoints import write_caffe2_checkpoint
from converters.caffe2_mapping import zoo_key

# Fields that say where the weights were read from: a loaded folder names itself (timm's file / source).
SOURCE_FIELDS = {'file', 'source', 'hf_hub_id', 'url'}


def saved_and_loaded(model, folder, name=None):
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    return timm.create_model(f'local-dir:{folder}', pretrained=True)


def video_fields(cfg):
    return {k: v for k, v in cfg.to_dict().items() if k not in SOURCE_FIELDS}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


# The zoo's own entries (other test modules register tiny models that timm's registry never sees).
ZOO_ENTRIES = [n for n in zoo.list_models() if zoo._registry._model_to_module[n].startswith('zoo.')]


@pytest.mark.parametrize('name', ZOO_ENTRIES)
def test_every_entry_round_trips_through_a_local_dir_bit_for_bit(name, tmp_path):
    torch.manual_seed(3)
    model = zoo.create_model(name)
    loaded = saved_and_loaded(model, tmp_path / name)
    assert_same_weights(model, loaded)
    assert video_fields(loaded.pretrained_cfg) == video_fields(model.pretrained_cfg)
    assert loaded.pretrained_cfg.source == 'local-dir' and loaded.pretrained_cfg.file == str(tmp_path / name)
    x = torch.rand(1, *model.pretrained_cfg.min_input_size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_config_json_keeps_the_video_fields(tmp_path):
    model = zoo.create_model('i3d_inception')
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    cfg = json.loads((tmp_path / 'config.json').read_text())['pretrained_cfg']
    assert (cfg['num_frames'], cfg['sampling_rate'], cfg['fps'], cfg['test_views']) == (64, 1, 25.0, [1, 1])
    assert cfg['mean'] == [0.5, 0.5, 0.5] and cfg['value_range'] == [0.0, 255.0]
    assert sorted(os.listdir(tmp_path)) == ['config.json', 'model.safetensors']


def test_a_port_entry_keeps_its_architecture_arguments(tmp_path):
    """video_features' weights need BN eps 1e-5 and a BN scale: the folder rebuilds that network."""
    torch.manual_seed(0)
    model = zoo.create_model('i3d_inception.video_features')
    loaded = saved_and_loaded(model, tmp_path)
    assert loaded.pretrained_cfg.tag == 'video_features'
    assert loaded.Conv3d_1a_7x7.bn.eps == 1e-5 and loaded.Mixed_5c.Branch_0.Conv3d_0a_1x1.bn.weight is not None
    assert loaded.pretrained_cfg.sha256 is None          # not the default entry's pinned DeepMind hash
    assert_same_weights(model, loaded)


def test_a_changed_head_round_trips(tmp_path):
    model = zoo.create_model('c2d_r50', num_classes=7)
    loaded = saved_and_loaded(model, tmp_path)
    assert loaded.num_classes == 7 and loaded.pretrained_cfg.num_classes == 7
    assert_same_weights(model, loaded)


def test_timm_fields_that_ask_for_something_else_are_refused():
    with pytest.raises(ValueError, match="crop_mode='squash'"):
        zoo.create_model('i3d_r50', pretrained_cfg_overlay=dict(crop_mode='squash'))


def test_convert_caffe2_writes_a_folder_timm_loads(tmp_path):
    source, folder = tmp_path / 'i3d_baseline_32x2.pkl', tmp_path / 'hf'
    weights = write_caffe2_checkpoint(source, 'i3d_r50', seed=5)
    result = subprocess.run([sys.executable, '-m', 'zoo.convert_caffe2', str(source), '--hf', str(folder),
                             '--model', 'i3d_r50', '--quiet'], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    assert f"local-dir:{folder}" in result.stdout
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == 'i3d_r50' and cfg['pretrained_cfg']['num_frames'] == 32
    net = timm.create_model(f'local-dir:{folder}', pretrained=True)
    state_dict = net.state_dict()
    for blob, array in weights.items():
        assert torch.equal(state_dict[zoo_key(blob)], torch.from_numpy(array)), blob


def test_hf_hub_source_reads_the_same_folder_from_a_hub_cache(tmp_path, monkeypatch):
    """hf-hub: offline: the folder laid out as huggingface_hub caches a repository (refs/main -> snapshot),
    HF_HUB_OFFLINE=1, so timm's hub code reads it without a network."""
    pytest.importorskip('huggingface_hub')
    torch.manual_seed(1)
    model = zoo.create_model('i3d_r50_8x8')
    commit = 'a' * 40
    repo = tmp_path / 'hub' / 'models--someone--i3d_r50_8x8'
    timm.models.save_for_hf(model, str(repo / 'snapshots' / commit), safe_serialization=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    loaded = timm.create_model('hf-hub:someone/i3d_r50_8x8', pretrained=True)
    assert loaded.pretrained_cfg.source == 'hf-hub' and loaded.pretrained_cfg.hf_hub_id == 'someone/i3d_r50_8x8'
    assert_same_weights(model, loaded)
