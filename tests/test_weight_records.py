"""Honest weight records: published accuracy is copied into the outputs only for the published checkpoint; a
local file is checked against the entry's pinned sha256 (eval.kit.models.weights_provenance, the one rule)."""
import hashlib
import json
import os

import pytest
import torch

import feature_test_models  # noqa: F401  (registers tiny_feature_net)
import zoo
from eval.data.synthetic import write_synthetic_video
from eval.kit.models import weights_provenance
from feature_test_models import SMALL
from zoo import _registry

PUBLISHED = dict(top1=73.6, top5=90.9, url='https://example.invalid/published.pkl', source_name='published')


def sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.fixture
def local_file(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.manual_seed(0)
    torch.save(zoo.create_model('tiny_feature_net').state_dict(), path)
    return str(path)


def test_the_entrys_own_download_carries_the_published_accuracy():
    record = weights_provenance(zoo.VideoPretrainedCfg(**PUBLISHED, sha256='ab' * 32))
    assert record['published_checkpoint'] and record['published_top1'] == 73.6 and record['sha256'] == 'ab' * 32


def test_a_local_file_matching_the_pinned_sha256_is_the_published_checkpoint(local_file):
    record = weights_provenance(zoo.VideoPretrainedCfg(**PUBLISHED, file=local_file, sha256=sha256(local_file).upper()))
    assert record['published_checkpoint'] and record['published_top1'] == 73.6 and record['published_top5'] == 90.9
    assert record['sha256'] == sha256(local_file) and 'note' not in record


def test_a_local_file_of_another_sha256_is_not_the_published_checkpoint(local_file):
    record = weights_provenance(zoo.VideoPretrainedCfg(**PUBLISHED, file=local_file, sha256='0' * 64))
    assert not record['published_checkpoint'] and 'published_top1' not in record
    assert record['note'].startswith(f'local file, sha256 {sha256(local_file)}, not the published checkpoint')
    assert '0' * 64 in record['note']


def test_a_local_file_of_an_entry_without_a_pin_is_not_verified(local_file):
    cfg = zoo.VideoPretrainedCfg(**PUBLISHED, file=local_file, architecture='i3d_r50', tag='c2_kinetics400')
    record = weights_provenance(cfg)
    assert not record['published_checkpoint'] and 'published_top1' not in record
    assert 'not verified as the published checkpoint (no sha256 is pinned for i3d_r50.c2_kinetics400)' in record['note']


def test_a_shared_folder_is_not_the_published_checkpoint(tmp_path):
    cfg = zoo.VideoPretrainedCfg(**PUBLISHED, file=str(tmp_path), source='local-dir')
    record = weights_provenance(cfg)
    assert not record['published_checkpoint'] and 'published_top1' not in record and 'local-dir' in record['note']


# ------------------------------------------------------------------------------- through eval.features

@pytest.fixture
def published_tiny(monkeypatch):
    """tiny_feature_net registered as if it had published weights: accuracy and a pinned sha256 (given)."""
    def register(pinned):
        base = _registry._pretrained_cfgs['tiny_feature_net']
        cfg = base.replace(**PUBLISHED, sha256=pinned)
        monkeypatch.setitem(_registry._pretrained_cfgs, 'tiny_feature_net', cfg)
        monkeypatch.setitem(_registry._pretrained_tags, 'tiny_feature_net', {'': cfg})
    return register


def extract_with_weights_file(tmp_path, weights_file):
    import eval.features.job
    video = tmp_path / 'v.mp4'
    write_synthetic_video(str(video), num_frames=16, height=40, width=48, seed=1)
    out = tmp_path / 'out'
    code = eval.features.job.main(['--model', 'tiny_feature_net', '--weights-file', weights_file, '--data', str(video),
                                   '--out', str(out), '--workers', '0', '--no-progress', '--snippet', '16',
                                   '--stride', '16', *SMALL])
    assert code == 0
    sidecar = json.load(open(out / 'v.json'))
    manifest = json.load(open(out / 'manifest.json'))
    return sidecar, manifest


def weights_of(record):
    """The weights record wherever the sidecar keeps it."""
    text = json.dumps(record)
    assert text.count('"published_checkpoint"') >= 1, text[:2000]
    found = []

    def walk(node):
        if isinstance(node, dict):
            if 'published_checkpoint' in node:
                found.append(node)
            for value in node.values():
                walk(value)
    walk(record)
    return found[0]


def test_sidecar_of_a_non_matching_local_file_says_so(tmp_path, local_file, published_tiny):
    published_tiny('0' * 64)
    sidecar, manifest = extract_with_weights_file(tmp_path, local_file)
    for record in (weights_of(sidecar), manifest['info']['weights']):
        assert record['trained'] and not record['published_checkpoint']
        assert 'published_top1' not in record and 'published_top5' not in record
        assert record['note'].startswith(f'local file, sha256 {sha256(local_file)}, not the published checkpoint')
    assert '73.6' not in json.dumps(sidecar)


def test_sidecar_of_the_published_file_carries_its_accuracy(tmp_path, local_file, published_tiny):
    published_tiny(sha256(local_file))
    sidecar, _ = extract_with_weights_file(tmp_path, local_file)
    record = weights_of(sidecar)
    assert record['published_checkpoint'] and record['published_top1'] == 73.6
    assert record['source'] == os.path.abspath(local_file)
