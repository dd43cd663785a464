"""Fine-tune a zoo model on a video benchmark with the Caffe2 recipe, then test it with the benchmark's protocol.

    python -m eval.finetune --model i3d_r50 --pretrained --benchmark ucf101 --split 1 --data /data/ucf101 \\
        --epochs 30 --batch-size 8 --out runs/ucf101-i3d
    python -m eval.finetune ... --freeze-backbone          # linear probe
    torchrun --nproc_per_node 8 -m eval.finetune ...       # the same recipe on 8 GPUs
    python -m eval.finetune ... --out runs/ucf101-i3d      # after a crash or kill: resumes where it was

Phases: resolve (flags + model config -> a frozen FinetuneConfig) -> data (the preset's training records)
-> model and optimizer, or the checkpoint of an interrupted run -> epochs of training (checkpoints every
``--checkpoint-every`` steps and at each epoch end) -> at each epoch end last.pth, a 1x1 validation through
the evaluation engine, best.pth -> the benchmark's full protocol on the final weights, through the engine.
Exit status: 0 when training finished and the test (if any) scored videos; 1 when the test produced nothing
useful; 2 for bad flags, data or --out; 3 when a rank failed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import zoo
from converters.file_io import atomic_write

import eval.finetune.recipe as rc
from eval.data.presets import BENCHMARKS, get_benchmark
from eval.kit.config import RunRequest, clip_size_problem, default_workers, model_class_names, parse_views
from eval.kit.console import Console, progress_bar
from eval.data.records import LabelMap, VideoRecord
from eval.kit.distributed import DEFAULT_TIMEOUT_S, DistContext
from eval.kit.job import RunError, decide_on_main, fail_together, run_job
from eval.kit.models import load_model
from eval.kit.engine import run_with_summary
from eval.kit.compiling import CompileDecision, compile_module, decide_compile, network_flop
from eval.kit.flags import WORKERS_HELP, add_compile_flag, add_precision_flags
from eval.kit.rundir import probe_writable
from eval.data.pixels import PixelNormalizer
from eval.kit.runtime import (job_backend, decode_loader, resolve_device, resolve_precision,
                               to_device)
from eval.data.train_clips import BatchPlan, RankBatchSampler, TrainClipDataset, TrainSpec
from eval.finetune.state import (BEST, CHECKPOINT, LAST, MetricsLog, Position, capture_rng, check_recipe,
                          load_training_state, restore_rng, save_training_state)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run does, decided once from the flags and the model's config."""
    model: str
    pretrained: bool
    weights_file: Optional[str]
    benchmark: str
    data: str
    annotations: Optional[str]
    split: Optional[str]
    val_data: Optional[str]          # the data the engine validates and tests on (None: none)
    val_annotations: Optional[str]
    classes: Tuple[str, ...]
    spec: TrainSpec
    epochs: int
    plan: BatchPlan
    lr: float
    weight_decay: float
    momentum: float
    schedule: str
    warmup_epochs: float
    lr_steps: Tuple[int, ...]        # epochs (step schedule)
    dropout: float
    bn: str                          # resolved: train / frozen / frozen-affine
    freeze_backbone: bool
    precision: str
    tf32: bool                       # --tf32: float32 may use TF32 on CUDA (eval.kit.runtime's rule)
    grad_checkpointing: bool
    compile: Optional[bool]          # --compile / --no-compile; None: eval.kit.compiling's rule
    seed: int
    deterministic: bool
    checkpoint_every: int
    workers: int
    device: str
    out: str
    test_views: Optional[str]
    test_checkpoint: str
    eval_batch_size: Optional[int]
    dist_timeout: float
    progress: bool

    def recipe(self) -> dict:
        """What decides the weights: a resume must match it. Not the rank count or the per-device split of the
        global batch (any split gives the same result up to rounding), nor workers, device or output knobs."""
        fields = ('model', 'pretrained', 'weights_file', 'benchmark', 'data', 'annotations', 'split', 'classes',
                  'epochs', 'lr', 'weight_decay', 'momentum', 'schedule', 'warmup_epochs', 'lr_steps', 'dropout',
                  'bn', 'freeze_backbone', 'precision', 'seed')
        recipe = {k: getattr(self, k) for k in fields}
        recipe.update(spec=dataclasses.asdict(self.spec), global_batch=self.plan.global_batch,
                      data=os.path.abspath(self.data))
        return recipe


