"""converters.file_io: the one cache root, checksum verification, atomic writes and installed-package files."""
import hashlib
import os
import subprocess
import sys
from importlib import metadata

import pytest

from converters import download, file_io
from converters.file_io import (ChecksumError, atomic_write, cache_root, installed_package_files, sha256_file,
                              verify_file)
from eval.data.demo import demo_dir

DATA = bytes(range(256)) * 40          # 10 KiB, several chunks at the chunk size used below
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def no_cache_switches(monkeypatch):
    monkeypatch.delenv('ZOO_CACHE_DIR', raising=False)
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.delenv('ZOO_OFFLINE', raising=False)


# ------------------------------------------------------------------------------------------- cache root

def test_cache_root_is_zoo_cache_dir_then_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert cache_root() == tmp_path / 'home' / '.cache' / 'video-zoo'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_root() == tmp_path / 'xdg' / 'video-zoo'
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path / 'mine'))
    assert cache_root() == tmp_path / 'mine'


def test_relative_xdg_cache_home_is_ignored_as_the_spec_says(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/cache')
    assert cache_root() == tmp_path / 'home' / '.cache' / 'video-zoo'


def test_demo_set_and_downloads_share_the_cache_root_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    monkeypatch.setenv('ZOO_OFFLINE', '1')   # fetch then only says where it looked
    root = tmp_path / 'xdg' / 'video-zoo'
    assert demo_dir() == str(root / 'demo')
    with pytest.raises(download.OfflineError, match=str(root / 'downloads' / 'model.pkl')):
        download.fetch('https://example.invalid/model.pkl', progress=False)
    assert download.cache_dir is cache_root   # one function decides, whatever name it is called by


def test_demo_dir_keeps_an_explicit_folder(tmp_path):
    assert demo_dir(str(tmp_path / 'here')) == str(tmp_path / 'here')


# ------------------------------------------------------------------------------------------- checksums

def test_sha256_file_reads_in_chunks_and_matches_hashlib(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(DATA)
    assert sha256_file(path, chunk_size=1000) == DATA_SHA256


def test_verify_file_returns_the_sha256_of_a_file_that_matches(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(DATA)
    assert verify_file(path, DATA_SHA256.upper(), len(DATA)) == DATA_SHA256
    assert verify_file(path) == DATA_SHA256      # nothing expected: nothing to fail, the hash is still given


def test_verify_file_names_the_file_both_hashes_the_source_and_the_hint(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(DATA)
    wrong = 'ab' * 32
    with pytest.raises(ChecksumError) as err:
        verify_file(path, wrong, expected_from='the pinned checksum', hint='Delete it and download it again.')
    message = str(err.value)
    assert str(path) in message and wrong in message and DATA_SHA256 in message
    assert 'the pinned checksum' in message and message.endswith('Delete it and download it again.')


def test_verify_file_reports_a_wrong_size_with_both_sizes(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(DATA)
    with pytest.raises(ChecksumError, match=f'size is {len(DATA)} bytes, expected {len(DATA) + 1}') as err:
        verify_file(path, DATA_SHA256, len(DATA) + 1)
    assert str(path) in str(err.value)


def test_verify_file_raises_the_error_class_it_is_given(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(DATA)
    with pytest.raises(download.ChecksumError):
        verify_file(path, '0' * 64, error=download.ChecksumError)
    assert issubclass(download.ChecksumError, ChecksumError)   # one except clause catches every checksum error


# ------------------------------------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / 'out.json'
    path.write_text('old')
    with atomic_write(path, 'w', encoding='utf-8') as f:
        f.write('new')
        assert path.read_text() == 'old'      # readers see the old file until the rename
    assert path.read_text() == 'new'
    assert os.listdir(tmp_path) == ['out.json']


def test_atomic_write_keeps_the_old_file_and_removes_the_temporary_on_an_exception(tmp_path):
    path = tmp_path / 'out.bin'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='half way'):
        with atomic_write(path) as f:
            f.write(b'half of the new')
            raise RuntimeError('half way')
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['out.bin']


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
    with open(tmp_path / 'plain', 'wb'):
        pass
    with atomic_write(tmp_path / 'atomic') as f:
        f.write(b'x')
    # not the 0600 of the temporary file: a cache shared between users stays readable
    assert (tmp_path / 'atomic').stat().st_mode == (tmp_path / 'plain').stat().st_mode


def test_atomic_write_refuses_modes_that_read_or_append(tmp_path):
    for mode in ('r', 'a', 'wb+'):
        with pytest.raises(ValueError, match="'w' or 'wb'"):
            with atomic_write(tmp_path / 'x', mode):
                pass
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------- package files

def test_installed_package_file_is_found_without_importing_the_package():
    imported_before = 'pip' in sys.modules
    found = installed_package_files('pip', 'pip/__init__.py')
    assert list(found) == ['pip/__init__.py']
    assert os.path.isfile(found['pip/__init__.py']) and found['pip/__init__.py'].endswith('__init__.py')
    assert ('pip' in sys.modules) == imported_before


def test_installed_package_files_selects_by_predicate():
    found = installed_package_files('pip', lambda p: p.startswith('pip/') and p.endswith('/__init__.py'))
    assert len(found) > 3 and all(os.path.isfile(path) for path in found.values())
    assert installed_package_files('pip', 'pip/no_such_file.py') == {}


def test_missing_distribution_raises_package_not_found():
    with pytest.raises(metadata.PackageNotFoundError):
        installed_package_files('no-such-distribution-video-zoo', 'anything.py')


def test_files_module_imports_neither_zoo_nor_eval():
    # converters sits below eval and beside zoo: the shared file helpers must not pull either in
    code = "import sys, converters.file_io; print(sorted({m.split('.')[0] for m in sys.modules} & {'zoo', 'eval'}))"
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip() == '[]'
