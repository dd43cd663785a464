"""Video feature extraction with zoo models: per-snippet, per-crop pooled features of whole data sets.

    python -m eval.features --model i3d_r50 --data /data/ucf_crime/videos --preset i3d-r50-10crop --out feats/
    python -m eval.features --model i3d_inception --data list.txt --preset i3d-inception --out feats/
    python -m eval.features --model i3d_r50 --data videos/ --snippet 32 --stride 8 --crops 3 --out feats/
    torchrun --nproc_per_node 8 -m eval.features ...       # the same files as one process; resumable

From Python: ``feats, info = extract(model, 'clip.mp4', preset='i3d-r50-10crop')``.

--data is a folder (video files and frame folders, searched recursively) or a list file (one path per
line). Per video --out gets the array (``<stem>.npy``, named as the preset says) and ``<stem>.json`` (what
every axis, crop and snippet is); at the end ``index.json`` lists every video and every failure.
``manifest.json`` ties --out to one configuration; the same command again resumes, skipping every video
whose array matches its sidecar. Presets and their sources: eval/feature_presets.py.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

import zoo

from .decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoDecodeError
from .distributed import DEFAULT_TIMEOUT_S, DistContext, RankFailure, init_distributed, rank_device, shard, usable_cpus
from .feature_outputs import (ARRAY_FORMATS, FORMAT_VERSION, INDEX, MANIFEST, array_bytes, build_sidecar,
                              finished_sidecar, identity_sha256, index_entry, sha256_bytes, write_json,
                              write_video_outputs, arrange)
from .feature_presets import OVERRIDABLE, PRESETS, FeatureSettings, output_stem, resolve_settings
from .feature_stream import (FeatureAccumulator, FeatureStream, SnippetChunk, UnknownLayerError, VideoFailure,
                             VideoJob, normalisation, prepare_feature_model, resolve_layer, run_chunk,
                             stream_video_checked)
from .snippets import ShortVideoError

EXIT_OK, EXIT_POLICY, EXIT_USAGE, EXIT_RANKS = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------- inputs

def list_folder(root: str) -> List[Tuple[str, str]]:
    """(video id, path) of every video file and frame folder under ``root``, sorted by relative path.

    A folder holding image files is a frame folder (not searched further); a video file is found by its
    extension. The id is the path relative to ``root`` without the extension.
    """
    # TODO(datasets): the unlabelled-folder reader being added to eval/datasets.py replaces this
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if folder != root and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            found.append(folder)
            dirs[:] = []
            continue
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(VIDEO_EXTENSIONS)]
    rel = [(os.path.relpath(p, root), p) for p in found]
    return sorted((os.path.splitext(r)[0] if os.path.isfile(p) else r, p) for r, p in rel)


def read_inputs(data: str) -> Tuple[List[Tuple[str, Optional[str], str]], str]:
    """[(video id, path or None, why missing)] for --data, and a one-line description."""
    if os.path.isdir(data):
        items = [(vid, path, '') for vid, path in list_folder(data)]
        return items, f'folder {data} ({len(items)} videos / frame folders)'
    if os.path.isfile(data):
        from .datasets import LabelMap, read_list_file
        records = read_list_file(data, LabelMap(()))
        items = [(r.video_id, r.path, r.missing or '') for r in records]
        return items, f'list file {data} ({len(items)} entries)'
    raise FileNotFoundError(f'--data {data!r} is neither a file nor a folder')


def make_jobs(items, settings: FeatureSettings) -> Tuple[List[VideoJob], List[VideoJob]]:
    """(jobs, missing): output stems per the preset's naming; two videos with one stem are an error."""
    jobs, missing, by_stem = [], [], {}
    for i, (vid, path, why) in enumerate(items):
        stem = output_stem(path or vid, settings.naming)
        job = VideoJob(i, vid, path or vid, stem)
        by_stem.setdefault(stem, []).append(job.path)
        (missing if path is None else jobs).append(job if path is not None else VideoJob(i, vid, why, stem))
    clashes = {s: p for s, p in by_stem.items() if len(p) > 1}
    if clashes:
        lines = [f'{s}: {", ".join(p[:3])}{" ..." if len(p) > 3 else ""}' for s, p in list(clashes.items())[:5]]
        raise ValueError(f'{len(clashes)} output name(s) would be written by more than one video:\n  '
                         + '\n  '.join(lines) + '\nrename the videos or extract the folders into separate --out')
    return jobs, missing


