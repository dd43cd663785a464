"""FVD from Python: ``update`` with batches of videos, ``compute`` the distance; no files written.

    from eval.fvd import FVD
    fvd = FVD(protocol='original')                  # the network is built once (device, precision)
    fvd.update(real_videos, real=True)              # (N, T, H, W, 3) uint8 or (N, 3, T, H, W) float
    fvd.update(fake_videos, real=False)
    result = fvd.compute()                          # a float, with .description, .notes, .protocol
    fvd.reset(real=False)                           # keep the real set, embed a new fake one

Usable inside a training loop on CPU or GPU: the embeddings are kept (N x 400 float32, 3 MB for 2048
videos), the statistics made in float64 when asked. ``FVDMetric`` (torchmetrics installed) wraps it as a
``torchmetrics.Metric`` whose states are gathered across processes as torchmetrics does.
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

from eval.fvd.embed import FVD_MODEL, Embedder, as_pixels, clips_of
from eval.fvd.frechet import Distance, Stats, frechet_distance, statistics
from eval.fvd.protocols import I3D_WORDS, Protocol, resolve_protocol
from eval.fvd.statsfile import load_stats, save_stats


class FVDResult(float):
    """The FVD as a float, with the protocol, the one-line description to cite and what qualifies it."""
    protocol: Protocol
    distance: Distance
    n_real: int
    n_fake: int

    def __new__(cls, distance: Distance, protocol: Protocol, n_real: int, n_fake: int, network: str = I3D_WORDS):
        self = super().__new__(cls, distance.value)
        self.distance, self.protocol, self.n_real, self.n_fake = distance, protocol, n_real, n_fake
        self.network = network
        return self

    @property
    def notes(self) -> List[str]:
        return self.distance.notes

    @property
    def trusted(self) -> bool:
        return self.distance.trusted

    @property
    def description(self) -> str:
        return f'{self.protocol.describe(self.network)}; {self.n_real} real vs {self.n_fake} fake videos'

    def __repr__(self) -> str:
        flag = '' if self.trusted else ' UNRELIABLE'
        return f'FVDResult({float(self):.4f}{flag}, protocol={self.protocol.name!r}, n={self.n_real}/{self.n_fake})'


def distance_of(real: Stats, fake: Stats, protocol: Protocol, network: str = I3D_WORDS) -> FVDResult:
    """The one place an FVD is computed (the Python object and the command line both call it)."""
    return FVDResult(frechet_distance(real, fake, protocol.sqrt), protocol, real.n, fake.n, network)


class FVD:
    """Accumulate real and fake embeddings under one protocol; ``compute`` the Fréchet distance."""

    def __init__(self, protocol: Union[str, Protocol] = 'original', *, device=None, precision: str = 'fp32',
                 model: Union[str, torch.nn.Module] = FVD_MODEL, batch_size: Optional[int] = None, fast_path: bool = True,
                 compile: bool = False, checkpoint: Optional[str] = None, weights_file: Optional[str] = None,
                 random_weights: bool = False, seed: int = 0, **overrides):
        self.protocol = protocol if isinstance(protocol, Protocol) else resolve_protocol(protocol, **overrides)
        self.embedder = Embedder(model, device=device, precision=precision, fast_path=fast_path, compile=compile,
                                 checkpoint=checkpoint, weights_file=weights_file, random_weights=random_weights,
                                 seed=seed, batch_size=batch_size)
        self.rng = np.random.default_rng(self.protocol.seed)
        self.embeddings = {True: [], False: []}
        self.loaded = {True: None, False: None}

    def embed(self, videos, *, layout: Optional[str] = None, value_range: Optional[str] = None) -> np.ndarray:
        """(N, 400) float32 embeddings of a batch of videos under the protocol (see ``as_pixels`` for inputs)."""
        pixels = as_pixels(videos, layout, value_range)
        step = self.embedder.batch_size
        out = [self.embedder(clips_of(pixels[i:i + step], self.protocol, self.rng)[0])
               for i in range(0, pixels.shape[0], step)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def update(self, videos, real: bool, *, layout: Optional[str] = None, value_range: Optional[str] = None) -> None:
        """Embed a batch of videos into the real or the fake set."""
        if self.loaded[real] is not None:
            raise ValueError(f'the {"real" if real else "fake"} set was loaded from a statistics file; reset it first')
        self.embeddings[real].append(self.embed(videos, layout=layout, value_range=value_range))

    def stats(self, real: bool = True) -> Stats:
        """The float64 statistics of one set (loaded, or from its embeddings)."""
        if self.loaded[real] is not None:
            return self.loaded[real]
        name = 'real' if real else 'fake'
        parts = self.embeddings[real]
        if not parts:
            raise ValueError(f'no {name} videos: call update(videos, real={real}) first')
        try:
            return statistics(np.concatenate(parts), self.protocol.covariance)
        except ValueError as e:
            raise ValueError(f'{name} set: {e}') from None

    def compute(self) -> FVDResult:
        return distance_of(self.stats(True), self.stats(False), self.protocol, self.embedder.describe())

    def save_stats(self, path: str, real: bool = True) -> None:
        save_stats(path, self.stats(real), self.protocol, self.embedder.identity())

    def load_stats(self, path: str, real: bool = True) -> None:
        """Use a statistics file for one set (StatsMismatch when it was made under another protocol)."""
        self.loaded[real] = load_stats(path, self.protocol, self.embedder.identity())
        self.embeddings[real] = []

    def reset(self, real: Optional[bool] = None) -> None:
        """Forget one set (``real`` True / False) or both (None)."""
        for which in (True, False) if real is None else (real,):
            self.embeddings[which], self.loaded[which] = [], None


def _metric_class():
    import torchmetrics

    class FVDMetric(torchmetrics.Metric):
        """``torchmetrics.Metric`` over ``FVD``: embeddings are list states (gathered across processes by
        torchmetrics), ``compute`` returns the FVD as a float64 tensor (``.fvd_result`` keeps the FVDResult)."""
        full_state_update = False
        higher_is_better = False
        is_differentiable = False

        def __init__(self, protocol: Union[str, Protocol] = 'original', **kwargs):
            metric_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ('dist_sync_on_step', 'process_group',
                                                                              'sync_on_compute', 'compute_on_cpu')}
            super().__init__(**metric_kwargs)
            self.fvd = FVD(protocol, **kwargs)
            self.add_state('real_embeddings', default=[], dist_reduce_fx='cat')
            self.add_state('fake_embeddings', default=[], dist_reduce_fx='cat')
            self.fvd_result = None

        def update(self, videos, real: bool, **kwargs) -> None:
            emb = torch.from_numpy(self.fvd.embed(videos, **kwargs)).to(self.device)
            (self.real_embeddings if real else self.fake_embeddings).append(emb)

        def compute(self) -> torch.Tensor:
            sets = []
            for state in (self.real_embeddings, self.fake_embeddings):
                emb = torch.cat(state) if isinstance(state, list) else state
                sets.append(statistics(emb.cpu().numpy(), self.fvd.protocol.covariance))
            self.fvd_result = distance_of(sets[0], sets[1], self.fvd.protocol, self.fvd.embedder.describe())
            return torch.tensor(float(self.fvd_result), dtype=torch.float64)

    return FVDMetric


def __getattr__(name: str):
    if name == 'FVDMetric':
        try:
            return _metric_class()
        except ImportError as e:
            raise ImportError('FVDMetric needs torchmetrics: pip install torchmetrics') from e
    raise AttributeError(name)
