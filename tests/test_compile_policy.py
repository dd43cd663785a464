"""The kit's compile policy (eval.kit.compiling): the rule and its threshold, the FLOP count it plans with (against
the textbook count), fixed shapes (a smaller last batch padded, never a new graph), the eager fallback when
compiling fails, every job running eagerly with one line when the C++ compiler is hidden from PATH, and the compiled
path of fine-tuning and FVD on tiny models (scoring's and features' compiled paths: test_eval_engine_paths.py,
test_features_cli.py; on the real clips with DeepMind's weights: benchmarks/test_compiled_real_clips.py, in CI)."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import eval.finetune.job
import eval.kinetics
from eval.features.job import main as features_main
from eval.kit import compiling
from eval.kit.compiling import (CompiledNetwork, CompileDecision, compiler_problem, decide_compile, flop_to_repay,
                                network_flop)
from eval_test_models import cli_args, write_synthetic_set
from finetune_test_models import assert_trained_alike, compiled_against_eager
from feature_test_models import feature_args

HIDDEN = 'torch.compile needs a C++ compiler for the CPU and none was found'


# ------------------------------------------------------------------------------------------- the rule

def test_network_flop_is_the_textbook_count_of_a_convolution_and_a_linear_layer():
    """2 FLOPs per multiply-add: a 3x3x3 convolution, 3 -> 8 channels, stride 1, padding 1, on 4x6x6, then a
    linear layer 8 -> 5 on the pooled vector; nothing is computed (the meta device)."""
    net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 5))
    expected = 2 * (8 * 3 * 27 * (4 * 6 * 6)) * 2 + 2 * 8 * 5 * 2       # batch 2
    assert network_flop(net, (2, 3, 4, 6, 6)) == expected
    assert next(net.parameters()).device.type == 'cpu'                   # the model itself is left alone


def test_the_rule_compiles_from_the_repay_threshold_and_the_flags_override_it(monkeypatch):
    monkeypatch.delenv('CXX', raising=False)
    cpu = torch.device('cpu')
    threshold = flop_to_repay(cpu, 'fp32')
    assert compiling.eager_seconds(threshold, cpu, 'fp32') == pytest.approx(compiling.REPAY_SECONDS['cpu'])
    assert decide_compile(None, cpu, 'fp32', threshold * 1.01).compiled
    below = decide_compile(None, cpu, 'fp32', threshold * 0.99)
    assert not below.compiled and 'too little to repay' in below.reason
    assert flop_to_repay(cpu, 'bf16') == pytest.approx(2 * threshold)    # bf16's eager rate is twice fp32's
    assert not decide_compile(None, cpu, 'fp32', None).compiled          # unknown work: eager
    assert decide_compile(True, cpu, 'fp32', 0.0).compiled               # --compile
    assert not decide_compile(False, cpu, 'fp32', threshold * 100).compiled
    unsupported = decide_compile(True, cpu, 'fp32', unsupported='a hook')
    assert not unsupported.compiled and unsupported.reason.startswith('a hook')
    assert decide_compile(None, cpu, 'fp32', threshold * 2).record()['requested'] == 'auto'
    training = decide_compile(None, cpu, 'fp32', threshold * 100, training=True)   # measured slower compiled
    assert not training.compiled and training.reason == compiling.TRAINING_CPU_REASON
    assert decide_compile(True, cpu, 'fp32', 0.0, training=True).compiled


def test_the_embedded_demo_stays_eager_and_a_kinetics_validation_compiles():
    """i3d_r50's 3x10 views at 256 (fully convolutional): the demo's 2 clips are under the threshold, the 19,881
    Kinetics-400 validation videos far over it (per rank of 8)."""
    import zoo
    model = zoo.create_model('i3d_r50')
    per_video = 30 * network_flop(model, (1, 3, 32, 256, 256), fully_conv=True)
    assert per_video == pytest.approx(2 * 1293e9, rel=0.01)             # fvcore's 43.1 GMAC a view, x 2
    cpu = torch.device('cpu')
    assert not decide_compile(None, cpu, 'fp32', 2 * per_video).compiled
    assert decide_compile(None, cpu, 'fp32', 19881 / 8 * per_video).compiled


def test_compiler_problem_names_the_missing_compiler(monkeypatch, tmp_path):
    monkeypatch.delenv('CXX', raising=False)
    assert compiler_problem(torch.device('cpu')) is None                  # this machine has g++
    monkeypatch.setenv('PATH', str(tmp_path))
    problem = compiler_problem(torch.device('cpu'))
    assert problem.startswith(HIDDEN) and 'g++' in problem
    decision = decide_compile(True, torch.device('cpu'), 'fp32')
    assert not decision.compiled and decision.reason.endswith('running the eager fast path')


def test_the_inductor_cache_lives_beside_the_zoo_cache(monkeypatch, tmp_path):
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path))
    assert compiling.inductor_cache_dir() == str(tmp_path / 'inductor')
    assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(tmp_path / 'inductor')
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'mine'))
    assert compiling.inductor_cache_dir() == str(tmp_path / 'mine')


# ------------------------------------------------------------------------------------------- fixed shapes, fallback

class Recorder(nn.Module):
    def __init__(self, fail=False):
        super().__init__()
        self.shapes, self.fail = [], fail

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        if self.fail:
            raise RuntimeError('InvalidCxxCompiler: no working C++ compiler found\nmore')
        return x.sum(dim=(1, 2)) * 2


def test_a_smaller_last_batch_is_padded_to_the_compiled_shape():
    eager, compiled = Recorder(), Recorder()
    net = CompiledNetwork(eager, compiled, batch_size=4, say=lambda s: None)
    x = torch.arange(3 * 2 * 5, dtype=torch.float32).view(3, 2, 5)
    torch.testing.assert_close(net(x), eager(x))
    assert compiled.shapes == [(4, 2, 5)]
    net(torch.ones(4, 2, 5))
    assert compiled.shapes == [(4, 2, 5)] * 2


def test_a_failed_compile_falls_back_to_eager_once_with_one_line():
    said = []
    eager, compiled = Recorder(), Recorder(fail=True)
    net = CompiledNetwork(eager, compiled, batch_size=2, say=said.append)
    x = torch.ones(1, 2, 5)
    torch.testing.assert_close(net(x), eager(x))
    net(x)
    assert len(compiled.shapes) == 1 and not net.compiled and len(said) == 1
    assert said[0] == ('compile  failed at run time (RuntimeError: InvalidCxxCompiler: no working C++ compiler '
                       'found); running the eager fast path from here on')
    record = compiling.compile_record(net, CompileDecision(True, '--compile', True))
    assert record['compiled'] is False and 'InvalidCxxCompiler' in record['fallback']


def test_a_network_given_the_pixels_takes_uint8_views_and_normalises_them_in_what_is_compiled(monkeypatch):
    """compiled_inference(pixels=...): the eager network and the compiled one (here compile_module is the identity,
    to test the wiring without a compile; the real compile: test_eval_engine_paths.py) take uint8 (B, T, H, W, 3)
    views, normalise them (BGR, mean, std) inside the module handed to the compiler, pad a smaller batch, and
    leave the caller's views untouched."""
    from eval.data.pixels import PixelNormalizer
    from zoo.inference import InferenceModel
    handed = []
    monkeypatch.setattr(compiling, 'compile_module', lambda module, device: handed.append(module) or module)
    torch.manual_seed(0)
    eager = InferenceModel(nn.Sequential(nn.Conv3d(3, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten()).eval())
    pixels = PixelNormalizer((110.0, 100.0, 90.0), (50.0, 60.0, 70.0), 'BGR')
    views = torch.randint(0, 256, (3, 4, 8, 8, 3), dtype=torch.uint8)
    kept = views.clone()
    reference = eager(pixels(views.clone()))
    plain = compiling.compiled_inference(eager, CompileDecision(False, 'test'), 'cpu', 4, pixels=pixels)
    torch.testing.assert_close(plain(views), reference, rtol=0, atol=0)
    net = compiling.compiled_inference(eager, CompileDecision(True, '--compile', True), 'cpu', 4,
                                       say=lambda line: None, pixels=pixels)
    torch.testing.assert_close(net(views), reference, rtol=0, atol=0)
    assert [type(m).__name__ for m in handed] == ['PixelInput'] and handed[0].net is eager.net and net.compiled
    assert torch.equal(views, kept)


# ------------------------------------------------------------------------------------------- every job, compiler hidden

@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """PATH holds nothing (the jobs run in this process, with an absolute Python), $CXX unset; torch.compile is
    made to fail loudly should anything still call it."""
    monkeypatch.delenv('CXX', raising=False)
    empty = tmp_path / 'empty-path'
    empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))

    def refuse(*args, **kwargs):
        raise AssertionError('torch.compile called without a compiler')
    monkeypatch.setattr(torch, 'compile', refuse)


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
    return write_synthetic_set(str(tmp_path_factory.mktemp('hidden') / 'data'), 2)


