"""Video-aware pretrained-config records: what a checkpoint is, where it comes from, how to feed it; and the
timm view of the same record (timm's keys, derived from ours in one place, ``timm_fields``)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any, Dict, Iterator, Optional, Tuple


# The input normalisations of the zoo's checkpoints: (mean, std) per channel on 0-255 pixels.
CAFFE2_NORM = ((114.75,) * 3, (57.375,) * 3)    # the Caffe2 video-nonlocal-net models (the config default)
MINUS1_1_NORM = ((127.5,) * 3, (127.5,) * 3)    # DeepMind's I3D: RGB scaled to [-1, 1]


@lru_cache(maxsize=None)
def kinetics400_class_names() -> Tuple[str, ...]:
    """The 400 Kinetics class names in the Caffe2 classifier's order (alphabetical, as classids.json)."""
    text = resources.files('zoo').joinpath('data/kinetics400_classes.txt').read_text(encoding='utf-8')
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 400:
        raise RuntimeError(f'zoo/data/kinetics400_classes.txt holds {len(names)} names, expected 400')
    return names


@dataclass(frozen=True)
class VideoPretrainedCfg(Mapping):
    """Declarative record of one pretrained video checkpoint.

    Attributes are our fields, in our units: it describes the clip (frames, sampling rate, fps), the
    multi-view test, the value range of the input (``mean``/``std`` are on that range, e.g. 114.75 on
    0-255 pixels) and the integrity of the source file (sha256, size).

    As a mapping it is timm's pretrained config: ``cfg['input_size']``, ``cfg.get('mean')`` ... give timm's
    keys with timm's meaning (``input_size`` (3, T, H, W), ``mean``/``std`` on timm's 0-1 scale,
    ``crop_pct``, ``pool_size`` ...), computed from the attributes by ``timm_fields``; our video-only
    fields (``num_frames``, ``sampling_rate``, ``sha256``, ``top1`` ...) are keys too. So ``cfg.mean`` is
    (114.75,) * 3 and ``cfg['mean']`` is (0.45,) * 3: the same normalisation in the two scales.
    """
    architecture: str = ''
    tag: Optional[str] = None                # timm pretrained tag: `<architecture>.<tag>` names these weights
    # --- source checkpoint
    source_name: Optional[str] = None        # upstream checkpoint name, e.g. i3d_baseline_32x2_IN_pretrain_400k
    url: Optional[str] = None                # where the source file is downloaded from
    file: Optional[str] = None               # a local source file that replaces the download
    sha256: Optional[str] = None             # pinned checksum of the source file, once maintainers know it
    size: Optional[int] = None               # size of the source file in bytes, where known
    source_format: Optional[str] = None      # 'caffe2_pickle', 'deepmind_i3d_pickle', 'pytorch_i3d_piergiaj', ...
    # timm's sharing sources: 'local-dir' (``file`` is the save_for_hf folder) or 'hf-hub' (``hf_hub_id``); the
    # folder holds the zoo's own state dict, loaded as is whatever ``source_format`` says of the original file
    source: Optional[str] = None
    hf_hub_id: Optional[str] = None
    license: Optional[str] = None
    paper: Optional[str] = None
    paper_url: Optional[str] = None
    origin: Optional[str] = None             # code base the checkpoint was trained with
    # --- input
    num_frames: int = 32
    sampling_rate: int = 2                   # take every n-th decoded frame
    fps: Optional[float] = None              # frame rate the clips are decoded at (None: native)
    min_frames: int = 1                      # fewest frames the network accepts
    min_crop_size: int = 1                   # smallest height/width the network accepts
    channel_order: str = 'RGB'
    value_range: Tuple[float, float] = (0.0, 255.0)   # range of the pixels before mean/std
    mean: Tuple[float, ...] = CAFFE2_NORM[0]
    std: Tuple[float, ...] = CAFFE2_NORM[1]
    # test-time resize filter (Caffe2: cv::resize, bilinear), for timm's data config (timm_fields); eval's
    # decoders resize bilinearly whatever it says, so every entry declares 'bilinear' (tests/test_runtime.py)
    interpolation: str = 'bilinear'
    crop_size: int = 224                     # training crop, used for single-view testing
    test_scale: int = 256                    # short side the videos are resized to for testing
    test_crop_size: int = 256                # crop of the multi-view (fully-convolutional) test
    test_views: Tuple[int, int] = (3, 10)    # (spatial crops, temporal clips) of the published test
    # --- output
    num_classes: int = 400
    label_set: Optional[str] = 'kinetics400'
    class_names: Tuple[str, ...] = field(default=(), repr=False)
    classifier: str = 'fc'
    first_conv: str = 'conv1'
    pool_size: Optional[Tuple[int, int, int]] = None   # (T', H', W') of forward_features at input_size
    # --- architecture arguments these weights need, as ((name, value), ...): e.g. the BN epsilon of a port
    arch_args: Tuple[Tuple[str, Any], ...] = ()
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
    def min_input_size(self) -> Tuple[int, int, int, int]:
        """(C, T, H, W) of the smallest clip the network accepts."""
        return (3, self.min_frames, self.min_crop_size, self.min_crop_size)

    @property
    def has_weights(self) -> bool:
        return bool(self.url or self.file)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, overlay: Optional[Mapping[str, Any]] = None, **changes: Any) -> 'VideoPretrainedCfg':
        """A copy with fields changed, in our units; an unknown field is an error naming the valid ones."""
        changes = {**(overlay or {}), **changes}
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f'unknown pretrained-config field(s) {unknown}; valid fields: {sorted(known)}')
        return dataclasses.replace(self, **{k: _as_field_value(k, v) for k, v in changes.items()})

    def overlay(self, overlay: Optional[Mapping[str, Any]] = None) -> 'VideoPretrainedCfg':
        """``pretrained_cfg_overlay`` of create_model: timm's keys in timm's meaning (``mean`` on 0-1,
        ``input_size`` (3, T, H, W) ...) and our video-only fields."""
        return self.replace(from_timm_fields(self, overlay or {}))

    # --- the timm mapping
    @cached_property
    def _timm(self) -> Dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **timm_fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self._timm[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._timm)

    def __len__(self) -> int:
        return len(self._timm)


_TUPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(VideoPretrainedCfg) if 'Tuple' in str(f.type))


def _tupled(value: Any) -> Any:
    """Lists (JSON's arrays) as tuples, at every depth."""
    return tuple(_tupled(v) for v in value) if isinstance(value, (list, tuple)) else value


def _as_field_value(name: str, value: Any) -> Any:
    """A value as the field holds it: JSON (timm's config.json) gives lists where the record keeps tuples."""
    if name == 'arch_args' and isinstance(value, Mapping):
        value = tuple(value.items())
    return _tupled(value) if name in _TUPLE_FIELDS else value


def _unit(cfg: VideoPretrainedCfg) -> Tuple[float, float]:
    low, high = cfg.value_range
    return low, high - low


def timm_fields(cfg: VideoPretrainedCfg) -> Dict[str, Any]:
    """timm's PretrainedCfg keys of a record: the one place where timm's view is derived from ours."""
    low, scale = _unit(cfg)
    frames = cfg.num_frames
    return dict(
        url=cfg.url, file=cfg.file, state_dict=None, hf_hub_id=cfg.hf_hub_id or '', hf_hub_filename=None,
        source=cfg.source,
        architecture=cfg.architecture, tag=cfg.tag, custom_load=False,
        input_size=cfg.input_size, test_input_size=(3, frames, cfg.test_crop_size, cfg.test_crop_size),
        min_input_size=cfg.min_input_size, fixed_input_size=False, interpolation=cfg.interpolation,
        # timm resizes the short side to crop / crop_pct, then centre-crops: the short side is test_scale.
        crop_pct=cfg.crop_size / cfg.test_scale, test_crop_pct=cfg.test_crop_size / cfg.test_scale,
        crop_mode='center',
        mean=tuple((m - low) / scale for m in cfg.mean), std=tuple(s / scale for s in cfg.std),
        num_classes=cfg.num_classes, label_offset=None, label_names=cfg.class_names or None,
        label_descriptions=None, pool_size=cfg.pool_size, test_pool_size=None,
        first_conv=cfg.first_conv, classifier=cfg.classifier, license=cfg.license,
        description=cfg.source_name, origin_url=cfg.paper_url, paper_name=cfg.paper,
        paper_ids=cfg.paper_url, notes=(cfg.notes,) if cfg.notes else None,
    )


