"""Test sets as lists of (video, label) records, and the Dataset that turns a record into its views' frames.

Readers: the official Kinetics annotation CSVs (``label,youtube_id,time_start,time_end,split[,is_cc]``) with
videos found under a root as frame folders (``<label>/<youtube_id>_<start:06d>_<end:06d>/`` as in the seed,
or flat ``<youtube_id>_<start:06d>_<end:06d>/``) or as video files (.mp4/.webm/.mkv named by youtube id,
with or without the time segment); a plain list file of ``path label`` lines; a folder of class folders.
A record whose video is missing keeps a reason instead of a path: it is counted, never silently dropped.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from eval.data.decode import VIDEO_EXTENSIONS, VideoDecodeError, load_views_frames, open_source
from eval.data.views import ViewPlan, ViewSampler

UNLABELLED = -1

# Kinetics clip names: an 11-character YouTube id (letters, digits, '-', '_') then the segment in seconds.
_CLIP_NAME = re.compile(r'^(?P<yid>[A-Za-z0-9_-]{11})_(?P<start>\d{6})_(?P<end>\d{6})$')
_YOUTUBE_ID = re.compile(r'^[A-Za-z0-9_-]{11}$')

# File names of the official annotation CSVs that a data directory may hold, most specific first.
ANNOTATION_NAMES = ('kinetics-400_val.csv', 'kinetics_400_val.csv', 'kinetics400_val.csv', 'kinetics_val.csv',
                    'validate.csv', 'val.csv', 'kinetics-400_test.csv', 'test.csv')


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video: where it is (or why it is not there) and its label index (-1: none)."""
    video_id: str
    path: Optional[str]
    label: int = UNLABELLED
    label_name: str = ''
    missing: Optional[str] = None      # reason when ``path`` is None


def normalise_label(name: str) -> str:
    """Class names as written in different Kinetics files ('riding_a_bike', '"riding a bike"') -> one key."""
    return ' '.join(name.strip().strip('"').replace('_', ' ').lower().split())


class LabelMap:
    """Class name or index -> classifier index, for the model's class list."""

    def __init__(self, class_names: Sequence[str]):
        self.names = tuple(class_names)
        self._index = {normalise_label(n): i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, label: str) -> Tuple[int, str]:
        """(index, canonical name); an integer string is an index. Raises KeyError for unknown names."""
        label = label.strip()
        if re.fullmatch(r'-?\d+', label):
            index = int(label)
            if index == UNLABELLED:
                return UNLABELLED, ''
            if self.names and not 0 <= index < len(self.names):
                raise KeyError(f'label index {index} outside 0..{len(self.names) - 1}')
            return index, self.names[index] if self.names else ''
        index = self._index.get(normalise_label(label))
        if index is None:
            raise KeyError(f'label {label!r} is not one of the model\'s {len(self.names)} classes')
        return index, self.names[index]


# ------------------------------------------------------------------------------------ finding videos

