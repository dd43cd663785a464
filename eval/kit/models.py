"""The model a job runs: a zoo entry with its weights (pretrained, a checkpoint, a source file or seeded random
weights), a description of those weights for the outputs, and their fingerprint. Load errors become RunErrors
that name the way out, the same for every job."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional, Tuple

import torch

import zoo
from converters.file_io import sha256_file

from eval.kit.job import RunError

RANDOM_WEIGHTS_NOTE = ('RANDOM WEIGHTS: this model is untrained, so its accuracy means nothing; '
                       'the run only shows the pipeline working.')
LOCAL_WEIGHTS_HINT = ('use --checkpoint / --weights-file for local weights, or --random-weights to check the '
                      'pipeline without them')


def describe_weights(model: torch.nn.Module, pretrained: bool, checkpoint: Optional[str]) -> Dict[str, Any]:
    """What the outputs say of a model's weights: their kind, where they came from, licence, and the published
    accuracy only for the published checkpoint (``weights_provenance``)."""
    cfg = model.pretrained_cfg
    if checkpoint:
        return {'kind': 'checkpoint', 'trained': True, 'source': os.path.abspath(checkpoint)}
    if pretrained:
        return {'kind': 'pretrained', 'trained': True, 'source_name': cfg.source_name, 'license': cfg.license,
                **weights_provenance(cfg)}
    return {'kind': 'random', 'trained': False, 'source': None, 'note': RANDOM_WEIGHTS_NOTE}


def weights_provenance(cfg) -> Dict[str, Any]:
    """Whether pretrained weights are the published checkpoint, the one rule every job's records follow: the
    entry's own download is (verified by its loader); a local file (--weights-file, the ``file`` overlay) is
    when its sha256 equals the entry's pinned one; a timm folder or Hub repository (local-dir:, hf-hub:) holds a
    converted state dict that nothing checks. Published accuracy is copied only for the published checkpoint;
    otherwise ``note`` says what the file is."""
    published = {'published_top1': cfg.top1, 'published_top5': cfg.top5}
    if cfg.source in ('local-dir', 'hf-hub'):
        where = os.path.abspath(cfg.file) if cfg.source == 'local-dir' else f'hf-hub:{cfg.hf_hub_id}'
        return {'source': where, 'published_checkpoint': False,
                'note': f'{cfg.source} {where}: a shared zoo state dict, not checked against the published checkpoint'}
    if not cfg.file:
        return {'source': cfg.url, 'sha256': cfg.sha256, 'published_checkpoint': True, **published}
    path = os.path.abspath(os.path.expanduser(cfg.file))
    digest = sha256_file(path)
    if cfg.sha256 and digest == cfg.sha256.lower():
        return {'source': path, 'sha256': digest, 'published_checkpoint': True, **published}
    if cfg.sha256:
        note = f'local file, sha256 {digest}, not the published checkpoint (whose sha256 is {cfg.sha256.lower()})'
    else:
        entry = f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture
        note = (f'local file, sha256 {digest}, not verified as the published checkpoint (no sha256 is pinned '
                f'for {entry})')
    return {'source': path, 'sha256': digest, 'published_checkpoint': False,
            'note': note + '; published accuracy not copied'}


def load_model(name: str, pretrained: bool = True, checkpoint: Optional[str] = None,
               weights_file: Optional[str] = None, num_classes: Optional[int] = None, *,
               seed: Optional[int] = None, hint: str = LOCAL_WEIGHTS_HINT, **kwargs) -> Tuple[torch.nn.Module, dict]:
    """A zoo model and the description of its weights. ``seed``: the global generator is seeded first (random
    weights and new heads are then the same in every rank and attempt); ``kwargs`` go to zoo.create_model.
    An unknown name or weights that cannot be loaded raise RunError (``hint`` says what to do instead)."""
    if seed is not None:
        torch.manual_seed(seed)
    overlay = {'file': weights_file} if weights_file else None
    try:
        model = zoo.create_model(name, pretrained=pretrained and not checkpoint, checkpoint_path=checkpoint,
                                 pretrained_cfg_overlay=overlay, num_classes=num_classes, **kwargs)
    except KeyError as e:
        raise RunError(str(e.args[0] if e.args else e)) from e
    except (RuntimeError, NotImplementedError, OSError, ValueError) as e:
        raise RunError(f'cannot load weights for {name}: {e}\n{hint}') from e
    return model, describe_weights(model, pretrained, checkpoint)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): the same for the same weights however
    they were obtained, so a moved checkpoint still matches and a different seed does not."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
