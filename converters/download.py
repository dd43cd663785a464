"""Checksum-verified, resumable downloads of checkpoint files into the zoo's cache directory.

A file enters the cache only after its sha256 and size are verified; where no checksum was ever published,
the first verified download records one next to the file and every later use is checked against it.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import pathlib
import posixpath
import re
import socket
import time
import urllib.parse
from typing import Optional, Tuple

import requests
from tqdm import tqdm

from . import file_io
from .file_io import CACHE_ENV, PathLike, checksum_problems, sha256_file  # noqa: F401 (sha256_file: public here too)

try:
    import fcntl
except ImportError:  # Windows: no flock; two processes fetching the same file at once are not guarded there
    fcntl = None

log = logging.getLogger(__name__)

OFFLINE_ENV = 'ZOO_OFFLINE'
USER_AGENT = f'video-zoo-downloader (python-requests/{requests.__version__})'

_TRUTHY = frozenset({'1', 'true', 'yes', 'on'})
_PART_SUFFIX = '.part'
_RECORD_SUFFIX = '.sha256.json'
_STREAM_CHUNK = 1 << 16
_SHA256_RE = re.compile(r'[0-9a-f]{64}')
_CONTENT_RANGE_RE = re.compile(r'bytes\s+(\d+)-(\d+)/(\d+|\*)')


class DownloadError(RuntimeError):
    """A file could not be downloaded: the message names the URL and the HTTP status or the cause."""


class ChecksumError(DownloadError, file_io.ChecksumError):
    """A file's sha256 or size differs from the pinned or recorded one: the message gives both values."""


class OfflineError(DownloadError):
    """Downloads are switched off (ZOO_OFFLINE) and the file is not in the cache."""


class HostNotFoundError(DownloadError):
    """The download host's name does not resolve (no network, or no DNS): never retried, since waiting does
    not bring a network back; the message says where to put the file instead."""


class _Transient(Exception):
    """A failure worth retrying: connection lost, timeout, short body, HTTP 5xx or 429."""


class _NameNotResolved(Exception):
    """The host name of a URL did not resolve; args: the resolver's reason."""


# converters.file_io.cache_root decides the cache; this name is the one this module has always exported.
cache_dir = file_io.cache_root


def is_offline() -> bool:
    """True when ``$ZOO_OFFLINE`` is 1, true, yes or on (any case): only cached files may be used."""
    return os.environ.get(OFFLINE_ENV, '').strip().lower() in _TRUTHY


def read_record(path: PathLike) -> Optional[dict]:
    """The checksum record ``{'sha256', 'size', 'url', 'recorded_at'}`` kept beside a cached file, or None."""
    path = pathlib.Path(path)
    record_path = _record_path(path)
    try:
        text = record_path.read_text(encoding='utf-8')
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and isinstance(record.get('sha256'), str)
            and _SHA256_RE.fullmatch(record['sha256']) and isinstance(record.get('size'), int)):
        # Ignoring a damaged record would quietly trust whatever file comes next.
        raise ChecksumError(
            f'{record_path}: the checksum record of {path.name} is unreadable or incomplete, so the file cannot '
            f'be verified. Delete {record_path} and {path} to download the file again.')
    return record


