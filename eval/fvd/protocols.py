"""FVD protocols as declarative records: every knob that changes the number, with its sources.

Each project computes Fréchet Video Distance its own way (``../shared/reference/fvd.md``); a number is only
comparable with numbers of the same protocol. A ``Protocol`` fixes the clip (frames, frame step, where
the clip starts in a longer video), the resize, the value scaling, the covariance estimator and the matrix
square root; ``resolve_protocol`` merges a preset with overrides (every field is also a flag of
``python -m eval.fvd``) into one frozen record that the embedding pass, the statistics files and the
printed citation line all read.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional, Tuple

RESIZES = {
    'tf1-bilinear': 'every frame straight to {size}x{size} (aspect ignored) by TF1 tf.image.resize_bilinear '
                    '(align_corners=False, half_pixel_centers=False: sample point x * in / out), no antialias',
    'torch-bilinear': 'every frame straight to {size}x{size} (aspect ignored) by torch.nn.functional.interpolate '
                      'bilinear, align_corners=False (half-pixel centres), no antialias',
    'short-side-crop': 'short side to {size} (long side ceil(long * {size} / short)) by torch bilinear, '
                       'align_corners=False, no antialias, then the centre {size}x{size} crop',
}
SCALINGS = {'2x/255-1': '2 * x / 255 - 1', 'x/255*2-1': 'x / 255 * 2 - 1'}
COVARIANCES = {'unbiased': 'unbiased covariance (divided by N - 1)', 'biased': 'biased covariance (divided by N)'}
SQRTS = {'svd': "trace of the square root by SVD, as tensorflow-gan's frechet_classifier_distance (singular "
                'values below 1e-10 not rooted)',
         'sqrtm': 'scipy.linalg.sqrtm of sigma_real @ sigma_fake, real part'}
I3D_WORDS = ('I3D Inception, TF-Hub deepmind/i3d-kinetics-400/1 weights, 400 logits averaged over time, '
             'float32')
CLIPS = {'start': 'from the first frame', 'random': 'from a start drawn per video (seeded, recorded)',
         'centre': 'centred in the video'}


@dataclass(frozen=True)
class Protocol:
    """Everything that decides an FVD number (the statistics file's identity is built from it)."""
    name: str
    frames: Optional[int]           # frames per clip; None: every frame of a given tensor (Python only)
    step: int                       # take every step-th frame (subsample)
    clip: str                       # where the clip starts in a longer video: start, random, centre
    resize: str                     # RESIZES
    size: int                       # the network's input side
    scaling: str                    # SCALINGS: 0..255 -> [-1, 1]
    covariance: str                 # COVARIANCES
    sqrt: str                       # SQRTS
    num_videos: Optional[int]       # clips per set the protocol prescribes (None: as many as given)
    seed: int = 0                   # for --num-videos sampling and random clip starts
    fps: Optional[float] = None     # video files resampled to this rate (None: native)
    paper: str = field(default='', compare=False)
    sources: Tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        checks = [(self.resize, RESIZES, 'resize'), (self.scaling, SCALINGS, 'scaling'),
                  (self.covariance, COVARIANCES, 'covariance'), (self.sqrt, SQRTS, 'sqrt'), (self.clip, CLIPS, 'clip')]
        for value, known, flag in checks:
            if value not in known:
                raise ValueError(f'--{flag} {value!r}: expected one of {", ".join(known)}')
        if self.frames is not None and self.frames < 1 or self.step < 1 or self.size < 1:
            raise ValueError(f'frames ({self.frames}), step ({self.step}) and size ({self.size}) must be positive')
        if self.num_videos is not None and self.num_videos < 2:
            raise ValueError(f'--num-videos {self.num_videos}: FVD needs at least 2 videos per set')
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f'--fps {self.fps}: expected a positive rate (or none for the native rate)')

    @property
    def span(self) -> Optional[int]:
        """Frames of the video a clip covers: (frames - 1) * step + 1."""
        return None if self.frames is None else (self.frames - 1) * self.step + 1

    def identity(self) -> dict:
        """The fields a statistics file must match (the name and the sources are documentation)."""
        out = asdict(self)
        for key in ('name', 'paper', 'sources'):
            out.pop(key)
        return out

    def describe(self, network: str = I3D_WORDS) -> str:
        """One line to paste into a paper: the protocol, every knob, the network (``network``: its words)."""
        frames = 'every given frame' if self.frames is None else (
            f'{self.frames} frames' + (f' (every {self.step}th of {self.span})' if self.step > 1 else ''))
        return (f'FVD, protocol {self.name} ({self.paper or "custom"}): {frames} {CLIPS[self.clip]} of each video'
                f'{f" at {self.fps:g} fps" if self.fps else ""}; {RESIZES[self.resize].format(size=self.size)}; '
                f'values {SCALINGS[self.scaling]}; embedding: {network}; statistics in float64 with the '
                f'{COVARIANCES[self.covariance]}; {SQRTS[self.sqrt]}'
                + (f'; {self.num_videos} videos per set (seed {self.seed})' if self.num_videos else ''))


