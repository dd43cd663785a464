"""zoo.heap.keep_freed_memory: glibc's malloc serves a large activation from the heap and keeps it when freed
(instead of mapping it afresh and unmapping it on every forward pass), every job of the engine sets it, and
ZOO_KEEP_HEAP=0 leaves malloc as it was. Checked in child processes (the setting is process-wide and cannot
be undone) on malloc's own account of its memory (mallinfo2), which does not depend on the machine; what the
setting saves in page faults and time depends on the kernel (transparent huge pages `always` cut them 19x here) and
is measured in benchmarks/bench_heap.py, not asserted here."""
import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Frees a 64 MiB tensor (past glibc's 32 MiB largest mmap threshold) and prints whether the setting is in effect,
# the bytes malloc had mapped apart (mmap) while it lived, and the free bytes the heap kept after it was freed.
PROBE = '''
import ctypes, ctypes.util, sys, torch
import zoo
if sys.argv[1] == 'job':
    import eval.kit.job
    assert eval.kit.job.run_job(lambda ctx, console: 0, 'cpu', 60.0, keep_heap=True) == 0
else:
    zoo.keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
x = torch.empty(64 << 20, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd - before
del x
import zoo.heap
print(zoo.heap._applied, mapped, libc.mallinfo2().fordblks)
'''
BLOCK = 64 << 20


def probe(mode, **env):
    env = dict(os.environ, PYTHONPATH=REPO, **env)
    result = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    applied, mapped, kept_free = result.stdout.split()
    return applied == 'True', int(mapped), int(kept_free)


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc' or platform.libc_ver()[1] < '2.33',
                                reason='a setting of glibc malloc (mallinfo2: glibc 2.33)')


def check_kept_against_default(mode):
    """Default: the 64 MiB block is mapped apart and unmapped when freed (the heap keeps less than it). Kept: it
    comes from the heap (nothing mapped apart) and stays there, free, for the next pass."""
    kept, mapped, kept_free = probe(mode, ZOO_KEEP_HEAP='1')
    default, default_mapped, default_free = probe(mode, ZOO_KEEP_HEAP='0')
    assert kept and not default
    assert default_mapped >= BLOCK and default_free < BLOCK, (default_mapped, default_free)
    assert mapped == 0 and kept_free >= BLOCK, (mapped, kept_free)


@glibc_only
def test_a_kept_heap_keeps_a_freed_activation_where_the_default_unmaps_it():
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