# -------------------------------------------------------------------------------------------- model

def load_model(name: str, random_weights: bool = False, checkpoint: Optional[str] = None,
               seed: int = 0) -> Tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = zoo.create_model(name, pretrained=not random_weights and not checkpoint, checkpoint_path=checkpoint)
    kind = 'checkpoint' if checkpoint else 'random' if random_weights else 'pretrained'
    info = {'kind': kind, 'source': os.path.abspath(checkpoint) if checkpoint else
            (model.pretrained_cfg.source_name or model.pretrained_cfg.url) if kind == 'pretrained' else None}
    if kind == 'random':
        info['seed'] = seed
    return model.eval(), info


def model_description(name: str, model: torch.nn.Module, weights: dict, layer: str) -> dict:
    from .resumable import weights_fingerprint
    return {'name': name, 'class': type(model).__name__, 'weights': weights,
            'state_dict_sha256': weights_fingerprint(model), 'layer_module': resolve_layer(model, layer)}


def run_identity(model_info: dict, settings: FeatureSettings, fmt: str) -> dict:
    return {'format_version': FORMAT_VERSION, 'model': model_info['name'],
            'state_dict_sha256': model_info['state_dict_sha256'], 'layer_module': model_info['layer_module'],
            'settings': settings.identity(), 'array_format': fmt}


def default_snippets_per_chunk(settings: FeatureSettings, batch_size: Optional[int], device: torch.device) -> int:
    clips = batch_size or (40 if device.type == 'cuda' else 10)
    return max(1, clips // settings.crops)


# ----------------------------------------------------------------------------------- Python API

def extract(model: Union[str, torch.nn.Module], path: str, preset: str = 'i3d-r50-10crop', *,
            device: Optional[Union[str, torch.device]] = None, batch_size: Optional[int] = None,
            fast_path: bool = True, **overrides) -> Tuple[np.ndarray, dict]:
    """Features of one video (file or frame folder) and their description (the sidecar the CLI writes).

    ``model``: a zoo model, or a zoo name (its pretrained weights are loaded). ``overrides``: any of
    snippet, stride, tail, align, crops, crop_size, resize, norm, fps, layer, lookahead, naming, layout.
    Raises ShortVideoError (too short under --tail drop), VideoDecodeError (unreadable), UnknownLayerError.
    """
    settings = resolve_settings(preset, **overrides)
    if isinstance(model, str):
        name = model
        model, weights = load_model(name)
    else:
        name = getattr(getattr(model, 'pretrained_cfg', None), 'architecture', None) or type(model).__name__
        weights = {'kind': 'given', 'source': None}
    device = torch.device(device) if device is not None else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    info = model_description(name, model, weights, settings.layer)
    net = prepare_feature_model(model, settings.layer, device, fast_path)
    mean, std = normalisation(settings, getattr(model, 'pretrained_cfg', None))
    job = VideoJob(0, output_stem(path, 'stem'), path, output_stem(path, settings.naming))
    accumulator, video = FeatureAccumulator(), None
    for chunk in stream_video_checked(job, settings, default_snippets_per_chunk(settings, batch_size, device)):
        video = accumulator.add(chunk, run_chunk(net, chunk, settings, mean, std, device)) or video
    array = arrange(video.features, settings)
    data = array_bytes(array, 'npy')
    sidecar = build_sidecar(video, array, f'{job.stem}.npy', sha256_bytes(data), settings,
                            run_identity(info, settings, 'npy'), info)
    return array, sidecar


# -------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m eval.features', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='a zoo model name (default: the preset\'s model)')
    p.add_argument('--data', required=True, help='a folder of videos / frame folders, or a list file')
    p.add_argument('--out', required=True, help='output folder (resumed when it holds a run of this configuration)')
    p.add_argument('--preset', default='i3d-r50-10crop', choices=sorted(PRESETS),
                   help='i3d-r50-10crop (default), i3d-inception, dense')
    k = p.add_argument_group('settings (default: the preset\'s)')
    k.add_argument('--snippet', type=int, help='frames per snippet (window)')
    k.add_argument('--stride', type=int, help='frames between the starts (centres) of consecutive snippets')
    k.add_argument('--tail', choices=('drop', 'pad', 'loop', 'zero'),
                   help='the end of the video: drop a partial snippet, pad it with the last frame, loop to '
                        'the start, or zero frames')
    k.add_argument('--align', choices=('start', 'centre'), help='windows start at k*stride, or are centred on it')
    k.add_argument('--lookahead', type=int, help='(--tail drop) frames needed after a window for it to count')
    k.add_argument('--crops', type=int, choices=(1, 3, 5, 10), help='1 centre, 3 along the long side, 5, 10 (5 + mirrored)')
    k.add_argument('--crop-size', type=int, help='crop side in pixels')
    k.add_argument('--resize', help='WxH (exact, LANCZOS), a short side (bilinear), or none; :filter overrides')
    k.add_argument('--norm', choices=('minus1-1', 'caffe2', 'model'), help='[-1, 1], Caffe2 mean/std, or the model\'s')
    k.add_argument('--fps', type=float, help='resample video files to this rate (0: native)')
    k.add_argument('--layer', help='pre_logits (default), res2..res5 / layer1..4, Mixed_*: globally pooled')
    k.add_argument('--naming', choices=('name', 'stem', 'stem_rgb'), help='output file name rule')
    k.add_argument('--layout', choices=('snippets-first', 'channels-first'), help='array axis order')
    p.add_argument('--format', choices=ARRAY_FORMATS, default='npy', help='npy (default) or npz (key "features")')
    w = p.add_mutually_exclusive_group()
    w.add_argument('--checkpoint', help='a zoo .pth/.safetensors state dict instead of the pretrained weights')
    w.add_argument('--random-weights', action='store_true', help='untrained weights (pipeline checks only)')
    p.add_argument('--seed', type=int, default=0, help='seed of --random-weights (default 0)')
    p.add_argument('--batch-size', type=int, help='clips per forward pass, rounded down to whole snippets of '
                                                  'all crops (default 10 on CPU, 40 on GPU)')
    p.add_argument('--workers', type=int, help='decoding processes per rank (default: CPUs - 1, at most 4)')
    p.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda when present; torchrun: cuda:LOCAL_RANK)')
    p.add_argument('--threads', type=int, help='torch CPU threads per rank')
    p.add_argument('--no-fast-path', action='store_true', help='eager model instead of the BN-folded channels_last copy')
    p.add_argument('--max-failed', type=float, default=0.01,
                   help='exit non-zero when more than this fraction of the videos fail to decode (default 0.01; '
                        'missing files and videos too short for --tail drop are counted apart)')
    p.add_argument('--dist-timeout', type=float, default=DEFAULT_TIMEOUT_S, help='seconds a rank waits for the others')
    p.add_argument('--no-progress', action='store_true')
    return p


