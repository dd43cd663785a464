"""Mutation check of the suite: each promise below is broken by a one-line edit, and the tests named for it must
then fail. A test that still passes with its feature removed cannot fail when the feature breaks.

    python tests/mutations.py              # every mutation; exit status 1 if any survives, 2 if a named test
                                           # fails even unmutated (the control run, first)
    python tests/mutations.py -k bf16      # the mutations whose name contains 'bf16'
    python tests/mutations.py --list       # the table, without running anything

Each mutation runs in a copy of the working tree (with ../shared linked beside it, as the tests expect), so
that the edit also reaches the child processes the tests start (torchrun ranks, command lines); the copy's
pytest runs only the named tests. Not collected by pytest (no test_ prefix).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutation:
    name: str             # the promise broken
    path: str             # file edited, relative to the repository
    old: str              # text that must occur exactly once in it
    new: str
    tests: Tuple[str, ...]   # pytest node ids that must fail


FT = 'tests/test_finetune.py::'
SC = 'tests/test_eval_engine_paths.py::'
HANG = 'tests/test_eval_distributed.py::test_a_hanging_rank_stops_the_job_after_dist_timeout_with_exit_status_3'
DEFAULTS = FT + 'test_defaults_best_checkpoint_test_views_and_bad_training_videos_through_the_engine'
MUTATIONS = (
    # (1) the hollow tests
    Mutation('set_grad_checkpointing is a no-op', 'zoo/_features.py',
             'self.grad_checkpointing = enable', 'self.grad_checkpointing = False',
             ('tests/test_zoo_timm_contract.py::test_grad_checkpointing_gives_the_same_gradients_and_running_statistics'
              '[i3d_nl_r50_32x4]',
              FT + 'test_gradient_checkpointing_and_bf16_through_the_command_line')),
    Mutation('bf16 autocast is a no-op (scoring and fine-tuning)', 'eval/kit/runtime.py',
             'return torch.autocast(self.device.type, dtype=self.dtype)', 'return contextlib.nullcontext()',
             (FT + 'test_gradient_checkpointing_and_bf16_through_the_command_line',
              SC + 'test_bf16_scores_in_bfloat16_through_the_engine')),
    Mutation('the demo falls back to random weights', 'eval/data/demo.py',
             'model, weights = load_model(DEMO_MODEL_TRAINED, pretrained=True)',
             'raise RuntimeError("mutated")',
             ('tests/test_eval_cli.py::test_demo_says_which_weights_it_used',)),
    # (2) paths now run through the engine
    Mutation('a failed rank exits 1, not 3', 'eval/kit/job.py',
             'console.error(str(e), every_rank=True)\n        return 3',
             'console.error(str(e), every_rank=True)\n        return 1', (HANG,)),
    Mutation('--dist-timeout is ignored (the 1800 s default)', 'eval/kit/job.py',
             'ctx = init_distributed(dist_timeout, use_cuda=use_cuda)', 'ctx = init_distributed(use_cuda=use_cuda)',
             (HANG,)),
    Mutation('--aggregate logits is ignored', 'eval/kit/shards.py',
             'aggregation=config.request.aggregate)', "aggregation='softmax')",
             (SC + 'test_logit_averaging_scores_videos_with_their_mean_output',)),
    Mutation('scoring --compile is ignored', 'eval/kit/loop.py',
             'config.fast_path), decision, device,',
             'config.fast_path), CompileDecision(False, "ignored"), device,',
             (SC + 'test_compile_scores_through_torch_compile_as_the_eager_fast_path',)),
    Mutation('the compile rule ignores the planned work', 'eval/kit/compiling.py',
             'if repay is None or seconds < repay:', 'if True:',
             ('tests/test_compile_policy.py::test_the_rule_compiles_from_the_repay_threshold_and_the_flags_override_it',
              'tests/test_compile_policy.py::test_the_embedded_demo_stays_eager_and_a_kinetics_validation_compiles')),
    Mutation('a smaller last batch reaches the compiled network unpadded', 'eval/kit/compiling.py',
             'if self.batch_size and n < self.batch_size:', 'if False:',
             ('tests/test_compile_policy.py::test_a_smaller_last_batch_is_padded_to_the_compiled_shape',)),
    Mutation('fine-tuning --compile is ignored', 'eval/finetune/job.py',
             'self.net = compile_module(self.ddp, self.device)', 'pass',
             ('tests/test_compile_policy.py::test_compiled_fine_tuning_trains_as_eager_forward_and_backward',)),
    Mutation('a missing C++ compiler is not noticed', 'eval/kit/compiling.py',
             'if not any(shutil.which(n) for n in names):', 'if False:',
             ('tests/test_compile_policy.py::test_compiler_problem_names_the_missing_compiler',
              'tests/test_compile_policy.py::test_scoring_and_features_run_eagerly_and_say_so_without_a_compiler')),
    Mutation('eval.features --compile is ignored', 'eval/features/stream.py',
             'return net if decision is None else compiled_inference(net, decision, device, batch_size, say)',
             'return net',
             ('tests/test_features_cli.py::'
              'test_compile_extracts_through_torch_compile_the_features_of_the_eager_fast_path',)),
    Mutation('a resume with another number of processes is refused', 'eval/kit/engine.py',
             'seed=request.seed, spec=config.spec',
             "seed=(request.seed, __import__('os').environ.get('WORLD_SIZE', '1')), spec=config.spec",
             ('tests/test_eval_resume.py::test_a_run_killed_in_one_process_resumes_with_two_ranks',)),
    Mutation('fine-tuning default lr 0.02, not 0.01', 'eval/finetune/job.py',
             "default=0.01, help='base learning rate", "default=0.02, help='base learning rate", (DEFAULTS,)),
    Mutation('fine-tuning default warmup 0 epochs, not 1', 'eval/finetune/job.py',
             "'--warmup-epochs', type=float, default=1.0)", "'--warmup-epochs', type=float, default=0.0)", (DEFAULTS,)),
    Mutation('fine-tuning default dropout 0, not 0.5', 'eval/finetune/job.py',
             "default=rc.DROPOUT, help='before the new head", "default=0.0, help='before the new head", (DEFAULTS,)),
    Mutation('fine-tuning default weight decay 0, not 1e-4', 'eval/finetune/job.py',
             "'--weight-decay', type=float, default=rc.WEIGHT_DECAY)", "'--weight-decay', type=float, default=0.0)",
             (DEFAULTS,)),
    Mutation('--test-checkpoint best tests last.pth', 'eval/finetune/job.py',
             "BEST if config.test_checkpoint == 'best' else LAST", 'LAST', (DEFAULTS,)),
    Mutation('--test-views is ignored', 'eval/finetune/job.py',
             'trainer.evaluate(checkpoint, config.test_views, out)', 'trainer.evaluate(checkpoint, None, out)',
             (DEFAULTS,)),
    Mutation('best.pth is written every epoch', 'eval/finetune/job.py',
             '(p.best_epoch in (None, epoch + 1))', '(True)', (DEFAULTS,)),
    Mutation('a missing training video is not left out', 'eval/finetune/job.py',
             'found = [r for r in records if r.path is not None]', 'found = list(records)', (DEFAULTS,)),
    Mutation('the 32x4 models built on the 32x2 ("org") stem layout', 'zoo/video_nonlocal_net.py',
             "I3D_32X4_FROZEN = replace(I3D_8X8, norm='frozen_affine')",
             "I3D_32X4_FROZEN = replace(I3D_32X2, norm='frozen_affine')",
             ('tests/test_zoo_resnet3d.py::'
              'test_temporal_kernels_and_stem_layout_follow_the_caffe2_table[i3d_r50_32x4]',)),
    Mutation('a training video that fails to decode is not replaced', 'eval/data/train_clips.py',
             'except VideoDecodeError as e:', 'except ImportError as e:', (DEFAULTS,)),
)


def copy_tree(dest: str) -> str:
    """The working tree (tracked and untracked, not ignored files) under dest/repo, ../shared linked beside it."""
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split('\0')
    root = os.path.join(dest, 'repo')
    for rel in filter(None, files):
        src, dst = os.path.join(REPO, rel), os.path.join(root, rel)
        if not os.path.lexists(src):
            continue                      # deleted in the working tree, not yet in git
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    shared = os.path.join(os.path.dirname(REPO), 'shared')
    if os.path.isdir(shared):
        os.symlink(shared, os.path.join(dest, 'shared'))
    return root


def apply(root: str, m: Mutation) -> None:
    path = os.path.join(root, m.path)
    with open(path) as f:
        text = f.read()
    if text.count(m.old) != 1:
        raise SystemExit(f'{m.name}: {m.old!r} occurs {text.count(m.old)} times in {m.path}, not once: '
                         'update the table')
    with open(path, 'w') as f:
        f.write(text.replace(m.old, m.new))


def run_tests(root: str, tests: Tuple[str, ...]) -> dict:
    """node id -> 'failed', 'passed', 'skipped' or 'error' in the copy at root."""
    env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE='1', COLUMNS='400')   # reasons untruncated
    where = subprocess.run([sys.executable, '-c', 'import zoo, eval; print(zoo.__file__, eval.__file__)'],
                           cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    assert all(p.startswith(root) for p in where.split()), f'the copy imports another tree: {where}'
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rA', '-p', 'no:cacheprovider', *tests], cwd=root,
                          env=env, capture_output=True, text=True)
    outcome = {t: 'error' for t in tests}
    for line in proc.stdout.splitlines():
        found = re.match(r'(PASSED|FAILED|SKIPPED|ERROR) (\S+)(?: - (.*))?', line)
        if found and found.group(2) in outcome:
            why = (found.group(3) or '').strip()
            outcome[found.group(2)] = found.group(1).lower() + (f': {why[:70]}' if why else '')
    return outcome


def control(tests: Tuple[str, ...]) -> bool:
    """The named tests pass in an unmutated copy: a failure under a mutation is then the mutation's doing."""
    with tempfile.TemporaryDirectory(prefix='mutation-control-') as tmp:
        outcome = run_tests(copy_tree(tmp), tests)
    broken = {t: o for t, o in outcome.items() if not o.startswith('passed')}
    for t, o in broken.items():
        print(f'control: {t} does not pass unmutated ({o})')
    return not broken


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-k', default='', help='only the mutations whose name contains this')
    p.add_argument('--list', action='store_true', help='print the table and exit')
    p.add_argument('--no-control', action='store_true', help='skip running the named tests unmutated first')
    args = p.parse_args()
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if not (args.list or args.no_control or control(tuple(dict.fromkeys(t for m in chosen for t in m.tests)))):
        return 2
    survived = 0
    print(f'{"mutation":<52} {"result":<10} test')
    for m in chosen:
        if args.list:
            for t in m.tests:
                print(f'{m.name:<52} {"-":<10} {t}')
            continue
        with tempfile.TemporaryDirectory(prefix='mutation-') as tmp:
            root = copy_tree(tmp)
            apply(root, m)
            outcome = run_tests(root, m.tests)
        for t in m.tests:
            killed = outcome[t].startswith(('failed', 'error'))
            survived += not killed
            print(f'{m.name:<52} {"killed" if killed else "SURVIVED":<10} {t} ({outcome[t]})', flush=True)
    if survived:
        print(f'{survived} test(s) passed with their feature broken')
    return 1 if survived else 0


if __name__ == '__main__':
    sys.exit(main())
