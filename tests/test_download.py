"""converters.download against a local HTTP server on 127.0.0.1 that can cut connections, ignore Range and fail."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Union

import pytest

from converters import download
from converters.download import ChecksumError, DownloadError, OfflineError, fetch, read_record, sha256_file

PAYLOAD = random.Random(0).randbytes(300_000)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@dataclasses.dataclass
class Served:
    data: bytes
    status: Optional[int] = None            # answer every request with this HTTP status instead of the file
    honour_range: bool = True
    # Faults for successive requests, consumed in order: 'cut' sends half the body and closes; an int is a status.
    script: List[Union[str, int]] = dataclasses.field(default_factory=list)
    content_type: str = 'application/octet-stream'


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output to the assertions
        pass

    def do_GET(self):
        server = self.server.file_server
        with server.lock:
            server.seen.append((self.path, self.headers.get('Range')))
            served = server.files.get(self.path)
            fault = served.script.pop(0) if served is not None and served.script else None
        if served is None:
            self.send_error(404)
            return
        status = fault if isinstance(fault, int) else served.status
        if status is not None:
            self.send_error(status)
            return
        data, start = served.data, 0
        requested = self.headers.get('Range')
        if requested and served.honour_range:
            start = int(re.fullmatch(r'bytes=(\d+)-', requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Type', served.content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if fault == 'cut':
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class FileServer:
    """In-memory files over HTTP on 127.0.0.1 (port chosen by the OS), logging every request's path and Range."""

    def __init__(self):
        self.files = {}
        self.seen = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.file_server = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)

    def serve(self, path: str, data: bytes = PAYLOAD, **fault) -> str:
        self.files[path] = Served(data, **fault)
        return f'http://127.0.0.1:{self.httpd.server_port}{path}'

    def ranges(self, path: str) -> list:
        """The Range header of every request for ``path``, in order (None where there was none)."""
        with self.lock:
            return [r for p, r in self.seen if p == path]


