"""Caffe2 video-nonlocal-net checkpoints into zoo state dicts: the builder's `load_pretrained` and the
command line's body (`main`), run as `python -m zoo.convert_caffe2`, which passes in the registry's models:

    python -m zoo.convert_caffe2 i3d_baseline_32x2_IN_pretrain_400k.pkl i3d_r50.pth [--model i3d_r50]
    python -m zoo.convert_caffe2 --download i3d_r50
    python -m zoo.convert_caffe2 --sha256 FILE

Reading lives in caffe2_pickle, the blob-name rule table and model inference in caffe2_mapping. Nothing here
imports the zoo: what it needs to know about a model (its state dict, its config) is given by the caller. So
`python -m converters.caffe2` (the command's old name) converts nothing: it exits 2 naming the command above
with the arguments it was given.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from .caffe2_mapping import (AMBIGUITY_NOTE, BLOB_RULES, Caffe2MappingError, CheckpointTraits, Conversion,
                             blobs_to_state_dict, caffe2_blob_name, checkpoint_traits, closest_models,
                             matching_models, state_dict_to_blobs, zoo_key)
from .caffe2_pickle import Caffe2CheckpointError, read_caffe2_blobs
from .file_io import atomic_write, cache_root, sha256_file, verify_file

__all__ = ['load_pretrained', 'convert_checkpoint', 'ConvertedCheckpoint', 'read_caffe2_blobs',
           'blobs_to_state_dict', 'state_dict_to_blobs', 'zoo_key', 'caffe2_blob_name', 'checkpoint_traits',
           'matching_models', 'save_state_dict', 'BLOB_RULES', 'AMBIGUITY_NOTE', 'Caffe2CheckpointError',
           'Caffe2MappingError', 'ModelCatalog', 'main']

_logger = logging.getLogger(__name__)

ZOO_STATE_DICT_SUFFIXES = ('.pth', '.pt', '.safetensors')


@dataclass
class ConvertedCheckpoint:
    """A converted Caffe2 checkpoint: the state dict, the model it was checked against, and what else fits."""
    conversion: Conversion
    model_name: str
    candidates: List[str]        # every registered model the weights fit (more than one: see AMBIGUITY_NOTE)
    traits: CheckpointTraits

    @property
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.conversion.state_dict


@dataclass(frozen=True)
class ModelCatalog:
    """What the command line needs to know about the registered models, given by its caller."""
    names: Sequence[str]                                          # the models whose weights are Caffe2 pickles
    target_state_dict: Callable[[str], Mapping[str, torch.Tensor]]  # name -> state dict (meta tensors will do)
    pretrained_cfg: Callable[[str], Any]   # name -> config (url, sha256, size); KeyError for an unknown name
    # (name, state dict, folder) -> writes timm's save_for_hf folder of the model with these weights (--hf)
    save_hf_folder: Optional[Callable[[str, Dict[str, torch.Tensor], str], None]] = None

    def targets(self) -> Dict[str, Mapping[str, torch.Tensor]]:
        return {name: self.target_state_dict(name) for name in self.names}


def convert_checkpoint(path: str | os.PathLike, catalog: ModelCatalog,
                       model_name: Optional[str] = None) -> ConvertedCheckpoint:
    """Read a Caffe2 pickle and convert it strictly for ``model_name``, or for the catalog's models its
    blobs fit when no name is given (the first of them; they share one state dict)."""
    path = os.fspath(path)
    blobs = read_caffe2_blobs(path)
    shapes = {b: tuple(a.shape) for b, a in blobs.items()}
    traits = checkpoint_traits(shapes, source=path)
    targets = catalog.targets()
    candidates = matching_models(shapes, targets)
    if model_name is None:
        if not candidates:
            near = closest_models(traits, targets)
            if not near:
                raise Caffe2MappingError(path, f'any registered model: it is {traits.describe()}', [], [], [])
            model_name = near[0]  # converting against the nearest model names every blob that does not fit
        else:
            model_name = candidates[0]
    target = targets[model_name] if model_name in targets else catalog.target_state_dict(model_name)
    try:
        conversion = blobs_to_state_dict(blobs, target, source=path, target_name=model_name)
    except Caffe2MappingError as e:
        fits = f'; the blobs fit {", ".join(candidates)}' if candidates else f'; the file is {traits.describe()}'
        raise Caffe2MappingError(e.source, e.target, e.unplaced, e.empty, e.mismatched, note=fits) from None
    return ConvertedCheckpoint(conversion, model_name, candidates, traits)


def save_state_dict(state_dict: Dict[str, torch.Tensor], out: str | os.PathLike,
                    metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``.pth`` (torch.save) or ``.safetensors`` by suffix; atomically, so no half-written file is left."""
    out = Path(out)
    if out.suffix not in ZOO_STATE_DICT_SUFFIXES:
        raise ValueError(f'{out}: unknown output format {out.suffix!r}; use .pth or .safetensors')
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, 'wb') as f:
        if out.suffix == '.safetensors':
            from safetensors.torch import save
            f.write(save({k: v.contiguous() for k, v in state_dict.items()}, metadata=metadata))
        else:
            torch.save(state_dict, f)
    return out