def fetch(url: str, *, filename: Optional[str] = None, sha256: Optional[str] = None, size: Optional[int] = None,
          cache_dir: Optional[PathLike] = None, progress: bool = True, retries: int = 4, backoff: float = 0.5,
          timeout: float = 30.0, session: Optional[requests.Session] = None) -> pathlib.Path:
    """Path of ``url``'s file in ``<cache_dir>/downloads/``, downloaded and verified if it is not there yet.

    ``sha256`` and ``size`` pin the file; without them the first verified download is recorded in
    ``<name>.sha256.json`` and later uses are checked against that record. A cached file that fails its
    check raises ChecksumError and is left in place: nothing is ever re-downloaded silently. An interrupted
    download resumes from its ``<name>.part`` file with an HTTP Range request.
    """
    name = _file_name(url, filename)
    sha256 = _normalise_sha256(sha256)
    root = (pathlib.Path(cache_dir).expanduser() if cache_dir is not None else file_io.cache_root()) / 'downloads'
    path = root / name

    if path.is_file():
        return _verify_cached(path, url, sha256, size)
    if is_offline():
        raise OfflineError(
            f'{name} is not in the cache and downloads are switched off ({OFFLINE_ENV}='
            f'{os.environ.get(OFFLINE_ENV)!r}). Expected it at {path} (cache directory {root.parent}; '
            f'{CACHE_ENV} chooses another). Unset {OFFLINE_ENV} to download it from {url}, or copy the file there.')

    _ensure_writable(root)
    own_session = session is None
    session = session or requests.Session()
    try:
        with _exclusive(root):
            if path.is_file():  # another process finished this download while we waited for the lock
                return _verify_cached(path, url, sha256, size)
            return _download(url, path, sha256, size, session=session, progress=progress, retries=retries,
                             backoff=backoff, timeout=timeout)
    finally:
        if own_session:
            session.close()


def _record_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _RECORD_SUFFIX)


def _part_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _PART_SUFFIX)