@pytest.fixture
def server():
    s = FileServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test sees the user's switches or writes into the user's real cache."""
    monkeypatch.delenv('ZOO_OFFLINE', raising=False)
    monkeypatch.delenv('ZOO_CACHE_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))


def get(url, cache, **kwargs):
    return fetch(url, cache_dir=cache, progress=False, backoff=0, timeout=5, **kwargs)


def test_good_download_lands_in_downloads_dir_verified_and_recorded(server, tmp_path):
    url = server.serve('/ckpt/model.pkl')
    path = get(url, tmp_path)
    assert path == tmp_path / 'downloads' / 'model.pkl'
    assert path.read_bytes() == PAYLOAD
    assert sha256_file(path) == PAYLOAD_SHA256
    assert not (tmp_path / 'downloads' / 'model.pkl.part').exists()
    record = read_record(path)
    assert record['sha256'] == PAYLOAD_SHA256
    assert record['size'] == len(PAYLOAD)
    assert record['url'] == url
    assert record['recorded_at'].endswith('+00:00')


def test_pinned_checksum_and_size_that_match_are_accepted_and_recorded(server, tmp_path):
    url = server.serve('/model.pkl')
    path = get(url, tmp_path, sha256=PAYLOAD_SHA256.upper(), size=len(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert read_record(path)['sha256'] == PAYLOAD_SHA256


def test_filename_overrides_the_url_basename(server, tmp_path):
    url = server.serve('/download?id=7')
    path = get(url, tmp_path, filename='i3d_r50.pkl')
    assert path == tmp_path / 'downloads' / 'i3d_r50.pkl'
    assert path.read_bytes() == PAYLOAD


def test_wrong_pinned_checksum_raises_and_leaves_nothing_in_cache(server, tmp_path):
    url = server.serve('/model.pkl')
    wrong = '0' * 64
    with pytest.raises(ChecksumError) as err:
        get(url, tmp_path, sha256=wrong)
    assert wrong in str(err.value) and PAYLOAD_SHA256 in str(err.value) and url in str(err.value)
    assert list((tmp_path / 'downloads').iterdir()) == []


def test_wrong_pinned_size_raises_and_leaves_nothing_in_cache(server, tmp_path):
    url = server.serve('/model.pkl')
    with pytest.raises(ChecksumError, match=f'{len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}'):
        get(url, tmp_path, size=len(PAYLOAD) + 1)
    assert list((tmp_path / 'downloads').iterdir()) == []


def test_connection_cut_half_way_is_resumed_with_a_range_request(server, tmp_path):
    url = server.serve('/model.pkl', script=['cut'])
    path = get(url, tmp_path, sha256=PAYLOAD_SHA256)
    assert server.ranges('/model.pkl') == [None, f'bytes={len(PAYLOAD) // 2}-']
    assert path.read_bytes() == PAYLOAD


def test_leftover_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    url = server.serve('/model.pkl')
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'model.pkl.part').write_bytes(PAYLOAD[:1000])
    path = get(url, tmp_path, sha256=PAYLOAD_SHA256)
    assert server.ranges('/model.pkl') == ['bytes=1000-']
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / 'downloads' / 'model.pkl.part').exists()


def test_complete_leftover_part_is_verified_without_a_request(server, tmp_path):
    url = server.serve('/model.pkl')
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'model.pkl.part').write_bytes(PAYLOAD)
    path = get(url, tmp_path, sha256=PAYLOAD_SHA256, size=len(PAYLOAD))
    assert server.ranges('/model.pkl') == []
    assert path.read_bytes() == PAYLOAD


def test_complete_leftover_part_of_unknown_size_is_verified_after_a_416(server, tmp_path):
    url = server.serve('/model.pkl')
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'model.pkl.part').write_bytes(PAYLOAD)
    path = get(url, tmp_path, sha256=PAYLOAD_SHA256)
    assert server.ranges('/model.pkl') == [f'bytes={len(PAYLOAD)}-']
    assert path.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.serve('/model.pkl', honour_range=False)
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / 'model.pkl.part').write_bytes(b'stale bytes of some other file')
    path = get(url, tmp_path)
    assert server.ranges('/model.pkl') == ['bytes=30-']
    assert path.read_bytes() == PAYLOAD
    assert read_record(path)['sha256'] == PAYLOAD_SHA256


def test_404_fails_at_once_naming_the_url_and_status(server, tmp_path):
    url = server.serve('/missing.pkl', status=404)
    with pytest.raises(DownloadError, match='404') as err:
        get(url, tmp_path, retries=3)
    assert url in str(err.value) and 'not found' in str(err.value)
    assert len(server.ranges('/missing.pkl')) == 1


def test_500_is_retried_then_fails_naming_the_url_and_status(server, tmp_path):
    url = server.serve('/model.pkl', status=500)
    with pytest.raises(DownloadError, match='HTTP 500') as err:
        get(url, tmp_path, retries=2)
    assert url in str(err.value) and '3 attempts' in str(err.value)
    assert len(server.ranges('/model.pkl')) == 3
    assert list((tmp_path / 'downloads').iterdir()) == []


def test_transient_503_then_success_is_recovered(server, tmp_path):
    url = server.serve('/model.pkl', script=[503, 429])
    path = get(url, tmp_path, retries=2)
    assert len(server.ranges('/model.pkl')) == 3
    assert path.read_bytes() == PAYLOAD


@pytest.fixture
def refused_url():
    """A port this test holds bound without listening: a connection is refused, and no other process can take
    the port meanwhile (a port freed just before the test could be handed to another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(('127.0.0.1', 0))
        yield f'http://127.0.0.1:{held.getsockname()[1]}/model.pkl'


def test_connection_refused_is_a_download_error_naming_the_url(tmp_path, refused_url):
    url = refused_url
    with pytest.raises(DownloadError, match='connection failed') as err:
        get(url, tmp_path, retries=1)
    assert url in str(err.value)


@pytest.fixture
def no_dns(monkeypatch):
    """A machine that cannot resolve host names, as one without a network: every lookup fails the way glibc
    fails there (EAI_AGAIN). Returns the host names that were looked up."""
    looked_up = []

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, 'Temporary failure in name resolution')

    for name in ('HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'http_proxy', 'https_proxy', 'all_proxy'):
        monkeypatch.delenv(name, raising=False)   # the lookup must be of the download host itself
    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)
    return looked_up