# ----------------------------------------------------------------------------------------------------------
# The builder's loader.

def _source_file(cfg, cache_dir) -> Path:
    """The checkpoint file: cfg.file when set, else cfg.url fetched (and verified) into the cache."""
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f'{cfg.architecture or "model"}: pretrained file {path} does not exist')
        return path
    from .download import fetch
    return fetch(cfg.url, sha256=cfg.sha256, size=cfg.size, cache_dir=cache_dir)


def _verified_sha256(path: Path, pinned: Optional[str], from_cache: bool) -> str:
    """The file's sha256, checked against the config's pinned one."""
    from .download import ChecksumError, read_record
    if from_cache:  # fetch has just verified the file against the pin or its own record: no second hash
        if pinned:
            return pinned.lower()
        record = read_record(path)
        if record:
            return record['sha256']
    # A local file of the registered name that is not the registered file is a corrupt or different copy;
    # to use a different checkpoint on purpose, overlay sha256=None with the file.
    return verify_file(path, pinned, expected_from='the pinned checksum', error=ChecksumError,
                       hint='Pass pretrained_cfg_overlay=dict(file=..., sha256=None) to use a different file.')


def converted_cache_path(cache_root: Path, model_name: str, source_sha256: str) -> Path:
    """Where the conversion of a source file is cached: keyed by the source's sha256, so any change of
    the source (a new download, another local file) is converted afresh."""
    return cache_root / 'converted' / f'{model_name}-{source_sha256[:16]}.safetensors'


def load_pretrained(cfg, model_name: str, target: Mapping[str, torch.Tensor],
                    cache_dir: Optional[str | os.PathLike] = None) -> Dict[str, torch.Tensor]:
    """The builder's loader for 'caffe2_pickle' configs: the state dict of the checkpoint, converted strictly
    onto ``target`` (the state dict of the architecture it holds; only keys, shapes and dtypes are read).

    Source: ``cfg.file`` if set, else ``cfg.url`` fetched into the cache and checked against
    ``cfg.sha256``/``cfg.size`` (or the checksum recorded on first download). A pickle is parsed once: its
    conversion is cached as ``<cache>/converted/<model_name>-<sha256[:16]>.safetensors``.
    """
    source = _source_file(cfg, cache_dir)
    digest = _verified_sha256(source, cfg.sha256, from_cache=not cfg.file)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    cached = converted_cache_path(root, model_name, digest)
    if cached.is_file():
        from safetensors.torch import load_file
        try:
            state_dict = load_file(cached)
        except Exception as e:  # a derived file: convert again rather than fail
            _logger.warning('%s: unreadable converted cache (%s); converting %s again', cached, e, source)
        else:  # safetensors sorts its keys; give them back in the model's order
            return {k: state_dict.pop(k) for k in target if k in state_dict} | state_dict
    conversion = blobs_to_state_dict(read_caffe2_blobs(source), target, source=str(source), target_name=model_name)
    try:
        save_state_dict(conversion.state_dict, cached,
                        metadata={'source': source.name, 'source_sha256': digest, 'model': model_name})
    except OSError as e:  # a read-only cache costs a re-conversion next time, not the load
        _logger.warning('cannot cache the conversion at %s: %s', cached, e)
    return conversion.state_dict


# ----------------------------------------------------------------------------------------------------------
# The command line.

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m zoo.convert_caffe2',
        description='Convert a Caffe2 video-nonlocal-net checkpoint (.pkl) into a zoo state dict '
                    '(.pth or .safetensors), strictly: every blob placed, every key filled, every shape checked.',
        epilog=f'Note: {AMBIGUITY_NOTE}; use --model to say which.')
    parser.add_argument('input', nargs='?', help='Caffe2 checkpoint, e.g. i3d_baseline_32x2_IN_pretrain_400k.pkl')
    parser.add_argument('output', nargs='?', help='zoo state dict to write: OUT.pth or OUT.safetensors')
    parser.add_argument('--hf', metavar='DIR',
                        help="also (or, without OUT, only) write timm's sharing folder: config.json (timm's "
                             "pretrained config with the zoo's video fields) and model.safetensors, loaded by "
                             "timm.create_model('local-dir:DIR', pretrained=True) or uploaded to the Hugging Face Hub")
    parser.add_argument('--model', help='registered model to convert for (default: inferred from the blobs)')
    parser.add_argument('--quiet', action='store_true', help='do not print the blob -> key table')
    parser.add_argument('--download', metavar='NAME',
                        help="fetch model NAME's checkpoint into the cache; print its path, sha256 and size")
    parser.add_argument('--sha256', metavar='FILE', help='print the sha256 and size of FILE (for pinning)')
    parser.add_argument('--cache-dir', help='cache directory (default: $ZOO_CACHE_DIR, else '
                                            '$XDG_CACHE_HOME/video-zoo or ~/.cache/video-zoo)')
    return parser