# timm keys whose meaning differs from (or is spelt differently in) our fields, accepted in an overlay.
TIMM_OVERLAY_KEYS = ('mean', 'std', 'input_size', 'test_input_size', 'min_input_size', 'label_names', 'crop_pct',
                     'test_crop_pct')
# timm keys that are another name of one of our fields (timm_fields writes them from it).
TIMM_RENAMED = {'description': 'source_name', 'paper_name': 'paper', 'origin_url': 'paper_url',
                'paper_ids': 'paper_url'}
# timm keys whose value is fixed by our record (timm_fields): a config timm wrote (save_for_hf's config.json)
# carries them; accepted when they say what the record says, an error when they ask for something else.
TIMM_DERIVED = ('crop_mode', 'custom_load', 'fixed_input_size', 'state_dict', 'hf_hub_filename', 'label_offset',
                'label_descriptions', 'test_pool_size')


def from_timm_fields(cfg: VideoPretrainedCfg, changes: Mapping[str, Any]) -> Dict[str, Any]:
    """The inverse of ``timm_fields`` for an overlay: timm keys -> our fields (ours pass through)."""
    low, scale = _unit(cfg)
    ours = {f.name for f in dataclasses.fields(cfg)}
    timm_keys = set(TIMM_OVERLAY_KEYS) | set(TIMM_RENAMED) | set(TIMM_DERIVED)
    unknown = sorted(k for k in changes if k not in ours and k not in timm_keys)
    if unknown:
        raise ValueError(f'unknown pretrained-config field(s) {unknown}; timm keys: {sorted(timm_keys)}; '
                         f'our fields: {sorted(ours)}')
    derived = timm_fields(cfg)
    out: Dict[str, Any] = {}
    for key, value in changes.items():
        if key in TIMM_DERIVED:
            if _tupled(value) != derived[key] and not (key == 'label_descriptions' and not value):
                raise ValueError(f'pretrained-config {key}={value!r}: these video models have {key}='
                                 f'{derived[key]!r} (timm\'s key, fixed by the zoo\'s record)')
        elif key in TIMM_RENAMED:
            out.setdefault(TIMM_RENAMED[key], value)
        elif key == 'notes' and isinstance(value, (list, tuple)):
            out['notes'] = ' '.join(str(v) for v in value) or None
        elif key in ('mean', 'std'):
            values = tuple(float(v) for v in value)
            out[key] = tuple(low + v * scale for v in values) if key == 'mean' else tuple(v * scale for v in values)
        elif key == 'pool_size' and value is None and _image_shape(changes):
            continue  # timm's export nulls it with an image input_size; the record keeps ours (next line)
        elif key in ('input_size', 'test_input_size', 'min_input_size'):
            # timm's save_for_hf writes an image shape (C, H, W): the frames are in our num_frames / min_frames
            channels, frames, height, width = value if len(value) == 4 else (value[0], None, *value[1:])
            if channels != 3 or height != width:
                raise ValueError(f'{key} {tuple(value)}: expected (3, T, S, S) for these RGB video models')
            fields = {'input_size': dict(num_frames=frames, crop_size=height),
                      'test_input_size': dict(test_crop_size=height),
                      'min_input_size': dict(min_frames=frames, min_crop_size=height)}[key]
            out.update({k: v for k, v in fields.items() if v is not None})
        elif key == 'label_names':
            out['class_names'] = tuple(value or ())
        elif key == 'crop_pct':
            out['test_scale'] = round(out.get('crop_size', cfg.crop_size) / float(value))
        elif key == 'test_crop_pct':
            out['test_scale'] = round(out.get('test_crop_size', cfg.test_crop_size) / float(value))
        else:
            out[key] = value
    return out


def _image_shape(changes: Mapping[str, Any]) -> bool:
    """Whether an overlay's input_size is timm's image shape (C, H, W), as its save_for_hf writes it."""
    size = changes.get('input_size')
    return size is not None and len(size) == 3


def to_timm_pretrained_cfg(cfg: VideoPretrainedCfg):
    """timm's own PretrainedCfg of a record (for timm's registry), with the fields this timm version has."""
    from timm.models import PretrainedCfg
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    return PretrainedCfg(**{k: v for k, v in timm_fields(cfg).items() if k in known})
