"""Scoring flags through the engine end to end, on the tiny registered network: reduced precision changes the
numbers (by more than float32 rounding, less than bf16's) and is recorded; logit averaging scores each video
with its mean raw output; --compile runs the network through torch.compile and scores as the eager fast path."""
import json
import os

import numpy as np
import pytest
import torch

import eval.kinetics
from eval.kit.meter import classification_metrics
from eval_test_models import cli_args, write_synthetic_set


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_synthetic_set(str(tmp_path_factory.mktemp('paths') / 'data'), 4)


def score(dataset, out, *extra):
    code = eval.kinetics.main(cli_args('tiny_video_net', dataset, str(out), '--no-flops', *extra))
    assert code == 0
    with np.load(os.path.join(out, 'scores.npz')) as scores:
        arrays = {k: scores[k] for k in scores.files}
    return arrays, json.load(open(os.path.join(out, 'summary.json')))


@pytest.fixture(scope='module')
def fp32_run(dataset, tmp_path_factory):
    return score(dataset, tmp_path_factory.mktemp('fp32') / 'out')


def test_bf16_scores_in_bfloat16_through_the_engine(dataset, fp32_run, tmp_path):
    """bf16 keeps 8 bits (unit roundoff 2^-8): the outputs move by far more than float32 rounding (1e-6
    relative) and by less than a few bf16 roundings of the tiny network's 3 layers."""
    # the eager model under autocast (the fast path casts the weights instead, and needs the timm protocol)
    (fp32, _), (bf16, summary) = fp32_run, score(dataset, tmp_path / 'bf16', '--precision', 'bf16', '--no-fast-path')
    assert summary['precision'] == 'bf16'
    scale = np.abs(fp32['outputs']).max()
    difference = np.abs(bf16['outputs'] - fp32['outputs']).max()
    assert 1e-4 * scale < difference < 5e-2 * scale, (difference, scale)


def test_logit_averaging_scores_videos_with_their_mean_output(dataset, fp32_run, tmp_path):
    """The metrics of an --aggregate logits run are those of the mean raw outputs (scores.npz keeps both
    means): the same as softmax averaging's outputs, and not what softmax averaging reports whenever the two
    rank the classes differently."""
    (fp32, _), (logits, summary) = fp32_run, score(dataset, tmp_path / 'logits', '--aggregate', 'logits')
    np.testing.assert_array_equal(logits['outputs'], fp32['outputs'])
    assert str(logits['aggregation']) == 'logits' and summary['views']['aggregation'] == 'logits'
    by_outputs = classification_metrics(logits['outputs'], logits['labels'])
    assert summary['metrics']['top1'] == pytest.approx(by_outputs['top1'])
    assert summary['metrics'].get('mean_class_accuracy', 0) == pytest.approx(by_outputs.get('mean_class_accuracy', 0))


@pytest.fixture
def compiled_networks(monkeypatch):
    """The class names of what torch.compile is called on in this test (it still compiles), with the network a
    PixelInput wraps; dynamo's caches are reset afterwards, so no later test runs a graph compiled here."""
    calls, real = [], torch.compile

    def spy(model, *args, **kwargs):
        inner = getattr(model, 'net', None)
        calls.append(type(model).__name__ + (f'({type(inner).__name__})' if inner is not None else ''))
        return real(model, *args, **kwargs)
    monkeypatch.setattr(torch, 'compile', spy)
    yield calls
    torch._dynamo.reset()


def test_compile_scores_through_torch_compile_as_the_eager_fast_path(dataset, fp32_run, tmp_path, compiled_networks):
    (fp32, _), (compiled, summary) = fp32_run, score(dataset, tmp_path / 'compiled', '--compile')
    # one graph: the pixel normalisation and the network (uint8 views in)
    assert compiled_networks == ['PixelInput(TinyVideoNet)'] and summary['compile']['compiled'] is True
    # inductor fuses and may reorder sums: float32 rounding
    np.testing.assert_allclose(compiled['outputs'], fp32['outputs'], rtol=1e-5, atol=1e-6)
