"""Benchmarks as presets: how to read a benchmark's annotations, its class list, its default views.

A preset is a few lines of data (``Benchmark``) naming a reader; a new annotation format adds one reader.
Kinetics (400/600/700 share the CSV format), UCF-101 and HMDB-51 (official split files), a plain
``path label`` list, class folders and unlabelled folders are here; ``BENCHMARKS`` is the registry.
"""
from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from eval.data.records import (DataNotFound, LabelMap, VideoRecord, find_annotations, find_videos, normalise_label,
                               read_class_folders, read_dataset, read_list_file, video_root)

# (records, description of what was read) from (data, annotations, split, labels)
Reader = Callable[[str, Optional[str], Optional[str], LabelMap], Tuple[List[VideoRecord], str]]
# the benchmark's own class names from (data, annotations); None: the model's classes
ClassList = Callable[[str, Optional[str]], Tuple[str, ...]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    read: Reader
    classes: Optional[ClassList] = None      # None: the model's classes (Kinetics, lists, folders)
    # the training set of a split (fine-tuning); None: the benchmark has no train split of its own, and
    # ``read`` reads whatever training data is given
    read_train: Optional[Reader] = None
    splits: Tuple[str, ...] = ()             # allowed --split values; the first is the default

    def split(self, requested: Optional[str]) -> Optional[str]:
        if not self.splits:
            return requested
        if requested is None:
            return self.splits[0]
        if requested not in self.splits:
            raise ValueError(f'{self.name}: --split must be one of {", ".join(self.splits)}, got {requested!r}')
        return requested


# ------------------------------------------------------------------------------------- shared helpers

def _annotation_dir(data: str, annotations: Optional[str], wanted: str, folders: Sequence[str]) -> str:
    """The folder holding ``wanted`` (a glob): --annotations, else the benchmark's usual folders."""
    places = [annotations] if annotations else [os.path.join(data, f) for f in folders] + [
        os.path.join(os.path.dirname(os.path.abspath(data)), f) for f in folders if f] + [data]
    for place in places:
        if place and glob.glob(os.path.join(glob.escape(place), wanted)):
            return place
    raise DataNotFound(f'no {wanted} found; looked in {", ".join(p for p in places if p)} '
                       '(give the folder of the split files with --annotations)')


def _find_video(root: str, relative: str, class_name: str) -> Optional[str]:
    """A listed video under ``root``: as listed, flat, or as a frame folder named by its stem."""
    stem = os.path.splitext(os.path.basename(relative))[0]
    for candidate in (os.path.join(root, relative), os.path.join(root, os.path.basename(relative)),
                      os.path.join(root, class_name, os.path.basename(relative)),
                      os.path.join(root, class_name, stem), os.path.join(root, stem)):
        if os.path.exists(candidate):
            return candidate
    return None


def _subfolders(root: str) -> List[str]:
    try:
        return sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        return []


def _record(root: str, relative: str, class_name: str, labels: LabelMap, below: Sequence[str] = ()) -> VideoRecord:
    """A listed video's record; when it is missing under ``root`` but present in one of the folders ``below``
    it (its sub-folders), the reason names the --data that would find it."""
    video_id = os.path.splitext(os.path.basename(relative))[0]
    label, label_name = labels.lookup(class_name)
    path = _find_video(root, relative, class_name)
    missing = None
    if path is None:
        missing = f'{relative} not found under {root} (as listed, flat, or as a frame folder)'
        deeper = next((sub for sub in below if _find_video(sub, relative, class_name)), None)
        if deeper:
            missing += f'; it is under {deeper}: give --data {deeper}'
    return VideoRecord(video_id, path, label, label_name, missing)


# ------------------------------------------------------------------------------------------ UCF-101

UCF101_FOLDERS = ('ucfTrainTestlist', 'annotations', '')
UCF101_VIDEO_FOLDERS = ('UCF-101',)          # UCF101.rar extracts to UCF-101/<Class>/v_*.avi


def ucf101_classes(data: str, annotations: Optional[str]) -> Tuple[str, ...]:
    """classInd.txt: ``<1-based index> <ClassName>`` lines, in classifier order."""
    path = os.path.join(_annotation_dir(data, annotations, 'classInd.txt', UCF101_FOLDERS), 'classInd.txt')
    entries = []
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                index, _, name = line.strip().partition(' ')
                if not index.isdigit() or not name:
                    raise ValueError(f'{path}:{n}: expected "<index> <ClassName>", got {line.strip()!r}')
                entries.append((int(index), name.strip()))
    if sorted(i for i, _ in entries) != list(range(1, len(entries) + 1)):
        raise ValueError(f'{path}: class indices are not 1..{len(entries)}')
    return tuple(name for _, name in sorted(entries))


def _read_ucf101_list(data: str, annotations: Optional[str], split: Optional[str], labels: LabelMap,
                      kind: str) -> Tuple[List[VideoRecord], str]:
    """{kind}list0{split}.txt: one ``<ClassName>/<video>.avi`` per line (the whole line is the path, spaces and
    all; the train lists add `` <1-based class index>``); the class is the folder part, matched
    case-insensitively (the lists write HandstandPushups where classInd.txt writes HandStandPushups)."""
    name = f'{kind}list0{split}.txt'
    path = os.path.join(_annotation_dir(data, annotations, name, UCF101_FOLDERS), name)
    root = video_root(data, UCF101_VIDEO_FOLDERS)
    below = _subfolders(root)
    records = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            relative = line.strip().replace('\\', '/')
            if kind == 'train':
                relative = re.sub(r'\s+\d+$', '', relative)
            if relative:
                records.append(_record(root, relative, relative.split('/')[0], labels, below))
    return records, f'UCF-101 split {split}, {kind} list ({path}), videos under {root}'


def read_ucf101(data: str, annotations: Optional[str], split: Optional[str],
                labels: LabelMap) -> Tuple[List[VideoRecord], str]:
    """The test list of a split (testlist0N.txt)."""
    return _read_ucf101_list(data, annotations, split, labels, 'test')


def read_ucf101_train(data: str, annotations: Optional[str], split: Optional[str],
                      labels: LabelMap) -> Tuple[List[VideoRecord], str]:
    """The training list of a split (trainlist0N.txt)."""
    return _read_ucf101_list(data, annotations, split, labels, 'train')


# ------------------------------------------------------------------------------------------ HMDB-51

HMDB51_FOLDERS = ('testTrainMulti_7030_splits', 'splits', 'annotations', '')
HMDB51_VIDEO_FOLDERS = ('hmdb51_org',)       # hmdb51_org.rar (and its per-class archives) -> hmdb51_org/<class>/*.avi
_HMDB_SPLIT = re.compile(r'^(?P<cls>.+)_test_split(?P<split>[123])\.txt$')
HMDB51_TEST_FLAG = '2'          # split files mark each video 0 (unused), 1 (train) or 2 (test)
HMDB51_TRAIN_FLAG = '1'


def _hmdb51_split_files(data: str, annotations: Optional[str], split: str) -> Dict[str, str]:
    folder = _annotation_dir(data, annotations, f'*_test_split{split}.txt', HMDB51_FOLDERS)
    files = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), f'*_test_split{split}.txt'))):
        files[_HMDB_SPLIT.match(os.path.basename(path))['cls']] = path
    return files


