"""Feature-extraction presets: the formats downstream projects consume, as declarative records.

Each preset names its source (``../shared/reference/feature-extraction.md``, sections 1-3) and fixes every
knob of the extractor; every knob is also a command-line flag, and ``resolve_settings`` merges the two into
one frozen ``FeatureSettings`` record that the pipeline, the sidecars and the manifest all read.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Tuple

from zoo import CAFFE2_NORM, MINUS1_1_NORM

from eval.data.crops import CROP_COUNTS
from eval.data.decode import resolve_fps
from eval.data.snippets import ALIGNS, TAILS

NORMS = {
    # name: (mean, std) on 0-255 pixels; the input is (x - mean) / std, computed in float32, in the network's
    # channel order (eval.features.stream.normalisation)
    'minus1-1': MINUS1_1_NORM,      # x * 2 / 255 - 1, the [-1, 1] of both public extractors
    'caffe2': CAFFE2_NORM,          # the Caffe2 video-nonlocal-net classifier's input
    'model': None,                  # the model's pretrained_cfg mean / std
}
NAMINGS = ('name', 'stem', 'stem_rgb')
LAYOUTS = ('snippets-first', 'channels-first')
PRE_LOGITS = 'pre_logits'


RESIZE_TEXT = {   # kind -> (the --resize form, the sidecar's words)
    'exact': ('{width}x{height}:{filter}',
              'every frame resized to exactly {width}x{height} (W x H, aspect ignored), PIL {filter}'),
    'short': ('{short}:{filter}', 'short side resized to {short} (aspect kept), PIL {filter}'),
    'none': ('none', 'frames at their stored size'),
}


@dataclass(frozen=True)
class Resize:
    """How decoded frames are resized before cropping: to an exact size (aspect ignored), the short side
    to a length (aspect kept, long side as Caffe2's ScaleTransform), or not at all."""
    kind: str                   # 'exact', 'short' or 'none'
    width: int = 0
    height: int = 0
    short: int = 0
    filter: str = 'bilinear'

    @classmethod
    def parse(cls, text: str) -> 'Resize':
        """'340x256' (W x H, LANCZOS), '256' (short side, bilinear), 'none'; ':lanczos' / ':bilinear' /
        ':bicubic' overrides the filter."""
        spec, _, filt = text.strip().lower().partition(':')
        if filt and filt not in ('lanczos', 'bilinear', 'bicubic', 'nearest'):
            raise ValueError(f'--resize filter {filt!r}: expected lanczos, bilinear, bicubic or nearest')
        if spec == 'none':
            return cls('none')
        match = re.fullmatch(r'(\d+)x(\d+)', spec)
        if match:
            return cls('exact', width=int(match[1]), height=int(match[2]), filter=filt or 'lanczos')
        if spec.isdigit():
            return cls('short', short=int(spec), filter=filt or 'bilinear')
        raise ValueError(f'--resize {text!r}: expected WxH (e.g. 340x256), a short side (e.g. 256) or none')

    def __str__(self) -> str:
        """The --resize form, as resolve_settings stores it."""
        return RESIZE_TEXT[self.kind][0].format(**asdict(self))

    def describe(self) -> str:
        return RESIZE_TEXT[self.kind][1].format(**asdict(self))


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that decides the numbers in a feature file (the manifest's identity is built from it)."""
    preset: str
    snippet: int
    stride: int
    tail: str
    align: str
    crops: int
    crop_size: int
    resize: str
    norm: str
    fps: Optional[float]
    layer: str
    lookahead: int = 0
    naming: str = 'stem'
    layout: str = 'snippets-first'
    jpeg_roundtrip: bool = False         # video files read through ffmpeg's JPEGs (eval.data.jpeg_roundtrip)
    model: Optional[str] = None          # the model the preset was made for (a different one is allowed)
    sources: Tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        if self.tail not in TAILS:
            raise ValueError(f'--tail must be one of {", ".join(TAILS)}, got {self.tail!r}')
        if self.align not in ALIGNS:
            raise ValueError(f'--align must be one of {", ".join(ALIGNS)}, got {self.align!r}')
        if self.crops not in CROP_COUNTS:
            raise ValueError(f'--crops must be one of {", ".join(map(str, CROP_COUNTS))}, got {self.crops}')
        if self.norm not in NORMS:
            raise ValueError(f'--norm must be one of {", ".join(NORMS)}, got {self.norm!r}')
        if self.naming not in NAMINGS or self.layout not in LAYOUTS:
            raise ValueError(f'naming {self.naming!r} / layout {self.layout!r} unknown')
        for name in ('snippet', 'stride', 'crop_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'--{name.replace("_", "-")} must be positive, got {getattr(self, name)}')
        if self.jpeg_roundtrip and self.fps is not None:
            raise ValueError('--jpeg-roundtrip reads every frame as ffmpeg writes it, so --fps cannot apply; '
                             'give --no-jpeg-roundtrip to resample the video')
        if self.fps is not None and resolve_fps(self.fps, None) != self.fps:
            raise ValueError(f'fps {self.fps}: a resolved rate is positive (None: native; see resolve_settings)')
        Resize.parse(self.resize)

    @property
    def resize_rule(self) -> Resize:
        return Resize.parse(self.resize)

    def identity(self) -> dict:
        """The settings a resumed run must match (the sources are documentation, not settings)."""
        out = asdict(self)
        out.pop('sources')
        out.pop('model')
        return out


PRESETS = {
    'i3d-r50-10crop': FeatureSettings(
        preset='i3d-r50-10crop', model='i3d_r50',
        snippet=16, stride=16, tail='drop', align='start', crops=10, crop_size=224,
        resize='340x256:lanczos', norm='minus1-1', fps=None, layer=PRE_LOGITS, naming='name', jpeg_roundtrip=True,
        sources=(
            'reference section 1: GowthamGottimukkala/I3D_Feature_Extraction_resnet on the seed I3D-R50, '
            'the features of RTFM / MGFN / UR-DMU',
            'a video file is read as that tool reads it: ffmpeg -i VIDEO -start_number 0 DIR/%d.jpg (default, '
            'lossy MJPEG settings), the JPEGs decoded back (here piped, the same bytes; --no-jpeg-roundtrip: '
            'the video decoded directly)',
            'every frame at its native rate, resized to exactly 340x256 with PIL LANCZOS (aspect ignored)',
            'RGB scaled to [-1, 1] as x * 2 / 255 - 1',
            '10 crops of 224: TL, TR, C, BL, BR, then the same five on the mirrored frame',
            '16-frame snippets every 16 frames, floor((N - 16) / 16) + 1 (--tail pad: ceil(N / 16), the '
            'released ShanghaiTech features)',
            'res5 global average pool, 2048-d, no dropout, no classifier; (T, 10, 2048) float32 <name>.npy',
        )),
    'i3d-inception': FeatureSettings(
        preset='i3d-inception', model='i3d_inception',
        snippet=64, stride=64, tail='drop', align='start', crops=1, crop_size=224,
        resize='256:bilinear', norm='minus1-1', fps=None, layer=PRE_LOGITS, lookahead=1, naming='stem_rgb',
        sources=(
            'reference section 2: v-iashin/video_features, i3d RGB stream',
            "DeepMind's Inception-I3D (Kinetics-400), the 1024-d pooled feature before the logits",
            '64-frame windows every 64 frames, whole windows only; it reads one frame beyond each window, '
            'hence floor((N - 1 - 64) / 64) + 1 windows (lookahead 1)',
            'short side 256 (bilinear), centre crop 224, RGB scaled to [-1, 1]',
            'native frame rate unless --fps (its extraction_fps); <stem>_rgb.npy (n, 1024) with fps and '
            'window timestamps',
        )),
    'dense': FeatureSettings(
        preset='dense', model='i3d_inception',
        snippet=21, stride=1, tail='zero', align='centre', crops=1, crop_size=224,
        resize='256:bilinear', norm='minus1-1', fps=None, layer=PRE_LOGITS, naming='stem',
        layout='channels-first',
        sources=(
            'reference section 3: MS-TCN and followers (temporal action segmentation)',
            'one feature per frame t from the 21-frame window [t - 10, t + 10], zero frames beyond both ends '
            '(zero in the network input, i.e. after the [-1, 1] scaling)',
            'Inception-I3D (Kinetics), RGB 1024-d, stored (D, N) float32 per video',
            'short side 256, centre crop 224, [-1, 1]: the i3d-inception preprocessing',
        )),
}

# flag name -> FeatureSettings field, for the CLI and for extract(**overrides)
OVERRIDABLE = ('snippet', 'stride', 'tail', 'align', 'crops', 'crop_size', 'resize', 'norm', 'fps', 'layer',
               'lookahead', 'naming', 'layout', 'jpeg_roundtrip')


def resolve_settings(preset: Optional[str] = None, **overrides) -> FeatureSettings:
    """A preset (default i3d-r50-10crop) with the given fields replaced (None means 'keep the preset's')."""
    name = preset or 'i3d-r50-10crop'
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; presets: {", ".join(PRESETS)}')
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise TypeError(f'unknown setting(s) {", ".join(sorted(unknown))}; settings: {", ".join(OVERRIDABLE)}')
    changes = {k: v for k, v in overrides.items() if v is not None}
    if 'resize' in changes:
        changes['resize'] = str(Resize.parse(changes['resize']))
    changes['fps'] = resolve_fps(overrides.get('fps'), PRESETS[name].fps)
    return replace(PRESETS[name], **changes)


def output_stem(video_id_or_path: str, naming: str) -> str:
    """The output file name (without extension) for a video file or frame folder.

    'name': the file name up to its first dot (the 10-crop tool: 'Abuse001_x264.mp4' -> 'Abuse001_x264');
    'stem': without its last extension; 'stem_rgb': that + '_rgb' (video_features).
    """
    import os
    base = os.path.basename(os.path.normpath(video_id_or_path))
    if naming == 'name':
        return base.split('.', 1)[0] or base
    stem = os.path.splitext(base)[0] if not os.path.isdir(video_id_or_path) else base
    return stem + '_rgb' if naming == 'stem_rgb' else stem
