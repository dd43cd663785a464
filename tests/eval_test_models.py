"""Tiny registered models for the evaluation tests, and the eval.kinetics CLI run with them registered.

    python -m tests.eval_test_models --model tiny_video_net --random-weights --data list.txt --out runs/x
    torchrun --standalone --nproc_per_node 2 -m tests.eval_test_models ...

``tiny_video_net`` costs milliseconds per view, so a test pays for process start-up, not for a ResNet-50;
``slow_tiny_video_net`` sleeps EVAL_TEST_SECONDS_PER_BATCH (default 0.4) per forward pass, so a test can
catch a run mid-way and kill it.
"""
import os
import sys

import torch

import zoo
from zoo._builder import build_model_with_cfg
from zoo._registry import register_model

NUM_CLASSES = 10
_CFG = zoo.VideoPretrainedCfg(
    num_frames=4, sampling_rate=2, mean=(114.75,) * 3, std=(57.375,) * 3, crop_size=48, test_scale=48,
    test_crop_size=48, test_views=(1, 2), num_classes=NUM_CLASSES, label_set='test',
    class_names=tuple(f'class{i}' for i in range(NUM_CLASSES)))
default_cfgs = {'tiny_video_net': _CFG, 'slow_tiny_video_net': _CFG, 'hanging_tiny_video_net': _CFG}


class TinyVideoNet(torch.nn.Module):
    """conv -> BN -> ReLU -> pool -> fc: a BatchNorm so the fast path has something to fold."""

    def __init__(self, num_classes: int = NUM_CLASSES, seconds_per_batch: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = torch.nn.Conv3d(3, 8, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm3d(8)
        self.fc = torch.nn.Linear(8, num_classes)
        self.seconds_per_batch = seconds_per_batch

    def forward(self, x):
        if self.seconds_per_batch:
            import time
            time.sleep(self.seconds_per_batch)
        return self.fc(self.bn1(self.conv1(x)).relu().mean(dim=(2, 3, 4)))


@register_model
def tiny_video_net(pretrained=False, **kwargs):
    return build_model_with_cfg(TinyVideoNet, 'tiny_video_net', pretrained, **kwargs)


@register_model
def slow_tiny_video_net(pretrained=False, **kwargs):
    delay = float(os.environ.get('EVAL_TEST_SECONDS_PER_BATCH', '0.4'))
    return build_model_with_cfg(TinyVideoNet, 'slow_tiny_video_net', pretrained, seconds_per_batch=delay, **kwargs)


@register_model
def hanging_tiny_video_net(pretrained=False, **kwargs):
    """On rank 1 of a torchrun job, the first forward pass sleeps EVAL_TEST_HANG_SECONDS (alive but stuck, as in
    a decoder that never returns); rank 0 and a single process run as tiny_video_net."""
    model = build_model_with_cfg(TinyVideoNet, 'tiny_video_net', pretrained, **kwargs)
    if os.environ.get('RANK') == '1':
        import time
        model.register_forward_pre_hook(lambda module, inputs: time.sleep(float(os.environ['EVAL_TEST_HANG_SECONDS'])))
    return model


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_synthetic_set(root: str, count: int) -> str:
    """``count`` small synthetic clips of different lengths and a ``path label`` list of them; returns the list."""
    from eval.data.synthetic import write_synthetic_video
    os.makedirs(root, exist_ok=True)
    lines = []
    for i in range(count):
        write_synthetic_video(os.path.join(root, f'clip{i}.mp4'), num_frames=12 + 3 * i, height=48, width=64, seed=i)
        lines.append(f'clip{i}.mp4 {i % NUM_CLASSES}\n')
    path = os.path.join(root, 'list.txt')
    with open(path, 'w') as f:
        f.writelines(lines)
    return path


def cli_args(model: str, data: str, out: str, *extra: str) -> list:
    """Arguments of a cheap deterministic run: random weights (seed 0), 1x2 views in batches of 2 views, so a
    batch never mixes videos and a video's scores do not depend on which videos a process got."""
    return ['--model', model, '--random-weights', '--data', data, '--out', out, '--views', '1x2',
            '--batch-size', '2', '--workers', '0', '--no-progress', *extra]


def cli_env(seconds_per_batch: float = 0.0, delay_variable: str = 'EVAL_TEST_SECONDS_PER_BATCH') -> dict:
    """The environment of a child run: no torchrun variables of ours, the repo importable, and the slow test
    models' delay per batch in ``delay_variable``."""
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                                             'MASTER_PORT', 'LOCAL_WORLD_SIZE')}
    env[delay_variable] = str(seconds_per_batch)
    env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


def python_command(args: list, module: str = 'tests.eval_test_models') -> list:
    """``module`` run as a script: it registers its test models, then runs its front end with ``args``."""
    return [sys.executable, '-m', module, *args]


def torchrun_command(nproc: int, args: list, module: str = 'tests.eval_test_models') -> list:
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    return [torchrun, '--standalone', f'--nproc_per_node={nproc}', '-m', module, *args]


def kill_mid_run(launch, progress, total: int, delays=(0.3, 1.2, 4.8)) -> tuple:
    """SIGKILL a run as soon as it has durably finished some of its work, never after a fixed sleep.

    ``launch(delay, attempt)`` starts the run (a Popen with ``start_new_session=True``) whose every pass sleeps
    ``delay``; ``progress(attempt)`` counts the units it has durably finished (read from its files), out of
    ``total``. The process group is killed the moment ``progress`` reaches 1. On a loaded machine this process
    may be descheduled long enough for the run to finish everything first: the kill then came too late, and
    the next attempt (its own output folder) runs with the next, longer delay. Returns (attempt, units done).
    """
    import signal
    import time
    done = 0
    for attempt, delay in enumerate(delays):
        proc = launch(delay, attempt)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None and progress(attempt) < 1:
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        done = progress(attempt)
        if 1 <= done < total:
            return attempt, done
        assert done >= 1, f'the run was killed (or ended) before finishing anything: {done} of {total}'
    raise AssertionError(f'the kill came too late at every delay {delays}: {done} of {total} finished')


if __name__ == '__main__':
    from eval.kinetics import main
    status = main()
    # said by every process, so a test reads each rank's own status, not torchrun's report of it
    print(f"rank {os.environ.get('RANK', '0')} exit status {status}", file=sys.stderr, flush=True)
    sys.exit(status)