def one_line(text):
    lines = [line for line in text.splitlines() if HIDDEN in line]
    assert len(lines) == 1, text
    assert lines[0].startswith('compile  no: ') and lines[0].endswith('running the eager fast path')


def test_scoring_and_features_run_eagerly_and_say_so_without_a_compiler(no_compiler, videos, tmp_path, capsys):
    out = tmp_path / 'scores'
    assert eval.kinetics.main(cli_args('tiny_video_net', videos, str(out), '--no-flops', '--compile')) == 0
    one_line(capsys.readouterr().out)
    summary = json.load(open(out / 'summary.json'))
    assert summary['compile']['compiled'] is False and summary['compile']['requested'] == '--compile'
    out = tmp_path / 'features'
    assert features_main(feature_args(os.path.dirname(videos), str(out), '--tail', 'pad', '--compile')) == 0
    one_line(capsys.readouterr().out)
    assert json.load(open(out / 'index.json'))['compile']['compiled'] is False


def test_fine_tuning_and_fvd_run_eagerly_and_say_so_without_a_compiler(no_compiler, tmp_path, capsys):
    from finetune_test_models import write_training_set
    from fvd_test_models import tiny_fvd_net  # noqa: F401  (registers the model)
    from eval.fvd.job import main as fvd_main
    list_path = write_training_set(str(tmp_path / 'train'), [], synthetic=2)
    classes = os.path.join(os.path.dirname(list_path), 'classes.txt')
    out = tmp_path / 'finetune'
    code = eval.finetune.job.main(['--model', 'tiny_i3d', '--data', list_path, '--classes', classes, '--out', str(out),
                                   '--workers', '0', '--no-progress', '--epochs', '1', '--batch-size', '2',
                                   '--frames', '4', '--compile'])
    assert code == 0
    one_line(capsys.readouterr().out)
    assert json.load(open(out / 'training.json'))['compile']['compiled'] is False
    from eval.data.synthetic import write_synthetic_video
    for side in ('real', 'fake'):
        for seed in (1, 2):
            os.makedirs(tmp_path / side, exist_ok=True)
            write_synthetic_video(str(tmp_path / side / f'v{seed}.mp4'), num_frames=12, height=48, width=64,
                                  seed=seed + (10 if side == 'fake' else 0))
    code = fvd_main(['--model', 'tiny_fvd_net', '--random-weights', '--real', str(tmp_path / 'real'), '--fake',
                     str(tmp_path / 'fake'), '--out', str(tmp_path / 'fvd'), '--frames', '8', '--workers', '0',
                     '--no-progress', '--compile'], keep_heap=False)
    assert code == 0
    one_line(capsys.readouterr().out)
    assert json.load(open(tmp_path / 'fvd' / 'fvd.json'))['compile']['compiled'] is False