TRAINING_RECORD = 'training.json'


# ------------------------------------------------------------------------------------------- resolve

def training_classes(args: argparse.Namespace) -> Tuple[str, ...]:
    """The classes of the new head: the benchmark's own list (UCF-101's classInd.txt ...), else --classes (a
    file, one name per line, in classifier order), else the model's (e.g. more Kinetics training)."""
    benchmark = get_benchmark(args.benchmark)
    if benchmark.classes is not None:
        return benchmark.classes(args.data, args.annotations)
    if args.classes:
        with open(args.classes, encoding='utf-8') as f:
            names = tuple(line.strip() for line in f if line.strip())
        if not names:
            raise ValueError(f'--classes {args.classes}: no class name in it')
        return names
    return model_class_names(zoo.get_pretrained_cfg(args.model))


def batch_plan(batch_size: int, accum_steps: int, world_size: int) -> BatchPlan:
    """--batch-size is the global batch: per-device batch x ranks x accumulation steps."""
    per_rank, rest = divmod(batch_size, world_size * accum_steps)
    if rest or per_rank < 1:
        raise ValueError(f'--batch-size {batch_size} does not split into {world_size} rank(s) x --accum-steps '
                         f'{accum_steps}: it must be a multiple of {world_size * accum_steps}')
    return BatchPlan(per_rank, world_size, accum_steps)


def validation_source(args: argparse.Namespace) -> Tuple[Optional[str], Optional[str]]:
    """Where the engine validates and tests: --val-data, else (a benchmark with its own splits) the split's
    test list in --data."""
    if args.val_data:
        return args.val_data, args.val_annotations
    if get_benchmark(args.benchmark).read_train is not None:
        return args.data, args.annotations
    return None, None


