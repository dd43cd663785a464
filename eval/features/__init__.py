"""The feature-extraction job: per-snippet, per-crop pooled features of whole data sets.

presets (the formats downstream projects consume) -> stream (decode each video once, cut snippets and crops,
one forward pass per chunk) -> outputs (per-video arrays and sidecars, index, HDF5); job: the command line
and the run over ranks. ``from eval.features import extract`` for one video from Python.
"""
from eval.features.job import extract, main  # noqa: F401
