"""Embedding statistics and the Fréchet distance, in float64, through one function for every protocol.

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

``statistics`` makes (mu, sigma, N) from float32 embeddings with the protocol's covariance (unbiased: N - 1,
biased: N); ``frechet_distance`` applies the protocol's square root:

* 'svd' (tensorflow-gan's ``frechet_classifier_distance_from_activations``, the original FVD):
  Tr sqrt(sqrt(S_1) S_2 sqrt(S_1)), each symmetric square root by SVD, singular values below 1e-10 kept
  as they are (not rooted), as tensorflow-gan's ``_symmetric_matrix_square_root`` does.
* 'sqrtm' (StyleGAN-V): ``scipy.linalg.sqrtm(S_1 @ S_2)``, its real part.

Neither can say by itself when it went wrong, so ``frechet_distance`` also reports what a reader needs: the
imaginary part sqrtm dropped, the smallest eigenvalue of each covariance (rank deficient when N - 1 is below
the 400 dimensions), and a negative result as what it is (rounding on near-identical sets), never silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

SVD_EPS = 1e-10                 # tensorflow-gan _symmetric_matrix_square_root(eps=1e-10)
IMAGINARY_TOLERANCE = 1e-3      # relative to the trace term: above it sqrtm's result is not trusted


@dataclass
class Stats:
    """mu (D,) and sigma (D, D) float64 of N embeddings, with the covariance rule used."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    covariance: str


def statistics(embeddings: np.ndarray, covariance: str) -> Stats:
    """(N, D) embeddings -> float64 mean and covariance (``covariance``: 'unbiased' or 'biased')."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f'embeddings must be (N, D), got shape {x.shape}')
    n = x.shape[0]
    if n < 2:
        raise ValueError(f'FVD needs at least 2 videos per set, got {n}')
    if not np.isfinite(x).all():
        raise ValueError(f'{int((~np.isfinite(x)).any(axis=1).sum())} of {n} embeddings are not finite')
    mu = x.mean(axis=0)
    centred = x - mu
    divisor = n - 1 if covariance == 'unbiased' else n
    if covariance not in ('unbiased', 'biased'):
        raise ValueError(f'covariance {covariance!r}: expected unbiased or biased')
    return Stats(mu, centred.T @ centred / divisor, n, covariance)


def _symmetric_sqrt(mat: np.ndarray) -> np.ndarray:
    """tensorflow-gan's _symmetric_matrix_square_root: U diag(s') V^T, s' = sqrt(s) where s >= eps, else s."""
    u, s, vt = np.linalg.svd(mat)
    rooted = np.where(s < SVD_EPS, s, np.sqrt(s))
    return (u * rooted) @ vt


def _trace_sqrt_svd(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    root = _symmetric_sqrt(sigma1)
    return float(np.trace(_symmetric_sqrt(root @ sigma2 @ root)))


def _sqrtm_scipy(sigma1: np.ndarray, sigma2: np.ndarray):
    try:
        from scipy import linalg
    except ImportError as e:
        raise ImportError('the sqrtm square root (StyleGAN-V protocols) is scipy.linalg.sqrtm: pip install scipy') from e
    import warnings
    with warnings.catch_warnings(record=True) as caught:       # reported through the notes instead
        warnings.simplefilter('always')
        root = linalg.sqrtm(sigma1 @ sigma2)
    root = root[0] if isinstance(root, tuple) else root
    return root, [str(w.message) for w in caught]


@dataclass
class Distance:
    """A Fréchet distance and what qualifies it."""
    value: float
    mean_term: float
    trace_term: float
    imaginary: float = 0.0                 # sqrtm: the largest |imaginary part| dropped
    min_eigenvalues: tuple = ()            # of sigma_1, sigma_2
    notes: List[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return not any(n.startswith('UNRELIABLE') for n in self.notes)


def frechet_distance(a: Stats, b: Stats, sqrt: str) -> Distance:
    """The squared Fréchet distance of two Gaussians, in float64, by the protocol's square root."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f'statistics of different dimensions: {a.mu.shape} vs {b.mu.shape}')
    diff = a.mu - b.mu
    mean_term = float(diff @ diff)
    imaginary, warned = 0.0, []
    if sqrt == 'svd':
        tr_root = _trace_sqrt_svd(a.sigma, b.sigma)
    elif sqrt == 'sqrtm':
        root, warned = _sqrtm_scipy(a.sigma, b.sigma)
        if np.iscomplexobj(root):
            imaginary = float(np.abs(root.imag).max())
            root = root.real
        tr_root = float(np.trace(root))
    else:
        raise ValueError(f'sqrt {sqrt!r}: expected svd or sqrtm')
    trace_term = float(np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_root)
    eig = (float(np.linalg.eigvalsh(a.sigma).min()), float(np.linalg.eigvalsh(b.sigma).min()))
    result = Distance(mean_term + trace_term, mean_term, trace_term, imaginary, eig)
    result.notes = _qualify(result, a, b) + ([f'scipy sqrtm warned: {w}' for w in warned] if sqrt == 'sqrtm' else [])
    return result


def _qualify(d: Distance, a: Stats, b: Stats) -> List[str]:
    notes = []
    dim = a.mu.shape[0]
    scale = max(abs(float(np.trace(a.sigma))) + abs(float(np.trace(b.sigma))), 1e-300)
    if d.imaginary > IMAGINARY_TOLERANCE * scale:
        notes.append(f'UNRELIABLE: sqrtm left an imaginary part of {d.imaginary:.3g} (relative '
                     f'{d.imaginary / scale:.2g} of the covariance traces); the real part was taken')
    elif d.imaginary:
        notes.append(f'sqrtm left an imaginary part of {d.imaginary:.3g} (negligible: relative '
                     f'{d.imaginary / scale:.2g}); the real part was taken')
    for name, s, floor in (('real', a, d.min_eigenvalues[0]), ('fake', b, d.min_eigenvalues[1])):
        if s.n - (1 if s.covariance == 'unbiased' else 0) < dim:
            notes.append(f'the {name} covariance is rank deficient: {s.n} videos for {dim} dimensions (smallest '
                         f'eigenvalue {floor:.3g}); use more videos for a stable number')
    if d.value < 0:
        notes.append(f'UNRELIABLE: negative ({d.value:.6g}): float64 rounding on near-identical statistics; '
                     'the true distance is about 0')
    return notes
