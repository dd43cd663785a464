"""zoo.heap.keep_freed_memory: the large activations of a 3D ConvNet reuse the process's mapped pages instead
of faulting fresh ones in on every forward pass (what made i3d_r50 ~1.7x slower on our 2-core CPUs), every
job of the engine sets it, and ZOO_KEEP_HEAP=0 leaves malloc as it was. Measured in child processes: the
setting is process-wide and cannot be undone."""
import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small 3D ConvNet whose activations are 51 MB (8 x 16 x 8 x 112 x 112 float32, past glibc's 32 MB mmap
# threshold), run 8 times; prints whether the setting is in effect and the minor page faults of passes 4-8.
PROBE = '''
import resource, sys, torch
import zoo
if sys.argv[1] == 'job':
    import eval.kit.job
    assert eval.kit.job.run_job(lambda ctx, console: 0, 'cpu', 60.0, keep_heap=True) == 0
else:
    zoo.keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv3d(3, 16, 1), torch.nn.ReLU(),
                          torch.nn.Conv3d(16, 16, (1, 3, 3), padding=(0, 1, 1)), torch.nn.ReLU(),
                          torch.nn.MaxPool3d((1, 2, 2)), torch.nn.Conv3d(16, 32, 1)).eval()
x = torch.randn(8, 3, 8, 112, 112)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.no_grad():
    for _ in range(3):
        net(x)
    before = faults()
    for _ in range(5):
        net(x)
import zoo.heap
print(zoo.heap._applied, faults() - before)
'''
ACTIVATION_PAGES = 8 * 16 * 8 * 112 * 112 * 4 // 4096      # 12,544 pages of 4 KiB


def probe(mode, **env):
    env = dict(os.environ, PYTHONPATH=REPO, **env)
    result = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    applied, faults = result.stdout.split()
    return applied == 'True', int(faults)


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='a setting of glibc malloc')


def check_kept_against_default(mode):
    """The default heap faults in at least one 51 MB activation per pass (in practice ~9); the kept heap avoids
    at least 90% of that (in practice all, once in a while one late growth of the heap: < 2 activations)."""
    kept, faults = probe(mode, ZOO_KEEP_HEAP='1')
    default, default_faults = probe(mode, ZOO_KEEP_HEAP='0')
    assert kept and not default
    assert default_faults > 5 * ACTIVATION_PAGES
    assert faults < default_faults / 10, (faults, default_faults)


@glibc_only
def test_a_kept_heap_reuses_pages_where_the_default_faults_them_in_on_every_pass():
    check_kept_against_default('direct')


@glibc_only
def test_every_engine_job_runs_with_the_heap_kept():
    check_kept_against_default('job')


# eval.finetune on the tiny registered network (2 steps, validated and tested through the engine), then whether
# the heap is kept: the outer job decides, and its evaluations (jobs inside it) leave the heap as it set it.
FINETUNE = '''
import os, sys, tempfile
sys.path.insert(0, os.path.join(sys.argv[2], 'tests'))
import torch
torch.set_num_threads(1)
import finetune_test_models
import eval.finetune.job, zoo.heap
root = tempfile.mkdtemp()
data = finetune_test_models.write_training_set(os.path.join(root, 'data'), [], synthetic=2)
classes = os.path.join(os.path.dirname(data), 'classes.txt')
code = eval.finetune.job.main(['--model', 'tiny_i3d', '--data', data, '--classes', classes, '--val-data', data,
                           '--out', os.path.join(root, 'out'), '--workers', '0', '--no-progress', '--epochs', '1',
                           '--batch-size', '1'] + sys.argv[3:])
print(code, zoo.heap._applied)
'''


@glibc_only
@pytest.mark.parametrize('extra,kept', [([], True), (['--grad-checkpointing'], False)])
def test_fine_tuning_keeps_the_heap_unless_it_checkpoints_to_save_memory(extra, kept):
    result = subprocess.run([sys.executable, '-c', FINETUNE, 'finetune', REPO, *extra], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO, ZOO_KEEP_HEAP='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ['0', str(kept)]


# A job run from Python (the engine's run(), run_job without keep_heap) leaves the process heap alone: only the
# command-line entry points switch it, since the setting cannot be undone.
PYTHON_CALLER = '''
import sys
import eval.kit.job, zoo.heap
assert eval.kit.job.run_job(lambda ctx, console: 0, 'cpu', 60.0) == 0
print(zoo.heap._applied)
'''


@glibc_only
def test_a_job_called_from_python_leaves_the_heap_as_it_was():
    result = subprocess.run([sys.executable, '-c', PYTHON_CALLER], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONPATH=REPO, ZOO_KEEP_HEAP='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['False']