def _normalise_sha256(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    digest = value.strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise ValueError(f'sha256 must be 64 hexadecimal digits, got {value!r}')
    return digest


def _file_name(url: str, filename: Optional[str]) -> str:
    name = filename if filename is not None else urllib.parse.unquote(
        posixpath.basename(urllib.parse.urlsplit(url).path))
    separators = {'/', os.sep} | ({os.altsep} if os.altsep else set())
    if (not name or name in ('.', '..') or any(s in name for s in separators)
            or name.endswith((_PART_SUFFIX, _RECORD_SUFFIX))):
        raise ValueError(f'cannot cache {url} under the file name {name!r}: pass filename= with a plain file name')
    return name


def _write_record(path: pathlib.Path, sha256: str, size: int, url: str) -> None:
    record = {'sha256': sha256, 'size': size, 'url': url,
              'recorded_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    # atomic, so a crash or a concurrent writer never leaves half a record
    with file_io.atomic_write(_record_path(path), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2)
        f.write('\n')


def _expected(path: pathlib.Path, sha256: Optional[str], size: Optional[int]):
    """(sha256, size, where they come from, record): a pinned checksum wins over the record."""
    record = read_record(path)
    if sha256 is not None:
        return sha256, size, 'the pinned checksum', record
    if record is not None:
        return (record['sha256'], size if size is not None else record['size'],
                f'the checksum recorded at its first download ({_record_path(path)}, {record.get("recorded_at")})',
                record)
    return None, size, 'the expected size', None


def _verify_cached(path: pathlib.Path, url: str, sha256: Optional[str], size: Optional[int]) -> pathlib.Path:
    expected_sha256, expected_size, source, record = _expected(path, sha256, size)
    actual_sha256 = file_io.verify_file(
        path, expected_sha256, expected_size, expected_from=source, error=ChecksumError,
        hint=f'It was changed or corrupted after it was downloaded, or the pinned checksum changed. The file was '
             f'left in place; to download it again from {url}, delete {path} and {_record_path(path)}.')
    actual_size = path.stat().st_size
    if record is None or record['sha256'] != actual_sha256 or record['size'] != actual_size:
        if expected_sha256 is None:
            # A file put in the cache by hand has nothing to vouch for it; from now on it is held to this hash.
            log.warning('%s has no checksum record; recording sha256 %s (%d bytes) as it is now',
                        path, actual_sha256, actual_size)
        try:
            _write_record(path, actual_sha256, actual_size, url)
        except OSError as e:  # a read-only shared cache is still usable, just not recordable
            log.warning('could not write the checksum record of %s: %s', path, e)
    return path


def _ensure_writable(directory: pathlib.Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f'cannot create the cache directory {directory}: {e.strerror or e}. '
                            f'Set {CACHE_ENV} to a writable directory.') from e
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DownloadError(f'the cache directory {directory} is not writable. '
                            f'Set {CACHE_ENV} to a writable directory.')


@contextlib.contextmanager
def _exclusive(directory: pathlib.Path):
    """Hold an advisory lock on the download directory: two processes (say, the ranks of one distributed job)
    appending to the same .part file would interleave their bytes, and the first download of an unpinned file
    would record that garbage as the truth."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning('another process is downloading into %s; waiting for it to finish', directory)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _download(url: str, path: pathlib.Path, sha256: Optional[str], size: Optional[int], *,
              session: requests.Session, progress: bool, retries: int, backoff: float, timeout: float) -> pathlib.Path:
    expected_sha256, expected_size, source, record = _expected(path, sha256, size)
    part = _part_path(path)
    # identity: the hash must be of the bytes as stored, not of a body that requests decompressed on the way.
    headers = {'Accept-Encoding': 'identity'}
    if session.headers.get('User-Agent', '').startswith('python-requests'):
        headers['User-Agent'] = USER_AGENT
    attempt = 0
    while True:
        try:
            actual_sha256, actual_size = _stream_into(part, url, session, headers, expected_size,
                                                      progress=progress, timeout=timeout, label=path.name)
            break
        except _NameNotResolved as e:
            raise HostNotFoundError(_no_network_message(url, path, reason=e.args[0])) from None
        except _Transient as e:
            if attempt >= retries:
                kept = f'; {part} is kept and the next fetch resumes from it' if part.exists() else ''
                raise DownloadError(f'{url}: {e} (gave up after {attempt + 1} attempts{kept})') from e
            delay = backoff * 2 ** attempt
            log.warning('%s: %s; retrying in %.3g s (attempt %d of %d)', url, e, delay, attempt + 2, retries + 1)
            time.sleep(delay)
            attempt += 1

    problems = checksum_problems(actual_sha256, actual_size, expected_sha256, expected_size)
    if problems:
        part.unlink(missing_ok=True)
        hint = (f' If the file changed upstream on purpose, delete {_record_path(path)} to accept the new one.'
                if record is not None and sha256 is None else '')
        raise ChecksumError(f'{url}: the downloaded file does not match {source}: {"; ".join(problems)}. '
                            f'The download was discarded and nothing was cached as {path}.{hint}')
    try:
        # The record goes first: a crash between the two renames leaves a record with no file, which the next
        # download is checked against, never a file that nothing vouches for.
        _write_record(path, actual_sha256, actual_size, url)
        os.replace(part, path)
    except OSError as e:
        raise DownloadError(f'cannot store {path.name} in the cache directory {path.parent}: {e}. '
                            f'Set {CACHE_ENV} to a writable directory.') from e
    if expected_sha256 is None:
        log.warning('no checksum was given for %s: recorded sha256 %s (%d bytes); later uses are checked '
                    'against it', path, actual_sha256, actual_size)
    return path


def _stream_into(part: pathlib.Path, url: str, session: requests.Session, headers: dict,
                 expected_size: Optional[int], *, progress: bool, timeout: float, label: str) -> Tuple[str, int]:
    """One request appending to (or restarting) ``part``; returns the sha256 and size of the whole part."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        offset = 0  # longer than the file can be, so it is not a prefix of it
    hasher = hashlib.sha256()
    if offset:
        # hashlib's state cannot be saved between runs, so the bytes already on disk are hashed again.
        file_io.hash_file_into(hasher, part)
        if offset == expected_size:
            return hasher.hexdigest(), offset  # an earlier run got every byte and stopped before verifying

    request_headers = dict(headers, Range=f'bytes={offset}-') if offset else headers
    try:
        response = session.get(url, headers=request_headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as e:
        reason = _name_resolution_failure(e)
        if reason is not None:
            raise _NameNotResolved(reason) from e
        raise _Transient(f'connection failed ({e})') from e
    except requests.RequestException as e:
        raise DownloadError(f'{url}: {e}') from e

    with response:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Transient(f'HTTP {status} {response.reason}')
        if status == 404:
            raise DownloadError(f'{url}: not found (HTTP 404)')
        if status == 416 and offset:
            if _content_range(response.headers.get('Content-Range'))[2] == offset:
                return hasher.hexdigest(), offset
            part.unlink(missing_ok=True)
            raise _Transient(f'the server cannot resume at byte {offset} (HTTP 416); starting over')
        if status >= 400:
            raise DownloadError(f'{url}: HTTP {status} {response.reason}')
        content_type = response.headers.get('Content-Type', '').split(';')[0].strip().lower()
        if content_type == 'text/html' and not part.name.lower().endswith(('.html.part', '.htm.part')):
            raise DownloadError(f'{url}: the server sent an HTML page (Content-Type {content_type}) instead of '
                                f'the file: an error page, a login page or a captive portal?')

        if status == 206:
            start, _, _ = _content_range(response.headers.get('Content-Range'))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f'asked to resume at byte {offset} but the server sent bytes from {start} '
                                 f'(Content-Range {response.headers.get("Content-Range")!r}); starting over')
            mode = 'ab' if offset else 'wb'
        else:
            if offset:
                log.info('%s: the server ignored the Range request; downloading from the start', url)
                offset, hasher = 0, hashlib.sha256()
            mode = 'wb'

        declared = response.headers.get('Content-Length', '')
        length = int(declared) if declared.isdigit() else None
        total = offset + length if length is not None else None
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise ChecksumError(f'{url}: the server sends {total} bytes, expected {expected_size}; '
                                f'nothing was downloaded or cached')

        # urllib3 drops the bytes it buffered when it detects a short body; reading to EOF and counting here keeps
        # every byte that arrived, so a resume starts exactly where the connection was cut.
        if length is not None and hasattr(response.raw, 'enforce_content_length'):
            response.raw.enforce_content_length = False
        received = 0
        try:
            with open(part, mode) as f, tqdm(total=total, initial=offset, desc=label, unit='B', unit_scale=True,
                                             unit_divisor=1024, disable=None if progress else True) as bar:
                for chunk in response.iter_content(_STREAM_CHUNK):
                    f.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        # requests' exceptions are OSErrors too, so they must be caught before the OSError below.
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            raise _Transient(f'connection lost after {offset + received} bytes ({e})') from e
        except OSError as e:
            raise DownloadError(f'{url}: cannot write {part}: {e}') from e
    if length is not None and received < length:
        raise _Transient(f'the body ended after {received} of {length} bytes')
    return hasher.hexdigest(), offset + received


def _content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """(first byte, last byte, total) of a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE_RE.fullmatch((value or '').strip())
    if match is None:
        total = re.fullmatch(r'bytes\s+\*/(\d+)', (value or '').strip())  # the form a 416 answer uses
        return None, None, int(total.group(1)) if total else None
    first, last, total = match.groups()
    return int(first), int(last), None if total == '*' else int(total)


def _name_resolution_failure(error: BaseException) -> Optional[str]:
    """The resolver's message when ``error`` (or what it wraps) is a failed host name lookup, else None.

    requests wraps urllib3's MaxRetryError, whose ``reason`` wraps the socket.gaierror; the chain is walked
    rather than the message matched, so it holds across library versions and locales. Every gaierror counts,
    EAI_AGAIN ('Temporary failure in name resolution') too: it is what a machine without a network gets."""
    seen, pending = set(), [error]
    while pending:
        e = pending.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return str(e)
        pending += [e.__cause__, e.__context__, getattr(e, 'reason', None), *e.args]
    return None


def _no_network_message(url: str, path: pathlib.Path, reason: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    return (f'cannot download {url}: the host {host} cannot be resolved ({reason}), so this machine has no '
            f'network or no DNS; not retried. The file is expected at {path}. Two ways out: pass a local copy, '
            f"zoo.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/{path.name}')), "
            f'or place the file at {path} (it is checked on first use).')