def resolve(args: argparse.Namespace, ctx: DistContext) -> FinetuneConfig:
    try:
        benchmark = get_benchmark(args.benchmark)
        split = benchmark.split(args.split)
        if not zoo.is_model(args.model):
            zoo.model_entrypoint(args.model)          # raises with close matches
        cfg = zoo.get_pretrained_cfg(args.model)
        plan = batch_plan(args.batch_size, args.accum_steps, ctx.world_size)
        device = resolve_device(args.device, ctx)
        resolve_precision(args.precision, device, training=True)
        spec = TrainSpec.from_cfg(cfg, args.frames, args.rate, args.crop,
                                  tuple(args.scales) if args.scales else None)
        problem = clip_size_problem(args.model, cfg, spec.num_frames, spec.crop_size)
        if problem:
            raise ValueError(f'--frames {spec.num_frames} / --crop {spec.crop_size}: {problem}')
        if args.test_views:
            parse_views(args.test_views)
        classes = training_classes(args)
        bn = rc.resolve_bn_mode(args.bn, plan.per_rank)
    except (KeyError, ValueError, OSError) as e:
        raise RunError(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from e
    for flag, value in (('--epochs', args.epochs), ('--lr', args.lr)):
        if value <= 0:
            raise RunError(f'{flag} must be positive, got {value}')
    val_data, val_annotations = validation_source(args)
    return FinetuneConfig(
        model=args.model, pretrained=args.pretrained, weights_file=args.weights_file, benchmark=args.benchmark,
        data=args.data, annotations=args.annotations, split=split, val_data=val_data, val_annotations=val_annotations,
        classes=tuple(classes), spec=spec, epochs=args.epochs, plan=plan, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        lr_steps=tuple(args.lr_steps or ()), dropout=args.dropout, bn=bn, freeze_backbone=args.freeze_backbone,
        precision=args.precision, tf32=args.tf32, grad_checkpointing=args.grad_checkpointing, compile=args.compile,
        seed=args.seed,
        deterministic=args.deterministic, checkpoint_every=args.checkpoint_every,
        workers=args.workers if args.workers is not None else default_workers(ctx.local_world_size, device),
        device=str(device), out=args.out, test_views=args.test_views,
        test_checkpoint=args.test_checkpoint, eval_batch_size=args.eval_batch_size, dist_timeout=args.dist_timeout,
        progress=not args.no_progress)


def read_training_records(config: FinetuneConfig, console: Console) -> List[VideoRecord]:
    """The preset's training set; missing videos are left out and counted, unlabelled ones refused."""
    benchmark = get_benchmark(config.benchmark)
    reader = benchmark.read_train or benchmark.read
    try:
        records, desc = reader(config.data, config.annotations, config.split, LabelMap(config.classes))
    except (OSError, ValueError) as e:
        raise RunError(f'training data: {e}') from e
    missing = [r for r in records if r.path is None]
    unlabelled = [r for r in records if r.path is not None and r.label < 0]
    if unlabelled:
        raise RunError(f'training data {desc}: {len(unlabelled)} video(s) without a label, e.g. {unlabelled[0].path}')
    found = [r for r in records if r.path is not None]
    console.say(f'training data: {desc}: {len(found)} videos' +
                (f', {len(missing)} missing and left out (e.g. {missing[0].missing})' if missing else ''))
    if not found:
        raise RunError(f'no training video found: {desc} lists {len(records)}, none of them is there')
    return found


# ------------------------------------------------------------------------------------------- model

def build_model(config: FinetuneConfig, device: torch.device) -> torch.nn.Module:
    """The zoo model with a new head of the training classes; the same initialisation on every rank."""
    model, _ = load_model(config.model, pretrained=config.pretrained, weights_file=config.weights_file,
                          num_classes=len(config.classes), seed=config.seed, drop_rate=config.dropout,
                          hint='give a local copy of the source checkpoint with --weights-file')
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    rc.set_trainable(model, config.bn, config.freeze_backbone)
    return model.to(device)


def check_cpu_bf16(config: FinetuneConfig, model: torch.nn.Module) -> None:
    """bf16 on a CPU is refused, before anything is written, for a clip length at which a temporal convolution
    of the model sees more than one frame but fewer than its kernel (rc.short_clip_bf16_convs: PyTorch's CPU
    bf16 backward then computes that weight gradient from memory it never wrote)."""
    if config.precision != 'bf16' or not config.device.startswith('cpu') or config.freeze_backbone:
        return                          # a frozen backbone computes no convolution weight gradient
    found = rc.short_clip_bf16_convs(model, config.spec.num_frames, config.spec.crop_size)
    if found:
        raise RunError(
            f'--precision bf16 on the CPU with --frames {config.spec.num_frames}: {len(found)} temporal '
            f'convolution(s) of {config.model} see fewer frames than their kernel: {", ".join(found[:3])}'
            + (f' and {len(found) - 3} more' if len(found) > 3 else '') + '. PyTorch\'s CPU bfloat16 backward '
            'computes their weight gradients from uninitialised memory there (NaN or wrong gradients; '
            'eval/finetune/recipe.py short_clip_bf16_convs). Use --precision fp32, or longer clips (--frames).')


def checkpoint_cfg_fields(config: FinetuneConfig) -> dict:
    """The config fields saved with last.pth / best.pth: the classes and the clip geometry trained on, and no
    claim of the source checkpoint's Kinetics accuracy. The test scale is the smallest training scale and
    the multi-view crop that scale (Caffe2: TEST.SCALE = JITTER_SCALES[0], fully-convolutional crop of it)."""
    spec = config.spec
    source = 'random initialisation' if not config.pretrained else f'the pretrained {config.model}'
    return {'num_classes': len(config.classes), 'class_names': list(config.classes), 'label_set': config.benchmark,
            'num_frames': spec.num_frames, 'sampling_rate': spec.sampling_rate, 'crop_size': spec.crop_size,
            'test_scale': spec.min_scale, 'test_crop_size': spec.min_scale,
            'top1': None, 'top5': None, 'paper_top1': None, 'eval_protocol': None,
            'notes': f'fine-tuned by eval.finetune from {source} on {config.benchmark} ({len(config.classes)} classes)'}


class Trainer:
    """One rank's training: the model (DDP-wrapped when distributed), optimizer, schedule, scaler, data and
    the durable state; ``run`` trains the remaining epochs and finishes each."""

    def __init__(self, config: FinetuneConfig, records: Sequence[VideoRecord], model: torch.nn.Module,
                 ctx: DistContext, console: Console):
        self.config, self.ctx, self.console = config, ctx, console
        self.device = torch.device(config.device)
        self.model = model
        self.net = self.model
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = rc.make_optimizer(self.model, config.lr, config.weight_decay, config.momentum)
        self.steps_per_epoch = config.plan.steps_per_epoch(len(records))
        if self.steps_per_epoch < 1:
            raise RunError(f'--batch-size {config.plan.global_batch} is larger than the {len(records)} training '
                           'videos: not one optimizer step per epoch')
        total = self.steps_per_epoch * config.epochs
        self.factor = rc.LRFactor(
            total_steps=total, schedule=config.schedule,
            warmup_steps=round(config.warmup_epochs * self.steps_per_epoch),
            milestones=[e * self.steps_per_epoch for e in config.lr_steps] or rc.default_milestones(total))
        self.scheduler = rc.make_scheduler(self.optimizer, self.factor)
        self.precision = resolve_precision(config.precision, self.device, training=True, tf32=config.tf32)
        self.scaler = self.precision.make_scaler()
        self.ddp = self.net
        self.compile = self.compile_decision(total)
        self.compile_failed: Optional[str] = None
        self.step_seconds: List[float] = []     # this attempt's optimizer steps
        if self.compile.compiled:
            self.net = compile_module(self.ddp, self.device)
        self.dataset = TrainClipDataset(records, config.spec, seed=config.seed)
        self.normalise = PixelNormalizer.from_cfg(self.model.pretrained_cfg)
        self.position = Position()
        self.log = MetricsLog(config.out, ctx.is_main)

    def compile_decision(self, total_steps: int) -> CompileDecision:
        """eval.kit.compiling's rule for training: each step's forward and backward (counted as twice the
        forward) of this rank's clips over the steps of the whole run; the model and its DDP wrapper compiled
        together (torch.compile of the DDP module: DDP's buckets split the graph)."""
        config, spec = self.config, self.config.spec
        flop = None
        if config.compile is None:
            forward = network_flop(self.model, (1, 3, spec.num_frames, spec.crop_size, spec.crop_size))
            if forward is not None:
                flop = 3 * forward * config.plan.per_rank * config.plan.accum_steps * total_steps
        return decide_compile(config.compile, self.device, config.precision, flop, training=True)

    # --------------------------------------------------------------------------------- durable state
    def save(self) -> None:
        rng = self.ctx.gather_to_main(capture_rng(), 'gathering RNG states for the checkpoint')
        if self.ctx.is_main:
            save_training_state(os.path.join(self.config.out, CHECKPOINT), model=self.model,
                                optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, rng=rng,
                                position=self.position, recipe=self.config.recipe())
        self.ctx.barrier('writing the checkpoint')

    def resume(self) -> bool:
        """Load the checkpoint of an interrupted run of this recipe, if there is one."""
        path = os.path.join(self.config.out, CHECKPOINT)
        if not os.path.isfile(path):
            self.log.cut_back(0, 0)
            return False
        state = load_training_state(path)
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        self.position = Position(**state['position'])
        if len(state['rng']) == self.ctx.world_size:
            restore_rng(state['rng'][self.ctx.rank])
        else:   # dropout masks then differ from the interrupted run's; data order and augmentation do not
            self.console.say(f'note: the checkpoint holds RNG states of {len(state["rng"])} rank(s), this run has '
                             f'{self.ctx.world_size}; dropout draws afresh')
        self.log.cut_back(self.position.global_step, self.position.epochs_finished)
        p = self.position
        self.console.say(f'resuming from {path}: epoch {p.epoch + 1}, step {p.step} of {self.steps_per_epoch} '
                         f'(global step {p.global_step})')
        return True

    # --------------------------------------------------------------------------------- training
    def loader(self, epoch: int, start_step: int):
        self.dataset.set_epoch(epoch)
        sampler = RankBatchSampler(self.config.plan, len(self.dataset), self.config.seed, epoch, self.ctx.rank,
                                   start_step)
        # a private generator: creating the loader must not draw from the global one (dropout's)
        return decode_loader(self.dataset, self.device, self.config.workers, batch_sampler=sampler,
                             generator=torch.Generator())

    def micro_step(self, clips: torch.Tensor, labels: torch.Tensor, sync: bool) -> Tuple[float, int]:
        """Forward and backward of one micro-batch; (sum of losses, correct) over its clips. A compiled network
        that fails (compiling happens in the first forward and backward) hands over to the eager one, once."""
        if self.net is self.ddp:
            return self._micro_step(clips, labels, sync)
        try:
            return self._micro_step(clips, labels, sync)
        except Exception as e:     # inductor's own errors vary by version
            self.compile_failed = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
            self.console.say(f'compile  failed at run time ({self.compile_failed}); training eagerly from here on',
                             flush=True)
            self.net = self.ddp
            self.optimizer.zero_grad(set_to_none=True)
            return self._micro_step(clips, labels, sync)

    def _micro_step(self, clips: torch.Tensor, labels: torch.Tensor, sync: bool) -> Tuple[float, int]:
        clips, labels = to_device((clips, labels), self.device)
        x = self.normalise(clips)
        no_sync = self.ddp.no_sync if self.ctx.distributed and not sync else contextlib.nullcontext
        with no_sync():
            with self.precision.autocast():
                logits = self.net(x)
            loss = F.cross_entropy(logits.float(), labels)
            self.scaler.scale(loss / self.config.plan.accum_steps).backward()
        return float(loss.detach()) * len(labels), int((logits.argmax(dim=1) == labels).sum())

    def optimizer_step(self, batches) -> Tuple[float, float, float]:
        """One optimizer step over the global batch; (mean loss, top-1, lr) over all its clips, every rank."""
        lr = self.optimizer.param_groups[0]['lr']
        loss_sum, correct = 0.0, 0
        for a in range(self.config.plan.accum_steps):
            clips, labels, _ = next(batches)
            l, c = self.micro_step(clips, labels, sync=a == self.config.plan.accum_steps - 1)
            loss_sum, correct = loss_sum + l, correct + c
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        totals = torch.tensor([loss_sum, correct], dtype=torch.float64)
        if self.ctx.distributed:
            torch.distributed.all_reduce(totals, group=self.ctx.control_group)
        n = self.config.plan.global_batch
        return float(totals[0]) / n, float(totals[1]) / n, lr

    def train_epoch(self, bar) -> None:
        p, config = self.position, self.config
        rc.set_train_mode(self.model, config.bn, config.freeze_backbone)
        batches = iter(self.loader(p.epoch, p.step))
        while p.step < self.steps_per_epoch:
            started = time.perf_counter()
            loss, top1, lr = self.optimizer_step(batches)
            seconds = time.perf_counter() - started
            self.step_seconds.append(seconds)
            p.step, p.global_step = p.step + 1, p.global_step + 1
            p.loss_sum += loss * config.plan.global_batch
            p.correct += round(top1 * config.plan.global_batch)
            p.clips += config.plan.global_batch
            rate = config.plan.global_batch / seconds
            self.log.write(kind='step', epoch=p.epoch + 1, step=p.step, global_step=p.global_step, lr=lr, loss=loss,
                           top1=top1, clips_per_s=rate, seconds=seconds)
            bar.update(config.plan.global_batch)
            bar.set_postfix_str(f'epoch {p.epoch + 1}/{config.epochs} loss {loss:.4f} top1 {100 * top1:.1f}% '
                                f'lr {lr:.3g}', refresh=False)
            if config.checkpoint_every and p.global_step % config.checkpoint_every == 0 \
                    and p.step < self.steps_per_epoch:
                self.save()
        self.position = dataclasses.replace(p, epoch=p.epoch + 1, step=0, loss_sum=0.0, correct=0, clips=0,
                                            epoch_loss=p.loss_sum / max(p.clips, 1),
                                            epoch_top1=p.correct / max(p.clips, 1))
        self.save()

    def run(self) -> None:
        config = self.config
        total = self.steps_per_epoch * config.epochs * config.plan.global_batch
        done = self.position.global_step * config.plan.global_batch
        with progress_bar(total, 'clip', self.ctx.is_main and config.progress, 'fine-tuning', initial=done) as bar:
            if self.position.end_of_epoch_pending:
                self.finish_epoch(self.position.epoch - 1)
            while self.position.epoch < config.epochs:
                self.train_epoch(bar)
                self.finish_epoch(self.position.epoch - 1)
        self.log.close()
        self.write_run_record()

    def write_run_record(self) -> None:
        """training.json (rank 0, rewritten by each attempt): how this attempt trained, whether compiled."""
        if not self.ctx.is_main:
            return
        record = self.compile.record()
        if self.compile_failed:
            record.update(compiled=False, fallback=f'compiling failed at run time ({self.compile_failed}); '
                                                   'trained eagerly')
        steps = self.step_seconds
        record['start_s'] = round(steps[0] - statistics.median(steps[1:]), 2) \
            if self.net is not self.ddp and len(steps) > 1 else None     # the first step compiles
        info = {'compile': record, 'precision': self.config.precision, 'device': self.config.device,
                'grad_checkpointing': self.config.grad_checkpointing, 'world_size': self.ctx.world_size,
                'global_step': self.position.global_step, 'torch': torch.__version__}
        with atomic_write(os.path.join(self.config.out, TRAINING_RECORD), 'w') as f:
            json.dump(info, f, indent=1)

    # --------------------------------------------------------------------------------- epoch end
    def finish_epoch(self, epoch: int) -> None:
        """last.pth, a 1x1 validation through the engine, best.pth; the epoch's row in the log."""
        config, out = self.config, self.config.out
        if self.ctx.is_main:
            zoo.save_checkpoint_file(os.path.join(out, LAST), self.model.state_dict(), checkpoint_cfg_fields(config))
        self.ctx.barrier('writing last.pth')
        top1 = top5 = None
        if config.val_data:
            top1, top5 = self.validate(epoch)
        p = self.position
        if top1 is not None and (p.best_top1 is None or top1 > p.best_top1):
            p.best_top1, p.best_epoch = top1, epoch + 1
        if self.ctx.is_main and (p.best_epoch in (None, epoch + 1)):    # no validation: best is last
            with open(os.path.join(out, LAST), 'rb') as src, atomic_write(os.path.join(out, BEST)) as dst:
                shutil.copyfileobj(src, dst)
        self.log.write(kind='epoch', epoch=epoch + 1, step=self.steps_per_epoch, global_step=p.global_step,
                       lr=self.optimizer.param_groups[0]['lr'], loss=p.epoch_loss, top1=p.epoch_top1, val_top1=top1,
                       val_top5=top5)
        p.epochs_finished = epoch + 1
        val = f', validation top-1 {100 * top1:.2f}%' if top1 is not None else ''
        self.console.say(f'epoch {epoch + 1}/{config.epochs}: train loss {p.epoch_loss:.4f}, top-1 '
                         f'{100 * p.epoch_top1:.1f}%{val}')

    def validate(self, epoch: int) -> Tuple[Optional[float], Optional[float]]:
        """The 1x1 test of last.pth on the validation data, by the evaluation engine, from scratch (a resumed
        epoch end validates again)."""
        out = os.path.join(self.config.out, 'val', f'epoch_{epoch + 1:03d}')
        if self.ctx.is_main and os.path.isdir(out):
            shutil.rmtree(out)
        self.ctx.barrier('clearing the validation folder')
        code, summary = self.evaluate(os.path.join(self.config.out, LAST), '1x1', out, quiet=True)
        if code != 0 or summary is None:
            self.console.say(f'warning: validation of epoch {epoch + 1} failed (exit status {code}); see {out}')
            return None, None
        metrics = summary['metrics']
        return metrics.get('top1'), metrics.get('top5')

    def evaluate(self, checkpoint: str, views: Optional[str], out: str, quiet: bool = False):
        """(exit status, summary) of the engine on the validation/test data with a saved checkpoint. The
        engine seeds the global generators; they are put back, so evaluating never changes training. Quiet:
        the engine prints errors only (each epoch's validation is reported in the epoch's line)."""
        config = self.config
        request = RunRequest(
            benchmark=config.benchmark, model=config.model, data=config.val_data, annotations=config.val_annotations,
            split=config.split, views=views, checkpoint=checkpoint, batch_size=config.eval_batch_size,
            workers=config.workers, device=config.device, seed=config.seed, max_failed=1.0,
            dist_timeout=config.dist_timeout, out=out, no_flops=True, no_progress=not config.progress, tf32=config.tf32,
            compile=config.compile, quiet=quiet, command=f'eval.finetune evaluation of {checkpoint}')
        rng = capture_rng()
        code, summary = run_with_summary(request, self.ctx)     # builds its own model from the file
        restore_rng(rng)
        return code, self.ctx.broadcast_from_main(summary, 'sharing the evaluation summary')


# ------------------------------------------------------------------------------------------- run

def final_test(trainer: Trainer, console: Console) -> int:
    config = trainer.config
    if not config.val_data:
        console.say(f'no test data (--val-data): the weights are in {os.path.join(config.out, LAST)}')
        return 0
    checkpoint = os.path.join(config.out, BEST if config.test_checkpoint == 'best' else LAST)
    out = os.path.join(config.out, 'test')
    code, summary = trainer.evaluate(checkpoint, config.test_views, out)
    if summary is not None:
        m = summary['metrics']
        console.say(f'test ({summary["views"]["spec"]} views, {os.path.basename(checkpoint)}): top-1 '
                    f'{100 * m["top1"]:.2f}%, top-5 {100 * m["top5"]:.2f}% over {m["videos"]} videos; {out}')
    return code


def claim_out(config: FinetuneConfig, ctx: DistContext) -> None:
    """--out is tied to this recipe (the first thing written), or refused when it holds another."""
    decide_on_main(ctx, lambda: check_recipe(config.out, config.recipe()), 'checking the run folder')


def describe(config: FinetuneConfig, trainer: Trainer, console: Console) -> None:
    plan, spec = config.plan, config.spec
    trainable = rc.trainable_count(trainer.model)
    console.say(f'{config.model} ({"pretrained" if config.pretrained else "random initialisation"}) -> '
                f'{len(config.classes)} classes; {trainable:,} trainable parameters'
                f'{" (linear probe)" if config.freeze_backbone else ""}; BN {config.bn}')
    console.say(f'clips {spec.num_frames}x{spec.sampling_rate}, short side {spec.min_scale}-{spec.max_scale}, crop '
                f'{spec.crop_size}, flip {spec.flip_prob}; global batch {plan.global_batch} = {plan.per_rank} x '
                f'{plan.world_size} rank(s) x {plan.accum_steps} accumulation step(s); {trainer.steps_per_epoch} '
                f'steps/epoch x {config.epochs} epochs; SGD lr {config.lr:g} ({config.schedule}, warmup '
                f'{config.warmup_epochs:g} epochs), momentum {config.momentum:g} Nesterov, weight decay '
                f'{config.weight_decay:g} (none on BN and biases); {config.precision}'
                f'{", TF32 allowed" if trainer.precision.tf32 else ", TF32 off" if trainer.precision.tf32 is False else ""}'
                f'{", gradient checkpointing" if config.grad_checkpointing else ""}; out {config.out}')
    console.say(trainer.compile.line())


def train_and_test(args: argparse.Namespace, ctx: DistContext, console: Console) -> int:
    config = resolve(args, ctx)
    if config.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=config.device.startswith('cuda'))
    fail_together(ctx, probe_writable(config.out))            # before loading anything
    model = build_model(config, torch.device(config.device))
    check_cpu_bf16(config, model)
    claim_out(config, ctx)
    records = read_training_records(config, console)
    trainer = Trainer(config, records, model, ctx, console)
    describe(config, trainer, console)
    trainer.resume()
    with job_backend(trainer.device, trainer.precision):
        trainer.run()
    return final_test(trainer, console)