ORIGINAL_SOURCES = (
    'google-research/google-research frechet_video_distance/frechet_video_distance.py: preprocess() resizes '
    'every frame with tf.image.resize_bilinear to 224x224 and scales 2 * x / 255 - 1; create_id3_embedding() '
    'takes RGB/inception_i3d/Mean:0 of TF-Hub deepmind/i3d-kinetics-400/1',
    'tensorflow-gan frechet_classifier_distance_from_activations: float64, unbiased covariance, SVD square root',
    'the tensors it is given are the clips: here the first 16 frames of a file (--frames), every frame of a tensor',
)
STYLEGAN_V_SOURCES = (
    'universome/stylegan-v src/metrics/frechet_video_distance.py: fvd2048_16f, fvd2048_128f, '
    'fvd2048_128f_subsample8f; 2048 real and 2048 fake clips',
    "its detector is a TorchScript export of the TF-Hub model called with rescale=True, resize=True: values "
    "x / 255 * 2 - 1 and a bilinear resize to 224x224 (here torch bilinear, align_corners=False, our reading "
    "of that export)",
    'its statistics: np.cov-style biased covariance (divided by N), float64; scipy.linalg.sqrtm, real part',
    'its datasets are stored at 256x256 beforehand; real clips start at a random frame of each video',
)
VIDEOGPT_SOURCES = (
    'wilson1yan/VideoGPT and songweige/TATS: 16-frame clips scaled 2 * x / 255 - 1, unbiased covariance, '
    'the SVD square root of the original',
    'VideoGPT prepares real videos by their short side and a centre crop (data.py preprocess); TATS and '
    'content-debiased-fvd resize straight to 224 (preset tats)',
)

PROTOCOLS: Dict[str, Protocol] = {
    'original': Protocol('original', frames=16, step=1, clip='start', resize='tf1-bilinear', size=224,
                         scaling='2x/255-1', covariance='unbiased', sqrt='svd', num_videos=None,
                         paper='Unterthiner et al. 2018, google-research frechet_video_distance',
                         sources=ORIGINAL_SOURCES),
    'stylegan-v-16f': Protocol('stylegan-v-16f', frames=16, step=1, clip='random', resize='torch-bilinear',
                               size=224, scaling='x/255*2-1', covariance='biased', sqrt='sqrtm', num_videos=2048,
                               paper='Skorokhodov et al. 2022, StyleGAN-V fvd2048_16f', sources=STYLEGAN_V_SOURCES),
    'stylegan-v-128f': Protocol('stylegan-v-128f', frames=128, step=1, clip='random', resize='torch-bilinear',
                                size=224, scaling='x/255*2-1', covariance='biased', sqrt='sqrtm', num_videos=2048,
                                paper='Skorokhodov et al. 2022, StyleGAN-V fvd2048_128f', sources=STYLEGAN_V_SOURCES),
    'stylegan-v-128f-subsample8f': Protocol(
        'stylegan-v-128f-subsample8f', frames=16, step=8, clip='random', resize='torch-bilinear', size=224,
        scaling='x/255*2-1', covariance='biased', sqrt='sqrtm', num_videos=2048,
        paper='Skorokhodov et al. 2022, StyleGAN-V fvd2048_128f_subsample8f', sources=STYLEGAN_V_SOURCES),
    'videogpt': Protocol('videogpt', frames=16, step=1, clip='start', resize='short-side-crop', size=224,
                         scaling='2x/255-1', covariance='unbiased', sqrt='svd', num_videos=None,
                         paper='Yan et al. 2021, VideoGPT (short side + centre crop)', sources=VIDEOGPT_SOURCES),
    'tats': Protocol('tats', frames=16, step=1, clip='start', resize='torch-bilinear', size=224,
                     scaling='2x/255-1', covariance='unbiased', sqrt='svd', num_videos=None,
                     paper='Ge et al. 2022, TATS (straight to 224)', sources=VIDEOGPT_SOURCES),
}

OVERRIDABLE = ('frames', 'step', 'clip', 'resize', 'size', 'scaling', 'covariance', 'sqrt', 'num_videos', 'seed', 'fps')
ALL = 'all'             # an override meaning "no limit" (num_videos: every video; frames: every given frame)


def resolve_protocol(name: str = 'original', **overrides) -> Protocol:
    """A preset with the given fields replaced (None keeps the preset's; 'all' clears frames or num_videos).
    A changed preset is renamed ``<name>+custom`` so that a number is never cited under a name it does not
    match."""
    if name not in PROTOCOLS:
        raise ValueError(f'unknown FVD protocol {name!r}; protocols: {", ".join(PROTOCOLS)}')
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise TypeError(f'unknown FVD setting(s) {", ".join(sorted(unknown))}; settings: {", ".join(OVERRIDABLE)}')
    base = PROTOCOLS[name]
    changes = {k: (None if isinstance(v, str) and v == ALL else v) for k, v in overrides.items() if v is not None}
    for key in ('frames', 'step', 'size', 'num_videos', 'seed'):
        if isinstance(changes.get(key), str):
            raise ValueError(f'--{key.replace("_", "-")} {changes[key]!r}: expected a whole number'
                             + (" or 'all'" if key in ('frames', 'num_videos') else ''))
    if changes.get('fps') == 0:
        changes['fps'] = None
    changed = {k: v for k, v in changes.items() if getattr(base, k) != v}
    protocol = replace(base, **changed)
    if changed.keys() - {'seed'}:
        protocol = replace(protocol, name=f'{name}+custom')
    return protocol


def protocol_from_identity(identity: dict, name: str) -> Protocol:
    """The Protocol a statistics file recorded."""
    known = {f.name for f in fields(Protocol)}
    return Protocol(name=name, **{k: v for k, v in identity.items() if k in known})


def protocol_differences(stored: dict, current: dict) -> List[str]:
    """'field: stored -> current' for every field two protocol identities disagree on."""
    keys = sorted(set(stored) | set(current))
    return [f'{k}: {stored.get(k)!r} (file) vs {current.get(k)!r} (this run)' for k in keys
            if stored.get(k) != current.get(k)]