class VideoIndex:
    """Where the clips under a root are, by youtube id and by (youtube id, start, end).

    The scan goes at most ``max_depth`` folders deep and never lists a frame folder's contents (a Kinetics
    copy holds millions of frames). Frame folders are recognised by the clip-name pattern; video files by
    their extension, named ``<youtube_id>.<ext>`` or ``<youtube_id>_<start>_<end>.<ext>``.
    """

    def __init__(self, root: str, max_depth: int = 3):
        self.root = root
        self.by_segment: Dict[Tuple[str, int, int], List[str]] = {}
        self.by_id: Dict[str, List[str]] = {}
        self._scan(root, max_depth)

    def _add(self, path: str, stem: str) -> bool:
        match = _CLIP_NAME.match(stem)
        if match:
            key = (match['yid'], int(match['start']), int(match['end']))
            self.by_segment.setdefault(key, []).append(path)
            self.by_id.setdefault(match['yid'], []).append(path)
            return True
        if _YOUTUBE_ID.match(stem):
            self.by_id.setdefault(stem, []).append(path)
            return True
        return False

    def _scan(self, folder: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.is_dir():
                if _CLIP_NAME.match(entry.name):
                    self._add(entry.path, entry.name)       # a frame folder: do not descend
                elif depth > 1:
                    self._scan(entry.path, depth - 1)
            else:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in VIDEO_EXTENSIONS:
                    self._add(entry.path, stem)

    def find(self, youtube_id: str, start: Optional[int], end: Optional[int],
             label_name: str = '') -> Optional[str]:
        """The clip for a CSV row: exact segment first, then the id alone; a folder named for the label wins."""
        candidates = self.by_segment.get((youtube_id, start, end)) if start is not None else None
        candidates = candidates or self.by_id.get(youtube_id) or []
        if len(candidates) > 1 and label_name:
            under_label = [c for c in candidates
                           if normalise_label(os.path.basename(os.path.dirname(c))) == normalise_label(label_name)]
            candidates = under_label or candidates
        # a frame folder and a video file of the same clip: prefer the video file only when no folder exists
        candidates = sorted(candidates, key=lambda c: (not os.path.isdir(c), c))
        return candidates[0] if candidates else None


def _segment_seconds(text: str) -> Optional[int]:
    try:
        return int(round(float(text)))
    except (TypeError, ValueError):
        return None


def read_kinetics_csv(csv_path: str, root: str, labels: LabelMap, split: Optional[str] = None,
                      index: Optional[VideoIndex] = None) -> List[VideoRecord]:
    """Records for the rows of an official Kinetics annotation CSV; missing clips carry a reason."""
    index = index or VideoIndex(root)
    records = []
    with open(csv_path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if 'youtube_id' not in fields:
            raise ValueError(f'{csv_path}: not a Kinetics annotation CSV (header {reader.fieldnames}); '
                             'expected label,youtube_id,time_start,time_end,split[,is_cc]')
        for row in reader:
            if split and row.get('split') and row['split'] != split:
                continue
            yid = row['youtube_id'].strip()
            start, end = _segment_seconds(row.get('time_start')), _segment_seconds(row.get('time_end'))
            video_id = f'{yid}_{start:06d}_{end:06d}' if start is not None and end is not None else yid
            label, label_name, problem = UNLABELLED, '', None
            if row.get('label'):
                try:
                    label, label_name = labels.lookup(row['label'])
                except KeyError as e:
                    problem = str(e.args[0])
            path = index.find(yid, start, end, label_name or row.get('label', ''))
            if path is None and problem is None:
                problem = (f'no video found under {root} (looked for <label>/{video_id}/, {video_id}/, '
                           f'{yid}[_{start:06d}_{end:06d}].{{mp4,webm,mkv}})' if start is not None
                           else f'no video found for youtube id {yid} under {root}')
            records.append(VideoRecord(video_id, None if problem else path, label, label_name, problem))
    return records


def read_list_file(list_path: str, labels: LabelMap, root: Optional[str] = None) -> List[VideoRecord]:
    """Records for a list of ``path label`` lines (label: class index or name; absent: unlabelled).

    Relative paths are taken from ``root``, else from the list file's folder. A class name with spaces
    must be the end of the line (paths may contain spaces only with an integer or no label).
    """
    root = root or os.path.dirname(os.path.abspath(list_path))
    names_by_length = sorted(labels.names, key=len, reverse=True)
    records = []
    with open(list_path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            path, label_text = line, ''
            if '\t' in line:
                path, label_text = (part.strip() for part in line.split('\t', 1))
            else:
                parts = line.rsplit(None, 1)
                if len(parts) == 2 and re.fullmatch(r'-?\d+', parts[1]):
                    path, label_text = parts
                else:
                    for name in names_by_length:
                        if line.endswith(' ' + name):
                            path, label_text = line[:-len(name)].strip(), name
                            break
            full = path if os.path.isabs(path) else os.path.join(root, path)
            video_id = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
            label, label_name, problem = UNLABELLED, '', None
            if label_text:
                try:
                    label, label_name = labels.lookup(label_text)
                except KeyError as e:
                    problem = str(e.args[0])
            if problem is None and not os.path.exists(full):
                problem = f'{full} does not exist'
            records.append(VideoRecord(video_id, None if problem else full, label, label_name, problem))
    return records


class DataNotFound(ValueError):
    """No video could be found: the message says what was looked for, where, and what was seen instead."""


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def _is_frame_folder(path: str) -> bool:
    """A folder whose first entries include image files (listed lazily: frame folders hold thousands). A folder
    that cannot be listed is not one: a reader that searches it reports why it could not."""
    try:
        entries = os.scandir(path)
    except OSError:
        return False
    with entries:
        for k, entry in enumerate(entries):
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                return True
            if k >= 50:
                break
    return False


def _dangling(entry: os.DirEntry) -> bool:
    """A symbolic link to nothing, named like a video or a frame folder (no extension)."""
    ext = os.path.splitext(entry.name)[1].lower()
    return entry.is_symlink() and not os.path.exists(entry.path) and (ext in VIDEO_EXTENSIONS or not ext)


def _video_entries(folder: str, with_folders: bool = False) -> List[Union[os.DirEntry, VideoRecord]]:
    """Video files and frame folders directly in ``folder``, sorted by name (``with_folders``: every other
    sub-folder too). What cannot be a video but looks like one, a dangling symbolic link, comes back as a
    VideoRecord without a path that says so: listed as missing, never skipped in silence."""
    found: List[Union[os.DirEntry, VideoRecord]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if _dangling(entry):
            found.append(VideoRecord(os.path.splitext(entry.name)[0], None, missing=(
                f'{entry.path} is a symbolic link to {os.readlink(entry.path)}, which does not exist')))
        elif entry.is_dir() and (with_folders or _is_frame_folder(entry.path)):
            found.append(entry)
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in VIDEO_EXTENSIONS:
            found.append(entry)
    return found


def _entry_record(entry: Union[os.DirEntry, VideoRecord], label: int = UNLABELLED, label_name: str = '') -> VideoRecord:
    if isinstance(entry, VideoRecord):
        return dataclasses.replace(entry, label=label, label_name=label_name)
    video_id = entry.name if entry.is_dir() else os.path.splitext(entry.name)[0]
    return VideoRecord(video_id, entry.path, label, label_name)


def read_class_folders(root: str, labels: LabelMap) -> List[VideoRecord]:
    """``root/<class name>/<video file or frame folder>``: the label is the folder's name.

    A sub-folder that is not one of the model's classes is an error naming it (``annotations/``, ``frames/``
    of another layout must not read as 0 videos of unknown classes).
    """
    class_dirs = [e for e in sorted(os.scandir(root), key=lambda e: e.name) if e.is_dir()]
    unknown = []
    records = []
    for class_dir in class_dirs:
        try:
            label, label_name = labels.lookup(class_dir.name)
        except KeyError:
            unknown.append(class_dir.name)
            continue
        records += [_entry_record(e, label, label_name) for e in _video_entries(class_dir.path)]
    if unknown:
        shown = ', '.join(f'{n}/' for n in unknown[:10]) + (f' and {len(unknown) - 10} more' if len(unknown) > 10 else '')
        raise DataNotFound(f'{root}: read as class folders, but {shown} '
                           f'{"is not a class" if len(unknown) == 1 else "are not classes"} of the model '
                           f'({len(labels)} classes, e.g. {labels.names[0]!r}). Expected <class name>/<video> '
                           f'folders, a Kinetics CSV in {root} or {os.path.join(root, "annotations")}, '
                           'or video files / frame folders directly in it (unlabelled).')
    return records


def read_unlabelled_folder(root: str, recursive: bool = False) -> List[VideoRecord]:
    """Video files and frame folders under ``root``: scored, not labelled.

    ``recursive``: also in its sub-folders (a folder that is not a frame folder is searched; a frame folder
    is one video); a video's id is then its path relative to ``root`` without the extension
    (``Abuse/Abuse001_x264``), in that order. A folder is searched once by its real path, so a symbolic link
    back up (``sub/up -> ..``) or to a folder already searched adds nothing instead of looping; a dangling
    link and a folder that cannot be listed are records without a path that say why.
    """
    if not recursive:
        return [_entry_record(e) for e in _video_entries(root)]
    return _search(root, '', {os.path.realpath(root)})


def _search(folder: str, prefix: str, seen: set) -> List[VideoRecord]:
    """The records under ``folder`` (ids prefixed); ``seen``: real paths of folders already searched or claimed.
    A real sub-folder is searched under its own name before a symbolic link to it from beside it."""
    try:
        entries = _video_entries(folder, with_folders=True)
    except OSError as e:
        return [VideoRecord(prefix.rstrip('/') or folder, None, missing=f'cannot list folder {folder}: {e.strerror or e}')]
    folders = {e.path: e for e in entries
               if not isinstance(e, VideoRecord) and e.is_dir() and not _is_frame_folder(e.path)}
    mine = {path: os.path.realpath(path) for path, e in folders.items() if not e.is_symlink()}
    mine = {path: real for path, real in mine.items() if real not in seen}
    seen.update(mine.values())
    records = []
    for entry in entries:
        if isinstance(entry, VideoRecord):
            records.append(dataclasses.replace(entry, video_id=prefix + entry.video_id))
        elif entry.path in folders:
            real = mine.get(entry.path) or os.path.realpath(entry.path)
            if entry.path in mine or real not in seen:
                seen.add(real)
                records += _search(entry.path, f'{prefix}{entry.name}/', seen)
        else:
            record = _entry_record(entry)
            records.append(dataclasses.replace(record, video_id=prefix + record.video_id))
    return records


def find_videos(data: str) -> Tuple[List[VideoRecord], str]:
    """The videos of a job's --data and a one-line description: a folder (video files and frame folders,
    sub-folders searched), one video file (by its extension), or a list file (one path per line).
    DataNotFound when there is nothing there or no video in it."""
    if os.path.isdir(data):
        records = read_unlabelled_folder(data, recursive=True)
        desc = f'folder {data} ({len(records)} videos / frame folders, sub-folders included)'
    elif os.path.isfile(data) and os.path.splitext(data)[1].lower() in VIDEO_EXTENSIONS:
        records = [VideoRecord(os.path.splitext(os.path.basename(data))[0], data)]
        desc = f'video file {data}'
    elif os.path.isfile(data):
        records = read_list_file(data, LabelMap(()))
        desc = f'list file {data} ({len(records)} entries)'
    else:
        raise DataNotFound(f'{data}: no such file or folder')
    if not records:
        raise DataNotFound(f'no video found: {desc}')
    return records, desc


ANNOTATION_FOLDERS = ('', 'annotations')


def find_annotations(folder: str) -> Tuple[Optional[str], List[str]]:
    """(the official CSV found, every path tried): ``folder``, ``folder/annotations`` and the folders just
    below that (the seed's ``ln -s /path/to/annotation_csvs data/kinetics/annotations/`` nests one)."""
    places = [os.path.join(folder, sub) for sub in ANNOTATION_FOLDERS]
    nested = os.path.join(folder, 'annotations')
    if os.path.isdir(nested):
        places += [e.path for e in sorted(os.scandir(nested), key=lambda e: e.name) if e.is_dir()]
    tried = []
    for place in places:
        for name in ANNOTATION_NAMES:
            path = os.path.join(place, name)
            tried.append(path)
            if os.path.isfile(path):
                return path, tried
    return None, tried


VIDEO_ROOTS = ('frames', 'videos')


def video_root(folder: str, official: Sequence[str] = ()) -> str:
    """Where the videos of a data folder are: a benchmark's ``official`` folder (``UCF-101/`` of the UCF-101
    archive), ``frames/`` or ``videos/`` (the seed's layout), else the folder itself."""
    for sub in tuple(official) + VIDEO_ROOTS:
        if os.path.isdir(os.path.join(folder, sub)):
            return os.path.join(folder, sub)
    return folder


def _read_data_folder(data: str, labels: LabelMap, split: Optional[str]) -> Tuple[List[VideoRecord], str]:
    csv_path, tried = find_annotations(data)
    if csv_path:
        root = video_root(data)
        return read_kinetics_csv(csv_path, root, labels, split), f'Kinetics CSV {csv_path}, videos under {root}'
    direct = read_unlabelled_folder(data)
    if direct:
        return direct, f'unlabelled videos in {data}'
    try:
        records = read_class_folders(data, labels)
    except DataNotFound as e:
        raise DataNotFound(f'{e} Annotation CSVs tried: {", ".join(os.path.relpath(t, data) for t in tried[:len(ANNOTATION_NAMES)])} '
                           f'in {data} and its annotations/ folder.') from None
    return records, f'class folders under {data}'


def read_dataset(data: str, labels: LabelMap, annotations: Optional[str] = None,
                 split: Optional[str] = None) -> Tuple[List[VideoRecord], str]:
    """Records for ``--data`` (a CSV, a list file or a folder) and a one-line description of the layout.

    - ``annotations`` (a Kinetics CSV) given: videos are looked up under ``data``.
    - ``data`` is a .csv: a Kinetics CSV whose videos sit beside it.
    - ``data`` is another file: a ``path label`` list.
    - ``data`` is a folder holding one of ANNOTATION_NAMES (in it or in its ``annotations/``): that CSV,
      videos under its ``frames/`` or ``videos/`` folder or the folder itself (the seed's layout);
      a folder of video files or frame folders: unlabelled; otherwise a folder of class folders.
    """
    if annotations:
        return read_kinetics_csv(annotations, data, labels, split), f'Kinetics CSV {annotations}, videos under {data}'
    if os.path.isfile(data) and os.path.splitext(data)[1].lower() in VIDEO_EXTENSIONS:
        return find_videos(data)                      # one video: predictions (a label needs a list)
    if os.path.isfile(data):
        if data.lower().endswith('.csv'):
            root = os.path.dirname(os.path.abspath(data))
            return read_kinetics_csv(data, root, labels, split), f'Kinetics CSV {data}, videos under {root}'
        return read_list_file(data, labels), f'list file {data}'
    if os.path.isdir(data):
        return _read_data_folder(data, labels, split)
    raise FileNotFoundError(f'--data {data!r} is neither a file nor a folder')


# ------------------------------------------------------------------------------ the torch Dataset

@dataclass
class VideoSample:
    """The decoded frames of one video and the plan that cuts its views (see ViewPlan)."""
    index: int
    record: VideoRecord
    plan: ViewPlan
    frames: torch.Tensor        # (U, H, W, 3) uint8

    def pin_memory(self) -> 'VideoSample':
        """The DataLoader's pin_memory=True (a CUDA device) calls this: the frames in page-locked memory."""
        return dataclasses.replace(self, frames=self.frames.pin_memory())


@dataclass
class FailedVideo:
    index: int
    record: VideoRecord
    reason: str


class MultiViewDataset(torch.utils.data.Dataset):
    """Record i -> VideoSample, or FailedVideo when the video is missing or unreadable (never raises).

    Returning failures as items keeps a DataLoader worker alive and lets the runner list every video it
    could not score. A video that fails to decode is tried once more before it is given up: on network
    storage a read can fail once and succeed the next time, and a 20k-video run should not lose it.
    """

    attempts = 2

    def __init__(self, records: Sequence[VideoRecord], sampler: ViewSampler, fps: Optional[float] = None):
        self.records = list(records)
        self.sampler = sampler
        self.fps = fps

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, record: VideoRecord):
        try:
            source = open_source(record.path, fps=self.fps)
            return load_views_frames(source, self.sampler)
        except VideoDecodeError as e:
            return str(e)
        except Exception as e:  # a decoder bug must not end a 20k-video run; it is listed with its type
            return f'{type(e).__name__}: {e}'

    def __getitem__(self, i: int) -> Union[VideoSample, FailedVideo]:
        record = self.records[i]
        if record.path is None:
            return FailedVideo(i, record, record.missing or 'no video')
        reasons = []
        for _ in range(self.attempts):
            decoded = self._decode(record)
            if not isinstance(decoded, str):
                plan, frames = decoded
                return VideoSample(i, record, plan, torch.from_numpy(frames))
            reasons.append(decoded)
        if len(set(reasons)) == 1:
            return FailedVideo(i, record, f'{reasons[0]} (failed {len(reasons)} times)')
        return FailedVideo(i, record, ' | '.join(f'attempt {k + 1}: {r}' for k, r in enumerate(reasons)))
