"""The durable per-video score store of a run directory, and the manifest that says which run it belongs to.

Each process appends framed, checksummed records (one per finished or failed video) to its own file under
``<out>/store/`` and fsyncs after every group, so a kill -9 loses at most the videos in flight. Records are
keyed by video id, never by rank: any number of processes can resume any run.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from converters.file_io import fsync_dir

from eval.kit.rundir import MANIFEST, claim_run_dir, read_manifest

STORE_DIR = 'store'
STORE_SUFFIX = '.scores'

# record = MAGIC | payload length (u32) | crc32 of payload (u32) | payload
# payload = header length (u32) | JSON header | prob_sum (float64 x C) | output_sum (float64 x C)
_MAGIC = b'VZS1'
_FRAME = struct.Struct('<4sII')
_HEADER_LEN = struct.Struct('<I')

SCORED, FAILED = 'scored', 'failed'


@dataclass
class StoredVideo:
    """What the store knows of one video: its view sums (scored) or why it could not be scored (failed).

    The sums are the meter's float64 running sums, stored bit for bit, so scores rebuilt from the store are
    exactly those the run computed.
    """
    key: str
    status: str                                 # SCORED or FAILED
    label: int = -1
    views: int = 0
    prob_sum: Optional[np.ndarray] = None       # (C,) float64, sum of view softmax
    output_sum: Optional[np.ndarray] = None     # (C,) float64, sum of raw view outputs
    reason: str = ''


def video_keys(video_ids: Sequence[str]) -> List[str]:
    """One store key per record: the video id, with '#2', '#3'... for repeats (a list file may repeat a name)."""
    seen: Dict[str, int] = {}
    keys = []
    for video_id in video_ids:
        seen[video_id] = seen.get(video_id, 0) + 1
        keys.append(video_id if seen[video_id] == 1 else f'{video_id}#{seen[video_id]}')
    return keys


def encode_record(video: StoredVideo) -> bytes:
    header = {'key': video.key, 'status': video.status, 'label': int(video.label), 'views': int(video.views),
              'reason': video.reason}
    arrays = b''
    if video.status == SCORED:
        prob = np.ascontiguousarray(video.prob_sum, dtype='<f8')
        out = np.ascontiguousarray(video.output_sum, dtype='<f8')
        header['classes'] = int(prob.shape[0])
        arrays = prob.tobytes() + out.tobytes()
    header_bytes = json.dumps(header, ensure_ascii=False).encode('utf-8')
    payload = _HEADER_LEN.pack(len(header_bytes)) + header_bytes + arrays
    return _FRAME.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> Tuple[List[StoredVideo], int]:
    """The complete records of a store file, and how many trailing bytes were ignored.

    A file ends mid-record only when its writer was killed mid-write; such a torn tail (short, or failing
    its checksum) and anything after it is ignored, since the writer never appends after a resume.
    """
    videos, pos = [], 0
    while pos + _FRAME.size <= len(data):
        magic, length, crc = _FRAME.unpack_from(data, pos)
        payload = data[pos + _FRAME.size:pos + _FRAME.size + length]
        if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        (header_len,) = _HEADER_LEN.unpack_from(payload, 0)
        header = json.loads(payload[_HEADER_LEN.size:_HEADER_LEN.size + header_len].decode('utf-8'))
        video = StoredVideo(header['key'], header['status'], header['label'], header['views'],
                            reason=header.get('reason', ''))
        if video.status == SCORED:
            arrays = np.frombuffer(payload, dtype='<f8', offset=_HEADER_LEN.size + header_len)
            video.prob_sum, video.output_sum = arrays[:header['classes']].copy(), arrays[header['classes']:].copy()
        videos.append(video)
        pos += _FRAME.size + length
    return videos, len(data) - pos


def merge(videos: Iterable[StoredVideo], into: Optional[Dict[str, StoredVideo]] = None) -> Dict[str, StoredVideo]:
    """Key -> record; a scored record beats a failed one (a later --retry-failed success), else the first wins."""
    merged = {} if into is None else into
    for video in videos:
        known = merged.get(video.key)
        if known is None or (known.status == FAILED and video.status == SCORED):
            merged[video.key] = video
    return merged


class StoreWriter:
    """Appends records to one file of this process; every ``append`` is flushed and fsynced before returning."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, 'ab')
        fsync_dir(os.path.dirname(path))
        self.written = 0

    def append(self, videos: Sequence[StoredVideo]) -> None:
        if not videos:
            return
        self._file.write(b''.join(encode_record(v) for v in videos))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += len(videos)

    def close(self) -> None:
        self._file.close()


class ScoreStore:
    """The ``store/`` folder of a run directory: many append-only files, read together as one key -> record map."""

    def __init__(self, run_dir: str):
        self.dir = os.path.join(run_dir, STORE_DIR)

    def files(self) -> List[str]:
        if not os.path.isdir(self.dir):
            return []
        return sorted(os.path.join(self.dir, n) for n in os.listdir(self.dir) if n.endswith(STORE_SUFFIX))

    def iter_files(self) -> Iterator[Tuple[str, List[StoredVideo], int]]:
        for path in self.files():
            with open(path, 'rb') as f:
                videos, torn = decode_records(f.read())
            yield path, videos, torn

    def load(self) -> Tuple[Dict[str, StoredVideo], int]:
        """(key -> record over all files, number of torn bytes ignored)."""
        merged: Dict[str, StoredVideo] = {}
        torn_total = 0
        for _, videos, torn in self.iter_files():
            merge(videos, merged)
            torn_total += torn
        return merged, torn_total

    def open_writer(self, rank: int) -> StoreWriter:
        """A new file for this process and attempt: host and pid in the name keep writers apart across nodes
        and restarts, so no file is ever appended to by two processes or after a torn tail."""
        os.makedirs(self.dir, exist_ok=True)
        name = f'rank{rank:04d}-{socket.gethostname()}-{os.getpid()}{STORE_SUFFIX}'
        return StoreWriter(os.path.join(self.dir, name))


# ------------------------------------------------------------------------------------------- manifest









def check_run_dir(run_dir: str, manifest: dict) -> Optional[str]:
    """None when ``run_dir`` is new (its manifest is then written) or holds a run of the same configuration,
    else why it must not be reused."""
    if read_manifest(run_dir) is None and ScoreStore(run_dir).files():
        return (f'{run_dir} holds stored scores but no {MANIFEST}, so it cannot be told which configuration '
                f'they belong to. Use another --out, or delete {run_dir} to start fresh.')
    return claim_run_dir(run_dir, manifest)