def test_unresolvable_host_fails_at_once_with_one_message_naming_the_ways_out(tmp_path, no_dns, caplog):
    url = 'https://weights.example.invalid/video-nonlocal/i3d_baseline_32x2_IN_pretrain_400k.pkl'
    with caplog.at_level(logging.WARNING, logger='converters.download'):
        with pytest.raises(download.HostNotFoundError) as err:
            get(url, tmp_path, retries=4)
    assert no_dns == ['weights.example.invalid']          # one attempt: waiting does not bring a network back
    assert caplog.records == []                            # no retry warnings either
    message = str(err.value)
    expected_at = tmp_path / 'downloads' / 'i3d_baseline_32x2_IN_pretrain_400k.pkl'
    assert url in message and 'weights.example.invalid cannot be resolved' in message
    assert f'expected at {expected_at}' in message
    assert "pretrained_cfg_overlay=dict(file='/path/to/i3d_baseline_32x2_IN_pretrain_400k.pkl')" in message
    assert f'place the file at {expected_at}' in message
    assert err.value.__cause__ is None and err.value.__suppress_context__   # no chained urllib3 traceback
    assert isinstance(err.value, DownloadError)
    assert not (tmp_path / 'downloads' / 'i3d_baseline_32x2_IN_pretrain_400k.pkl.part').exists()


def test_pretrained_model_without_dns_fails_at_once_naming_the_cache_path(tmp_path, no_dns, monkeypatch):
    import zoo
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path / 'cache'))
    cfg = zoo.get_pretrained_cfg('i3d_r50')
    with pytest.raises(download.HostNotFoundError) as err:
        zoo.create_model('i3d_r50', pretrained=True)
    assert len(no_dns) == 1
    message = str(err.value)
    assert cfg.url in message and str(tmp_path / 'cache' / 'downloads' / cfg.url.rsplit('/', 1)[-1]) in message
    assert 'pretrained_cfg_overlay=dict(file=' in message


def test_refused_connection_is_still_retried(tmp_path, refused_url):
    # the transient counterpart of a failed lookup: the host exists, nothing answers yet
    with pytest.raises(DownloadError, match='gave up after 3 attempts') as err:
        get(refused_url, tmp_path, retries=2)
    assert not isinstance(err.value, download.HostNotFoundError)


def test_html_page_instead_of_the_file_is_refused(server, tmp_path):
    url = server.serve('/model.pkl', data=b'<html>please log in</html>', content_type='text/html; charset=utf-8')
    with pytest.raises(DownloadError, match='HTML page'):
        get(url, tmp_path)
    assert not (tmp_path / 'downloads' / 'model.pkl').exists()
    assert read_record(tmp_path / 'downloads' / 'model.pkl') is None


def test_cached_file_is_returned_without_network(server, tmp_path):
    url = server.serve('/model.pkl')
    first = get(url, tmp_path)
    second = get(url, tmp_path)
    assert second == first
    assert len(server.ranges('/model.pkl')) == 1


