"""FVD: Fréchet Video Distance on the exact network it was defined with, each common protocol named.

    python -m eval.fvd --real videos/ --fake samples/ --protocol stylegan-v-16f --out runs/fvd
    from eval.fvd import FVD;  fvd = FVD('original'); fvd.update(v, real=True); ...; fvd.compute()

Protocols: eval/fvd/protocols.py; the job: eval/fvd/job.py; the Python object: eval/fvd/metric.py.
"""
from eval.fvd.frechet import Stats, frechet_distance, statistics
from eval.fvd.metric import FVD, FVDResult
from eval.fvd.protocols import PROTOCOLS, Protocol, resolve_protocol
from eval.fvd.statsfile import StatsMismatch, load_stats, read_stats, save_stats


def __getattr__(name):
    if name == 'FVDMetric':
        from eval.fvd.metric import FVDMetric       # built when asked: it needs torchmetrics
        return FVDMetric
    if name == 'main':
        from eval.fvd.job import main
        return main
    raise AttributeError(name)