def hmdb51_classes(data: str, annotations: Optional[str]) -> Tuple[str, ...]:
    """The class names of the split files, sorted (the order of the usual HMDB-51 classifiers)."""
    return tuple(sorted(_hmdb51_split_files(data, annotations, '1'), key=normalise_label))


def _read_hmdb51_flag(data: str, annotations: Optional[str], split: Optional[str], labels: LabelMap,
                      flag: str) -> Tuple[List[VideoRecord], str]:
    """``<class>_test_split{n}.txt``: ``<video>.avi <flag>`` lines; the videos marked ``flag``."""
    files = _hmdb51_split_files(data, annotations, split)
    root = video_root(data, HMDB51_VIDEO_FOLDERS)
    below = _subfolders(root)
    records = []
    for class_name, path in files.items():
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                parts = line.strip().rsplit(None, 1)
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in '012':
                    raise ValueError(f'{path}:{n}: expected "<video> <0|1|2>", got {line.strip()!r}')
                if parts[1] == flag:
                    records.append(_record(root, os.path.join(class_name, parts[0]), class_name, labels, below))
    part = 'test' if flag == HMDB51_TEST_FLAG else 'train'
    return records, (f'HMDB-51 {part} split {split} ({len(files)} split files in {os.path.dirname(path)}), '
                     f'videos under {root}')


