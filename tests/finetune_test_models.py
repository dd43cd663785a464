"""A tiny registered ResNet3D for the fine-tuning tests, the data sets they train on, and the eval.finetune
CLI run with it registered.

    python -m tests.finetune_test_models --model tiny_i3d --data list.txt --classes classes.txt --out runs/x
    torchrun --standalone --nproc_per_node 2 -m tests.finetune_test_models ...

``tiny_i3d`` is the real ResNet3D (bottlenecks, BatchNorm, dropout before the head, timm protocol) with one
block per stage and a few channels, so a training step costs milliseconds; its config asks for 4 frames at
rate 2 and a 32-pixel crop.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # run as -m tests.finetune_test_models too
import eval_test_models  # noqa: E402
import zoo  # noqa: E402
from eval_test_models import REPO_ROOT  # noqa: E402
from zoo._builder import build_model_with_cfg  # noqa: E402
from zoo._registry import register_model  # noqa: E402
from zoo.resnet3d import ResNet3D, ResNet3DSpec  # noqa: E402

KINETICS_CLIPS = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data', 'kinetics-clips')
REAL_CLIPS = ('arm_wrestling.mp4', 'cleaning_pool.mp4')
SYNTHETIC_TINTS = ((1.3, 0.4, 0.4), (0.4, 1.3, 0.4), (0.4, 0.4, 1.3), (0.3, 0.3, 0.3), (1.3, 1.3, 0.4), (0.4, 1.3, 1.3))

TINY_SPEC = ResNet3DSpec(layers=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem_width=8, conv1_temporal_kernel=3,
                         conv1_temporal_stride=1, pool1_kernel=(1, 3, 3), pool1_stride=(1, 2, 2),
                         temporal_kernels=((3,), (1,), (3,), (1,)))
# tiny_i3d with every block of one shape (no spatial stride, no downsampling, no pool2): inductor compiles a kernel
# once per distinct source, so the compiled-training tests compile 22 kernels instead of tiny_i3d's 38 (cold: about
# a third less time)
FLAT_SPEC = ResNet3DSpec(layers=(1, 1, 1, 1), widths=(4, 4, 4, 4), stem_width=16, spatial_strides=(1, 1, 1, 1),
                         conv1_temporal_kernel=3, conv1_temporal_stride=1, pool1_kernel=(1, 3, 3),
                         pool1_stride=(1, 2, 2), pool2_kernel=None, temporal_kernels=((3,), (3,), (3,), (3,)))
default_cfgs = {name: zoo.VideoPretrainedCfg(
    num_frames=4, sampling_rate=2, crop_size=32, test_scale=37, test_crop_size=37, test_views=(1, 2),
    num_classes=4, label_set='test', class_names=tuple(f'class{i}' for i in range(4)))
    for name in ('tiny_i3d', 'tiny_i3d_flat')}


@register_model
def tiny_i3d(pretrained=False, **kwargs):
    """With FINETUNE_TEST_SECONDS_PER_PASS set, every forward pass first sleeps that long (so a test can kill a
    run mid-way); the numbers are unchanged."""
    model = build_model_with_cfg(ResNet3D, 'tiny_i3d', pretrained, spec=TINY_SPEC, **kwargs)
    delay = float(os.environ.get('FINETUNE_TEST_SECONDS_PER_PASS', '0'))
    if delay:
        model.register_forward_pre_hook(lambda module, inputs: time.sleep(delay))
    return model


@register_model
def tiny_i3d_flat(pretrained=False, **kwargs):
    return build_model_with_cfg(ResNet3D, 'tiny_i3d_flat', pretrained, spec=FLAT_SPEC, **kwargs)


def real_clips():
    """Paths of the real Kinetics clips, or None when ../shared is absent."""
    paths = [os.path.join(KINETICS_CLIPS, name) for name in REAL_CLIPS]
    return paths if all(os.path.isfile(p) for p in paths) else None


def write_training_set(root: str, real: list, synthetic: int = 4, height: int = 48, frames_per_real: int = 40) -> str:
    """A ``path label`` list of the real clips (cut to their first ``frames_per_real`` frames, stored small as
    JPEG folders so an epoch decodes in milliseconds) and ``synthetic`` synthetic clips, one class each;
    ``classes.txt`` beside it names the classes. Returns the list's path."""
    from eval.data.decode import open_source
    from eval.data.synthetic import synthetic_frames, write_frame_folder
    os.makedirs(root, exist_ok=True)
    names, lines = [], []
    for path in real:
        name = os.path.splitext(os.path.basename(path))[0]
        source = open_source(path)
        frames = source.read(np.arange(frames_per_real), height).frames
        write_frame_folder(os.path.join(root, name), frames)
        names.append(name)
    for i in range(synthetic):
        # eval.data.synthetic's content drifts in colour over time, so a random clip start alone would blur the
        # classes: each synthetic class gets its own fixed tint on top
        frames = synthetic_frames(12 + 4 * i, height, 64, seed=10 + i).astype(np.float32)
        frames *= np.asarray(SYNTHETIC_TINTS[i % len(SYNTHETIC_TINTS)], dtype=np.float32)
        name = f'synthetic{i}'
        write_frame_folder(os.path.join(root, name), np.clip(frames, 0, 255).astype(np.uint8))
        names.append(name)
    lines = [f'{name} {label}\n' for label, name in enumerate(names)]
    with open(os.path.join(root, 'list.txt'), 'w') as f:
        f.writelines(lines)
    with open(os.path.join(root, 'classes.txt'), 'w') as f:
        f.writelines(f'{name}\n' for name in names)
    return os.path.join(root, 'list.txt')