def _print_file_identity(path: Path) -> None:
    print(f'path:   {path}')
    print(f'sha256: {sha256_file(path)}')
    print(f'size:   {path.stat().st_size}')


def _download(name: str, cache_dir: Optional[str], catalog: ModelCatalog) -> None:
    from .download import fetch
    cfg = catalog.pretrained_cfg(name)
    if not cfg.url:
        raise ValueError(f'{name}: its config names no download URL')
    _print_file_identity(fetch(cfg.url, sha256=cfg.sha256, size=cfg.size, cache_dir=cache_dir))


def _convert(args, catalog: ModelCatalog) -> None:
    if args.hf and catalog.save_hf_folder is None:
        raise ValueError('--hf: this command line was given no way to write a timm folder')
    if args.output and Path(args.output).suffix not in ZOO_STATE_DICT_SUFFIXES:  # before spending a minute converting
        raise ValueError(f'{args.output}: unknown output format {Path(args.output).suffix!r}; '
                         f'use .pth or .safetensors')
    if args.model is not None:
        catalog.pretrained_cfg(args.model)  # raises for an unknown name, suggesting close names
    converted = convert_checkpoint(args.input, catalog, args.model)
    if not args.quiet:
        print(converted.conversion.table())
    state_dict = converted.state_dict
    print(f'{args.input}: {converted.traits.describe()}')
    for out in [args.output] if args.output else []:
        out = save_state_dict(state_dict, out, metadata={'source': Path(args.input).name, 'model': converted.model_name})
        print(f'wrote {out}: {len(converted.conversion.placed)} blobs -> {len(state_dict)} tensors '
              f'({len(converted.conversion.filled)} num_batches_tracked set to 0)')
    if args.hf:
        catalog.save_hf_folder(converted.model_name, state_dict, args.hf)
        print(f"wrote {args.hf}/: config.json + model.safetensors ({converted.model_name}); load it with "
              f"timm.create_model('local-dir:{args.hf}', pretrained=True)")
    others = [c for c in converted.candidates if c != converted.model_name]
    if args.model is None and others:
        print(f'the weights fit {" and ".join(converted.candidates)} (the state dict is the same for each); '
              f'{AMBIGUITY_NOTE}. Load it into the one whose clips you use, or pass --model to record which.')
    elif others:
        print(f'model: {converted.model_name} (the same weights also fit {", ".join(others)})')
    else:
        print(f'model: {converted.model_name}')


def main(argv: Optional[Sequence[str]], catalog: ModelCatalog) -> int:
    """The command line over ``catalog``'s models; returns the exit code (2 on any error, one line first)."""
    parser = _parser()
    args = parser.parse_args(argv)
    modes = [bool(args.input or args.output or args.hf), bool(args.download), bool(args.sha256)]
    if sum(modes) != 1:
        parser.error('give IN.pkl OUT, or --download NAME, or --sha256 FILE (one of them)')
    if modes[0] and not (args.input and (args.output or args.hf)):
        parser.error('converting needs IN.pkl and OUT (.pth or .safetensors), or IN.pkl and --hf DIR')
    from .download import DownloadError
    try:
        if args.sha256:
            path = Path(args.sha256)
            if not path.is_file():
                raise FileNotFoundError(f'{path}: no such file')
            _print_file_identity(path)
        elif args.download:
            _download(args.download, args.cache_dir, catalog)
        else:
            _convert(args, catalog)
    except (Caffe2CheckpointError, Caffe2MappingError, DownloadError, KeyError, ValueError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        summary, _, details = str(message).partition('\n')
        print(f'error: {summary}', file=sys.stderr)  # one line; the mapping error's itemised list follows
        if details:
            print(details, file=sys.stderr)
        return 2
    return 0


def _moved(argv: Sequence[str]) -> int:
    """`python -m converters.caffe2`: the command line needs the registry's models, which converters never import,
    so it is zoo.convert_caffe2's; say so with the user's own arguments and fail (help alone exits 0)."""
    command = shlex.join(['python', '-m', 'zoo.convert_caffe2', *argv])
    note = ("the converter's command line is python -m zoo.convert_caffe2 "
            "(converters never import the model registry)")
    if any(a in ('-h', '--help') for a in argv):
        print(f'{note}.\n')
        _parser().print_help()
        return 0
    print(f'error: {note}; run:\n  {command}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(_moved(sys.argv[1:]))