# ------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m eval.finetune', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group('model and data')
    d.add_argument('--model', required=True, help='a name from zoo.list_models()')
    d.add_argument('--pretrained', action='store_true', help="start from the entry's pretrained weights")
    d.add_argument('--weights-file', help='a local copy of the source checkpoint (implies --pretrained)')
    d.add_argument('--benchmark', choices=list(BENCHMARKS), default='list',
                   help='the preset reading --data (ucf101 / hmdb51: the split\'s train list; the test list is '
                        'validated and tested)')
    d.add_argument('--data', required=True, help='the training data, as the preset reads it')
    d.add_argument('--annotations', help="the preset's annotation file or folder")
    d.add_argument('--split', help='UCF-101 / HMDB-51: 1 (default), 2 or 3; Kinetics: the CSV split to keep')
    d.add_argument('--classes', help='a file of class names, one per line (presets without their own classes)')
    d.add_argument('--val-data', help='validation / test data read by the same preset (default: the benchmark\'s '
                                      'test split when it has one, else none)')
    d.add_argument('--val-annotations')
    c = p.add_argument_group('clips')
    c.add_argument('--frames', type=int, help='frames per clip (default: the model config)')
    c.add_argument('--rate', type=int, help='sampling rate (default: the model config)')
    c.add_argument('--crop', type=int, help='training crop (default: the model config, 224)')
    c.add_argument('--scales', type=int, nargs=2, metavar=('MIN', 'MAX'),
                   help='short-side jitter range (default 256 320 for a 224 crop, in proportion otherwise)')
    o = p.add_argument_group('recipe')
    o.add_argument('--epochs', type=int, default=30)
    o.add_argument('--batch-size', type=int, default=8, help='global batch: clips per optimizer step (default 8)')
    o.add_argument('--accum-steps', type=int, default=1, help='forward passes accumulated per step (default 1)')
    o.add_argument('--lr', type=float, default=0.01, help='base learning rate for the global batch (default 0.01)')
    o.add_argument('--weight-decay', type=float, default=rc.WEIGHT_DECAY)
    o.add_argument('--momentum', type=float, default=rc.MOMENTUM)
    o.add_argument('--schedule', choices=rc.SCHEDULES, default='cosine')
    o.add_argument('--warmup-epochs', type=float, default=1.0)
    o.add_argument('--lr-steps', type=int, nargs='*', help='step schedule: epochs at which the rate drops x0.1 '
                                                           '(default: 50%% and 75%% of the run)')
    o.add_argument('--dropout', type=float, default=rc.DROPOUT, help='before the new head (default 0.5)')
    o.add_argument('--bn', choices=rc.BN_MODES, default='auto',
                   help=f'BatchNorm: train; frozen (eval mode, affine trained); frozen-affine (nothing trained); '
                        f'auto (default): frozen below {rc.MIN_BN_BATCH} clips per device, else train')
    o.add_argument('--freeze-backbone', action='store_true', help='train the new head only (linear probe)')
    add_precision_flags(o, 'fp32, bf16 (CPU or GPU autocast) or fp16 (GPU, with a loss scaler)')
    o.add_argument('--grad-checkpointing', action='store_true', help='recompute activations in backward')
    add_compile_flag(o, 'the training step, forward and backward, and validation and test')
    o.add_argument('--seed', type=int, default=0)
    o.add_argument('--deterministic', action='store_true', help='deterministic algorithms (bit-exact resume on CPU)')
    r = p.add_argument_group('run')
    r.add_argument('--out', required=True, help='run folder: checkpoints, metrics.csv, last.pth, best.pth, val/, '
                                                'test/; the same command resumes it')
    r.add_argument('--checkpoint-every', type=int, default=500, help='optimizer steps between checkpoints (0: '
                                                                      'epoch ends only; default 500)')
    r.add_argument('--workers', type=int, help=WORKERS_HELP + '; the clips do not depend on it')
    r.add_argument('--device', help='cuda, cuda:1, cpu (default: cuda when present; torchrun: cuda:LOCAL_RANK)')
    r.add_argument('--test-views', help='SxT views of the final test (default: the model\'s published test)')
    r.add_argument('--test-checkpoint', choices=('last', 'best'), default='last',
                   help='weights the final test scores (default last: best is chosen on the validation data, '
                        'which for UCF-101 / HMDB-51 is the test split)')
    r.add_argument('--eval-batch-size', type=int, help='views per forward pass in validation and test')
    r.add_argument('--dist-timeout', type=float, default=DEFAULT_TIMEOUT_S)
    r.add_argument('--no-progress', action='store_true')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.pretrained = args.pretrained or bool(args.weights_file)
    # The kept heap (zoo.heap) makes a CPU training step faster for more peak memory (benchmarks/bench_train.py,
    # docs/finetuning.md): not with --grad-checkpointing, whose point is memory.
    return run_job(lambda ctx, console: train_and_test(args, ctx, console), args.device, args.dist_timeout,
                   keep_heap=not args.grad_checkpointing)