def compiled_against_eager(tmp_path, extra: tuple = ()):
    """tiny_i3d_flat trained one epoch (dropout, BN in training mode) eagerly and with --compile, both with ``extra``,
    on one thread with torch.compile spied on. Returns, per run ('eager', 'compiled'), its saved weights, step
    losses and training.json, and the names of the modules torch.compile was given."""
    import csv
    import json
    import torch
    from unittest import mock
    import eval.finetune.job
    list_path = write_training_set(str(tmp_path / 'train'), [], synthetic=4)
    classes = os.path.join(os.path.dirname(list_path), 'classes.txt')
    compiled_calls, real_compile = [], torch.compile

    def spy(model, *args, **kwargs):
        compiled_calls.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    def run(name, flag):
        out = tmp_path / name
        code = eval.finetune.job.main([str(a) for a in (
            '--model', 'tiny_i3d_flat', '--data', list_path, '--classes', classes, '--out', out, '--workers', 0,
            '--no-progress', '--epochs', 1, '--batch-size', 2, '--lr', 0.05, '--bn', 'train', '--frames', 8,
            '--checkpoint-every', 0, flag, *extra)])
        assert code == 0, name
        with open(out / 'metrics.csv', newline='') as f:
            losses = [float(r['loss']) for r in csv.DictReader(f) if r['kind'] == 'step']
        with open(out / 'training.json') as f:
            record = json.load(f)
        return zoo.load_state_dict_file(str(out / 'last.pth')), losses, record

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with mock.patch.object(torch, 'compile', spy):
            return {'eager': run('eager', '--no-compile'), 'compiled': run('compiled', '--compile')}, compiled_calls
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()


def assert_trained_alike(runs: dict, compiled_calls: list) -> None:
    """``compiled_against_eager``'s runs agree: training.json says which was compiled, torch.compile was given the
    training network itself once, the losses agree to 1e-4 and every saved tensor (BN's running statistics too:
    recomputed blocks must not update them twice) to float32 rounding, under the plain model's names."""
    import pytest
    import torch
    (eager, eager_losses, eager_record), (weights, losses, record) = runs['eager'], runs['compiled']
    assert eager_record['compile']['compiled'] is False and record['compile']['compiled'] is True
    assert compiled_calls == ['ResNet3D']
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    assert set(weights) == set(eager) and not any('_orig_mod' in k for k in weights)
    for k in eager:
        torch.testing.assert_close(weights[k].float(), eager[k].float(), rtol=1e-3, atol=1e-5, msg=k)


def cli_env(seconds_per_pass: float = 0.0) -> dict:
    env = eval_test_models.cli_env(seconds_per_pass, delay_variable='FINETUNE_TEST_SECONDS_PER_PASS')
    env['OMP_NUM_THREADS'] = '1'       # the same float arithmetic in every process a test compares
    return env


def python_command(args: list) -> list:
    return eval_test_models.python_command(args, module='tests.finetune_test_models')


def torchrun_command(nproc: int, args: list) -> list:
    return eval_test_models.torchrun_command(nproc, args, module='tests.finetune_test_models')


if __name__ == '__main__':
    from eval.finetune.job import main
    sys.exit(main())