class _Exit(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _agree(ctx: DistContext, error: Optional[str]) -> None:
    """Every rank stops when any rank found a problem, so no rank starts alone."""
    errors = [e if not ctx.distributed else f'rank {r}: {e}'
              for r, e in enumerate(ctx.all_gather(error, 'pre-flight checks')) if e]
    if errors:
        raise _Exit(EXIT_USAGE, 'error: ' + '\nerror: '.join(dict.fromkeys(errors)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    use_cuda = None if args.device is None else args.device.startswith('cuda')
    ctx = init_distributed(args.dist_timeout, use_cuda=use_cuda)
    try:
        return _run(args, ctx)
    except _Exit as e:
        if ctx.is_main and e.message:
            print(e.message, file=sys.stderr if e.code else sys.stdout, flush=True)
        return e.code
    except RankFailure as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        return EXIT_RANKS
    finally:
        ctx.close()


def _run(args: argparse.Namespace, ctx: DistContext) -> int:
    say = print if ctx.is_main else (lambda *a, **k: None)
    started = time.time()
    try:
        settings = resolve_settings(args.preset, **{k: getattr(args, k) for k in OVERRIDABLE})
    except (ValueError, TypeError) as e:
        raise _Exit(EXIT_USAGE, f'error: {e}')
    from .resumable import probe_writable
    _agree(ctx, probe_writable(args.out))                    # before loading anything
    try:
        items, data_desc = read_inputs(args.data)
        jobs, missing = make_jobs(items, settings)
    except (OSError, ValueError) as e:
        raise _Exit(EXIT_USAGE, f'error: {e}')
    if args.threads:
        torch.set_num_threads(args.threads)

    name = args.model or PRESETS[args.preset].model
    try:
        model, weights = load_model(name, args.random_weights, args.checkpoint, args.seed)
        model_info = model_description(name, model, weights, settings.layer)
        mean, std = normalisation(settings, getattr(model, 'pretrained_cfg', None))
    except UnknownLayerError as e:
        raise _Exit(EXIT_USAGE, f'error: {e}')
    except KeyError as e:
        raise _Exit(EXIT_USAGE, f'error: {e.args[0] if e.args else e}')
    except (RuntimeError, OSError, ValueError) as e:
        raise _Exit(EXIT_USAGE, f'error: cannot load {name}: {e}')
    identity = run_identity(model_info, settings, args.format)
    identity_hash = identity_sha256(identity)

    # ---- one configuration per --out
    verdict = None
    if ctx.is_main:
        from .store import manifest_differences, read_manifest
        manifest = {'kind': 'features', 'identity': identity,
                    'info': {'preset': settings.preset, 'sources': list(settings.sources), 'data': args.data,
                             'torch': torch.__version__, 'weights': weights}}
        stored = read_manifest(args.out)
        if stored is None:
            write_json(os.path.join(args.out, MANIFEST), manifest)
        else:
            differences = manifest_differences(stored, manifest)
            if differences:
                verdict = (f'error: {args.out} holds features of a different configuration; refusing to mix:\n  '
                           + '\n  '.join(differences)
                           + f'\nuse another --out, or delete {args.out} to start it fresh')
    verdict = ctx.broadcast_from_main(verdict, 'checking the output folder')
    if verdict:
        raise _Exit(EXIT_USAGE, verdict)

    # ---- resume: finished videos, verified (each rank hashes its share), agreed by all ranks
    mine_to_check = shard(list(range(len(jobs))), ctx.rank, ctx.world_size)
    local_done = {jobs[i].index: finished_sidecar(args.out, jobs[i].stem, args.format, identity_hash)
                  for i in mine_to_check}
    done: Dict[int, dict] = {}
    for part in ctx.all_gather({k: v for k, v in local_done.items() if v is not None}, 'agreeing on finished videos'):
        done.update(part)
    todo = [j for j in jobs if j.index not in done]
    mine = shard(todo, ctx.rank, ctx.world_size)

    device = rank_device(ctx, args.device)
    workers = args.workers if args.workers is not None else min(4, max(0, usable_cpus() // ctx.local_world_size - 1))
    per_chunk = default_snippets_per_chunk(settings, args.batch_size, device)
    say('=' * 100)
    say(f'model    {name} ({weights["kind"]} weights{", seed %d" % args.seed if weights["kind"] == "random" else ""}), '
        f'layer {settings.layer}' + (f' = {model_info["layer_module"]}' if model_info['layer_module'] else ''))
    say(f'preset   {settings.preset}: {settings.snippet}-frame snippets every {settings.stride} '
        f'({settings.align}, tail {settings.tail}), {settings.crops} crop(s) of {settings.crop_size}, '
        f'resize {settings.resize}, norm {settings.norm}, fps {settings.fps or "native"}')
    say(f'data     {data_desc}: {len(jobs)} to extract' + (f', {len(missing)} missing' if missing else ''))
    say(f'device   {device}{f" on each of {ctx.world_size} ranks" if ctx.distributed else ""}, '
        f'{per_chunk} snippet(s) x {settings.crops} crop(s) per forward, {workers} decode workers')
    if done:
        say(f'resume   {len(done)} videos already finished in {args.out} (arrays verified), {len(todo)} to do')
    if weights['kind'] == 'random':
        say('note     RANDOM WEIGHTS: the features mean nothing; a pipeline check only')
    say('-' * 100, flush=True)

    # ---- this rank's share
    results, failures = extract_share(ctx, args, settings, model, model_info, identity, mean, std, device,
                                      mine, workers, per_chunk, len(jobs))
    gathered = ctx.gather_to_main((results, failures), 'gathering results on rank 0')
    if not ctx.is_main:
        return EXIT_OK
    for part_results, part_failures in gathered[1:]:
        results.update(part_results)
        failures += part_failures

    # ---- the index, then the verdict
    failed_by_index = {f['index']: f for f in failures}
    missing_indices = {j.index for j in missing}
    entries = []
    for job in sorted(jobs + missing, key=lambda j: j.index):
        if job.index in results:
            entries.append(index_entry(job, 'extracted', results[job.index]))
        elif job.index in done:
            entries.append(index_entry(job, 'finished earlier', done[job.index]))
        elif job.index in missing_indices:
            entries.append(index_entry(job, 'missing', reason=job.path))
        elif job.index in failed_by_index:
            f = failed_by_index[job.index]
            entries.append(index_entry(job, 'refused' if f['kind'] == 'short' else 'failed', reason=f['reason']))
        else:
            entries.append(index_entry(job, 'not done', reason='no rank reported it'))
    decode_failed = sum(1 for f in failures if f['kind'] == 'decode')
    refused = sum(1 for f in failures if f['kind'] == 'short')
    finished = len(results) + len(done)
    wall = time.time() - started
    index = {
        'format_version': FORMAT_VERSION,
        'preset': settings.preset,
        'model': model_info,
        'settings': settings.identity(),
        'counts': {'videos': len(jobs) + len(missing), 'finished': finished, 'extracted_this_run': len(results),
                   'finished_earlier': len(done), 'failed': decode_failed, 'refused': refused,
                   'missing': len(missing)},
        'videos': entries,
        'failures': [{'id': e['id'], 'path': e['path'], 'status': e['status'], 'reason': e.get('reason', '')}
                     for e in entries if e['status'] in ('failed', 'refused', 'missing')],
        'run': {'world_size': ctx.world_size, 'seconds': round(wall, 2), 'host': socket.gethostname(),
                'command': ' '.join(['python -m eval.features'] + sys.argv[1:])},
    }
    write_json(os.path.join(args.out, INDEX), index)
    for f in index['failures'][:10]:
        say(f'  {f["status"]} {f["id"]}: {f["reason"]}')
    if len(index['failures']) > 10:
        say(f'  ... {len(index["failures"]) - 10} more in {os.path.join(args.out, INDEX)}')
    say(f'outputs  {args.out}/ ({finished} videos: <stem>.{args.format} + <stem>.json; {INDEX}, {MANIFEST})')
    attempted = len(jobs)
    if finished == 0:
        raise _Exit(EXIT_POLICY, f'exit 1: nothing was extracted ({decode_failed} failed, {refused} refused, '
                                 f'{len(missing)} missing of {len(jobs) + len(missing)})')
    if attempted and decode_failed / attempted > args.max_failed:
        raise _Exit(EXIT_POLICY, f'exit 1: {decode_failed} of {attempted} videos failed to decode '
                                 f'({100 * decode_failed / attempted:.1f}% > --max-failed {100 * args.max_failed:g}%)')
    say(f'done     {finished} of {len(jobs) + len(missing)} videos have features ({len(results)} extracted now, '
        f'{len(done)} earlier, {decode_failed} failed, {refused} refused, {len(missing)} missing) in {wall:.1f}s')
    return EXIT_OK


def _identity(item):
    return item


def extract_share(ctx, args, settings, model, model_info, identity, mean, std, device, mine: List[VideoJob],
                  workers: int, per_chunk: int, total: int):
    """Extract this rank's videos; returns ({job index: sidecar}, [failure dicts])."""
    from tqdm import tqdm
    results: Dict[int, dict] = {}
    failures: List[dict] = []
    if not mine:
        return results, failures
    net = prepare_feature_model(model, settings.layer, device, fast_path=not args.no_fast_path)
    stream = FeatureStream(mine, settings, per_chunk)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=min(workers, len(mine)),
                                         collate_fn=_identity)
    accumulator = FeatureAccumulator()
    bar = tqdm(total=len(mine), unit='video', disable=not ctx.is_main or args.no_progress, dynamic_ncols=True,
               mininterval=1.0, desc=f'rank 0 of {ctx.world_size}' if ctx.distributed else None)
    snippets, start = 0, time.perf_counter()
    for item in loader:
        if isinstance(item, VideoFailure):
            accumulator.drop(item.job.index)
            failures.append({'index': item.job.index, 'kind': item.kind, 'reason': item.reason})
            bar.update(1)
            continue
        video = accumulator.add(item, run_chunk(net, item, settings, mean, std, device))
        snippets += item.rows.shape[0]
        if video is not None:
            results[video.job.index] = write_video_outputs(args.out, video, settings, args.format, identity,
                                                           model_info)
            bar.update(1)
        bar.set_postfix_str(f'{snippets / max(time.perf_counter() - start, 1e-9):.2f} snippets/s'
                            + (f', failed {len(failures)}' if failures else ''), refresh=False)
    bar.close()
    return results, failures


if __name__ == '__main__':
    sys.exit(main())