def test_offline_with_the_file_cached_uses_it_without_requests(server, tmp_path, monkeypatch):
    url = server.serve('/model.pkl')
    get(url, tmp_path)
    monkeypatch.setenv('ZOO_OFFLINE', 'YES')
    path = get(url, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert len(server.ranges('/model.pkl')) == 1


def test_offline_without_the_file_cached_raises_offline_error(server, tmp_path, monkeypatch):
    url = server.serve('/model.pkl')
    monkeypatch.setenv('ZOO_OFFLINE', '1')
    with pytest.raises(OfflineError) as err:
        get(url, tmp_path)
    message = str(err.value)
    assert 'ZOO_OFFLINE' in message and str(tmp_path / 'downloads' / 'model.pkl') in message
    assert server.ranges('/model.pkl') == []


def test_recorded_checksum_catches_a_file_changed_on_disk(server, tmp_path):
    url = server.serve('/model.pkl')
    path = get(url, tmp_path)
    tampered = bytearray(PAYLOAD)
    tampered[1234] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(ChecksumError) as err:
        get(url, tmp_path)
    message = str(err.value)
    assert PAYLOAD_SHA256 in message and hashlib.sha256(tampered).hexdigest() in message
    assert str(path) in message and 'delete' in message
    assert path.read_bytes() == bytes(tampered)  # left in place, not replaced behind the user's back
    assert len(server.ranges('/model.pkl')) == 1


def test_pinned_checksum_is_checked_against_the_cached_file(server, tmp_path):
    url = server.serve('/model.pkl')
    path = get(url, tmp_path)
    with pytest.raises(ChecksumError, match='pinned'):
        get(url, tmp_path, sha256='f' * 64)
    assert path.read_bytes() == PAYLOAD


def test_record_left_without_its_file_checks_the_next_download(server, tmp_path):
    url = server.serve('/model.pkl')
    path = get(url, tmp_path)
    path.unlink()
    server.files['/model.pkl'].data = PAYLOAD[::-1]  # the file changed upstream
    with pytest.raises(ChecksumError, match='recorded'):
        get(url, tmp_path)
    assert not path.exists() and not (tmp_path / 'downloads' / 'model.pkl.part').exists()


def test_concurrent_fetches_of_one_file_download_it_once(server, tmp_path):
    url = server.serve('/model.pkl')
    results, errors = [], []

    def worker():
        try:
            results.append(get(url, tmp_path))
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert len(results) == 2 and results[0].read_bytes() == PAYLOAD
    assert len(server.ranges('/model.pkl')) == 1


def test_unwritable_cache_dir_is_reported_by_name(server, tmp_path):
    url = server.serve('/model.pkl')
    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('a file where the cache should be')
    with pytest.raises(DownloadError, match='cache directory') as err:
        get(url, blocker / 'cache')
    assert str(blocker / 'cache' / 'downloads') in str(err.value)
    assert server.ranges('/model.pkl') == []


def test_zoo_cache_dir_env_overrides_the_default(server, tmp_path, monkeypatch):
    monkeypatch.setenv('ZOO_CACHE_DIR', str(tmp_path / 'mine'))
    assert download.cache_dir() == tmp_path / 'mine'
    url = server.serve('/model.pkl')
    path = fetch(url, progress=False, backoff=0)
    assert path == tmp_path / 'mine' / 'downloads' / 'model.pkl'


def test_cache_dir_defaults_to_xdg_cache_home_then_home(tmp_path, monkeypatch):
    assert download.cache_dir() == tmp_path / 'xdg' / 'video-zoo'
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert download.cache_dir() == tmp_path / 'home' / '.cache' / 'video-zoo'


@pytest.mark.parametrize('value, expected', [('1', True), ('TRUE', True), ('yes', True), ('On', True),
                                             ('0', False), ('false', False), ('', False)])
def test_is_offline_reads_zoo_offline(monkeypatch, value, expected):
    monkeypatch.setenv('ZOO_OFFLINE', value)
    assert download.is_offline() is expected


def test_malformed_pinned_checksum_is_rejected_before_any_request(server, tmp_path):
    url = server.serve('/model.pkl')
    with pytest.raises(ValueError, match='64 hexadecimal'):
        get(url, tmp_path, sha256='abc')
    assert server.ranges('/model.pkl') == []