def read_hmdb51(data: str, annotations: Optional[str], split: Optional[str],
                labels: LabelMap) -> Tuple[List[VideoRecord], str]:
    """The test set of a split: flag 2."""
    return _read_hmdb51_flag(data, annotations, split, labels, HMDB51_TEST_FLAG)


def read_hmdb51_train(data: str, annotations: Optional[str], split: Optional[str],
                      labels: LabelMap) -> Tuple[List[VideoRecord], str]:
    """The training set of a split: flag 1."""
    return _read_hmdb51_flag(data, annotations, split, labels, HMDB51_TRAIN_FLAG)


# ----------------------------------------------------------------------------------- generic formats

def read_any(data, annotations, split, labels):
    return read_dataset(data, labels, annotations, split)


def read_list(data, annotations, split, labels):
    return read_list_file(data, labels), f'list file {data}'


def read_folders(data, annotations, split, labels):
    return read_class_folders(data, labels), f'class folders under {data}'


def read_unlabelled(data, annotations, split, labels):
    """Every job's video finder (eval.data.records.find_videos): a folder searched recursively, one video file
    or a list file of paths."""
    return find_videos(data)


def kinetics_csv_classes(data: str, annotations: Optional[str]) -> Tuple[str, ...]:
    """Kinetics-600/700 class names: the labels of the annotation CSV, sorted (the official order)."""
    path = annotations or (data if os.path.isfile(data) else find_annotations(data)[0])
    if not path:
        raise DataNotFound(f'no Kinetics annotation CSV found in {data} or {os.path.join(data, "annotations")}')
    with open(path, newline='', encoding='utf-8') as f:
        return tuple(sorted({row['label'].strip() for row in csv.DictReader(f) if row.get('label')}))


BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in (
    Benchmark('kinetics400', 'Kinetics-400 (official CSV, or a list / class folders of its classes)', read_any),
    Benchmark('kinetics600', 'Kinetics-600 (official CSV)', read_any, classes=kinetics_csv_classes),
    Benchmark('kinetics700', 'Kinetics-700 (official CSV)', read_any, classes=kinetics_csv_classes),
    Benchmark('ucf101', 'UCF-101 (classInd.txt, testlist0N.txt)', read_ucf101, classes=ucf101_classes,
              read_train=read_ucf101_train, splits=('1', '2', '3')),
    Benchmark('hmdb51', 'HMDB-51 (<class>_test_splitN.txt, flag 2)', read_hmdb51, classes=hmdb51_classes,
              read_train=read_hmdb51_train, splits=('1', '2', '3')),
    Benchmark('list', 'a "path label" list file, labels of the model\'s classes', read_list),
    Benchmark('folders', 'class folders <class>/<video>, classes of the model', read_folders),
    Benchmark('unlabelled', 'video files or frame folders, no labels (predictions only)', read_unlabelled),
)}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f'unknown benchmark {name!r}; known: {", ".join(BENCHMARKS)}') from None


def describe_benchmarks() -> str:
    return '\n'.join(f'  {b.name:<12} {b.title}' for b in BENCHMARKS.values())
