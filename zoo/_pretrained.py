"""Video-aware pretrained-config records: what a checkpoint is, where it comes from, how to feed it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Optional, Tuple


@lru_cache(maxsize=None)
def kinetics400_class_names() -> Tuple[str, ...]:
    """The 400 Kinetics class names in the Caffe2 classifier's order (alphabetical, as classids.json)."""
    text = resources.files('zoo').joinpath('data/kinetics400_classes.txt').read_text(encoding='utf-8')
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 400:
        raise RuntimeError(f'zoo/data/kinetics400_classes.txt holds {len(names)} names, expected 400')
    return names


@dataclass(frozen=True)
class VideoPretrainedCfg:
    """Declarative record of one pretrained video checkpoint.

    Loading code reads these fields; nothing else in the project hard-codes them. Unlike timm's
    PretrainedCfg it describes the clip (frames, sampling rate, fps), the multi-view test, the value
    range of the input and the integrity of the source file (sha256, size).
    """
    architecture: str = ''
    # --- source checkpoint
    source_name: Optional[str] = None        # upstream checkpoint name, e.g. i3d_baseline_32x2_IN_pretrain_400k
    url: Optional[str] = None                # where the source file is downloaded from
    file: Optional[str] = None               # a local source file that replaces the download
    sha256: Optional[str] = None             # pinned checksum of the source file, once maintainers know it
    size: Optional[int] = None               # size of the source file in bytes, where known
    source_format: Optional[str] = None      # 'caffe2_pickle', 'deepmind_i3d_pickle', ...
    license: Optional[str] = None
    paper: Optional[str] = None
    paper_url: Optional[str] = None
    origin: Optional[str] = None             # code base the checkpoint was trained with
    # --- input
    num_frames: int = 32
    sampling_rate: int = 2                   # take every n-th decoded frame
    fps: Optional[float] = None              # frame rate the clips are decoded at (None: native)
    min_frames: int = 1                      # fewest frames the network accepts
    channel_order: str = 'RGB'
    value_range: Tuple[float, float] = (0.0, 255.0)   # range of the pixels before mean/std
    mean: Tuple[float, ...] = (114.75, 114.75, 114.75)
    std: Tuple[float, ...] = (57.375, 57.375, 57.375)
    crop_size: int = 224                     # training crop, used for single-view testing
    test_scale: int = 256                    # short side the videos are resized to for testing
    test_crop_size: int = 256                # crop of the multi-view (fully-convolutional) test
    test_views: Tuple[int, int] = (3, 10)    # (spatial crops, temporal clips) of the published test
    fully_conv_test: bool = True             # published test runs the classifier at every position
    # --- output
    num_classes: int = 400
    label_set: Optional[str] = 'kinetics400'
    class_names: Tuple[str, ...] = field(default=(), repr=False)
    classifier: str = 'fc'
    first_conv: str = 'conv1'
    # --- reported accuracy of the source checkpoint
    top1: Optional[float] = None
    top5: Optional[float] = None
    paper_top1: Optional[float] = None
    eval_protocol: Optional[str] = None
    notes: Optional[str] = None

    @property
    def input_size(self) -> Tuple[int, int, int, int]:
        """(C, T, H, W) of one training-size clip."""
        return (3, self.num_frames, self.crop_size, self.crop_size)

    @property
    def has_weights(self) -> bool:
        return bool(self.url or self.file)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, overlay: Optional[Mapping[str, Any]] = None, **changes: Any) -> 'VideoPretrainedCfg':
        """A copy with fields changed; an unknown field is an error naming the valid ones."""
        changes = {**(overlay or {}), **changes}
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f'unknown pretrained-config field(s) {unknown}; valid fields: {sorted(known)}')
        return dataclasses.replace(self, **changes)