# ------------------------------------------------------------------------------------------- compiled fine-tuning

def test_compiled_fine_tuning_trains_as_eager_forward_and_backward(tmp_path):
    """--compile compiles the training step (forward and backward): the same losses and weights (dropout masks, BN
    statistics) as the eager run up to float32 rounding (inductor fuses and reorders sums), the saved weights
    without the compile wrapper's names, training.json saying it was compiled. With gradient checkpointing:
    benchmarks/test_compiled_training.py (CI; a second cold compile of 20-30 s kept out of make test). (DDP: two gloo
    ranks compiled gave the eager two-rank losses to 6 digits; measured, not a test.)"""
    runs, compiled_calls = compiled_against_eager(tmp_path)
    assert_trained_alike(runs, compiled_calls)


def test_compiled_fvd_equals_the_eager_embeddings():
    from fvd_test_models import tiny_fvd_net  # noqa: F401  (registers the model)
    from eval.fvd.embed import Embedder
    torch.manual_seed(0)
    clips = torch.rand(3, 3, 4, 224, 224) * 2 - 1
    eager = Embedder('tiny_fvd_net', random_weights=True, batch_size=2)
    compiled = Embedder('tiny_fvd_net', random_weights=True, batch_size=2, compile=True)
    try:
        np.testing.assert_allclose(compiled(clips), eager(clips), rtol=1e-5, atol=1e-6)
        assert compiled.compiled and compiled.net.compiled
    finally:
        torch._dynamo.reset()
