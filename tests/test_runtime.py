"""Runtime rules decided once (eval.kit.runtime) and used by every job: the precision table, the device a job
runs on, the backend switches on CUDA, the host-to-device copy; and the pretrained-config fields that decide
the test head and the resize filter (eval.kit.config.fully_conv_head, VideoPretrainedCfg.interpolation)."""
import ast
import contextlib
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval.features.job as features_job
import eval.finetune.job as finetune_job
import zoo
import zoo.inference
from eval.data.decode import resize_short_side
from eval.data.records import VideoRecord, VideoSample
from eval.data.synthetic import write_synthetic_video
from eval.data.crops import Crop
from eval.data.views import ViewPlan, ViewSpec, scaled_size
from eval.features.stream import SnippetChunk, VideoJob
from eval.kit import engine
from eval.kit.config import RunRequest, fully_conv_head, library_config
from eval.kit.console import Console
from eval.kit.distributed import DistContext
from eval.kit.loop import evaluate
from eval.kit.runtime import (PRECISION_NAMES, PRECISION_TABLE, DecodeLoader, decode_loader, job_backend, pin_memory,
                              resolve_device, resolve_precision, to_device)
from eval.score.cli import build_parser as scoring_parser

# the zoo's own entries (other test modules register tiny test models without a source checkpoint)
ENTRIES = [n for n in zoo.list_models() if zoo.get_pretrained_cfg(n).source_format]
FP16_ON_CPU = '--precision fp16 trains with a loss scaler on a GPU only; on CPU use bf16'
UNKNOWN = "--precision must be one of ('fp32', 'bf16', 'fp16'), got 'fp8'"


def choices(parser, flag):
    return next(tuple(a.choices) for a in parser._actions if flag in a.option_strings)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA present as far as the device rules can tell (nothing is allocated on it); current device 3."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 3)


# ------------------------------------------------------------------------------------------- precision

def test_the_precision_table_names_and_dtypes_agree_with_the_zoo_fast_path():
    assert PRECISION_NAMES == zoo.inference.PRECISIONS
    assert {n: r.dtype for n, r in PRECISION_TABLE.items()} == \
        {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
    net = zoo.create_model('i3d_r50_8x8', num_classes=3)
    for name in ('bf16', 'fp16'):      # the fast path casts the backbone to the table's dtype
        fast = zoo.inference.prepare_for_inference(net, precision=name)
        assert fast.net.dtype == PRECISION_TABLE[name].dtype
        assert next(fast.net.net.layer1.parameters()).dtype == PRECISION_TABLE[name].dtype


def test_every_job_offers_the_tables_precisions_on_its_command_line():
    assert choices(scoring_parser('eval', ''), '--precision') == PRECISION_NAMES
    assert choices(finetune_job.build_parser(), '--precision') == PRECISION_NAMES
    assert choices(features_job.build_parser(), '--precision') == PRECISION_NAMES


def test_every_job_has_the_tf32_flag():
    for parser in (scoring_parser('eval', ''), finetune_job.build_parser(), features_job.build_parser()):
        assert any('--tf32' in a.option_strings for a in parser._actions)


@pytest.mark.parametrize('name,flag,expected', [('fp32', False, False), ('fp32', True, True), ('bf16', False, True),
                                                ('fp16', False, True)])
def test_tf32_on_cuda_is_off_for_fp32_unless_asked(name, flag, expected):
    assert resolve_precision(name, 'cuda', tf32=flag).tf32 is expected
    assert resolve_precision(name, 'cpu', tf32=flag).tf32 is None          # no such switch on the CPU


def test_the_tf32_flag_reaches_the_backend_switches():
    cuda = torch.device('cuda', 0)
    with backend_switches(tf32=False, benchmark=False):
        with job_backend(cuda, resolve_precision('fp32', cuda, tf32=True)):
            assert switches()[:2] == (True, True)
        assert switches()[:2] == (False, False)


def test_features_record_the_precision_and_on_cuda_the_tf32_setting():
    info = {'name': 'm', 'state_dict_sha256': 'x', 'layer_module': None}
    settings = features_job.resolve_settings('i3d-r50-10crop')
    on_cpu = features_job.run_identity(info, settings, 'npy', precision=resolve_precision('bf16', 'cpu'))['network']
    assert on_cpu == {'fast_path': True, 'precision': 'bf16'}
    on_cuda = features_job.run_identity(info, settings, 'npy', precision=resolve_precision('fp32', 'cuda'))['network']
    assert on_cuda['precision'] == 'fp32' and on_cuda['tf32'] is False


def test_an_unknown_precision_is_refused_naming_the_flag_and_the_choices():
    with pytest.raises(ValueError, match=re.escape(UNKNOWN)):
        resolve_precision('fp8', 'cpu')


def test_fp16_training_on_the_cpu_is_refused_and_bf16_suggested():
    with pytest.raises(ValueError) as refused:
        resolve_precision('fp16', 'cpu', training=True)
    assert str(refused.value) == FP16_ON_CPU
    assert resolve_precision('fp16', 'cpu').dtype == torch.float16           # inference: allowed, as before
    assert resolve_precision('bf16', 'cpu', training=True).dtype == torch.bfloat16


def test_only_fp16_training_gets_an_enabled_loss_scaler():
    assert resolve_precision('fp16', 'cuda', training=True).needs_scaler
    assert not resolve_precision('fp16', 'cuda').needs_scaler                 # inference has no loss
    for name in ('fp32', 'bf16'):
        run = resolve_precision(name, 'cpu', training=True)
        assert not run.needs_scaler and not run.make_scaler().is_enabled()


def test_autocast_is_the_tables_dtype_on_the_device_and_nothing_for_fp32():
    with resolve_precision('fp32', 'cpu').autocast():
        assert not torch.is_autocast_enabled('cpu')
    with resolve_precision('bf16', 'cpu', training=True).autocast():
        assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16
    assert not torch.is_autocast_enabled('cpu')


def test_finetune_refuses_fp16_on_the_cpu_with_the_tables_message_before_reading_data(tmp_path):
    args = finetune_job.build_parser().parse_args(['--model', 'i3d_r50', '--data', str(tmp_path / 'absent.txt'),
                                                   '--out', str(tmp_path / 'out'), '--precision', 'fp16',
                                                   '--device', 'cpu'])
    with pytest.raises(engine.RunError) as refused:
        finetune_job.resolve(args, DistContext())
    assert str(refused.value) == FP16_ON_CPU and refused.value.code == 2


def test_scoring_refuses_an_unknown_precision_before_loading_a_model(monkeypatch):
    monkeypatch.setattr(engine, '_choose_model', lambda *a: pytest.fail('a model was loaded'))
    with pytest.raises(engine.RunError, match=re.escape(UNKNOWN)):
        engine.resolve(RunRequest(model='i3d_r50', precision='fp8'), DistContext())
    with pytest.raises(SystemExit):
        scoring_parser('eval', '').parse_args(['--precision', 'fp8'])


class AutocastProbe(torch.nn.Module):
    """Records whether each forward pass ran under CPU autocast, and in which dtype."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 400)
        self.pretrained_cfg = zoo.get_pretrained_cfg('i3d_r50')
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else None)
        return self.fc(x.mean(dim=(2, 3, 4)))


@pytest.fixture(scope='module')
def one_video(tmp_path_factory):
    path = write_synthetic_video(str(tmp_path_factory.mktemp('v') / 'v.mp4'), num_frames=12, height=48, width=64)
    return [VideoRecord('v', path, label=0)]


@pytest.mark.parametrize('precision, expected', [('fp32', None), ('bf16', torch.bfloat16)])
def test_the_eager_scoring_model_runs_under_the_tables_autocast(one_video, precision, expected):
    model = AutocastProbe()
    spec = ViewSpec(num_frames=2, sampling_rate=1, spatial_crops=1, temporal_clips=2, scale=40, crop_size=32)
    result = evaluate(model, one_video, library_config(model, spec, batch_size=2, precision=precision,
                                                       no_fast_path=True, workers=0))
    assert result.counts()['scored'] == 1 and model.seen == [expected]


def test_scoring_refuses_an_unknown_precision_from_python_too(one_video):
    spec = ViewSpec(num_frames=2, sampling_rate=1, spatial_crops=1, temporal_clips=1, scale=40, crop_size=32)
    with pytest.raises(ValueError, match=re.escape(UNKNOWN)):
        model = AutocastProbe()
        evaluate(model, one_video, library_config(model, spec, precision='fp8', workers=0))


# ------------------------------------------------------------------------------------------- device

def test_an_explicit_device_wins(fake_cuda):
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device(torch.device('cpu'), DistContext(rank=1, world_size=2, local_rank=1)) == torch.device('cpu')
    assert resolve_device('cuda:0', DistContext(rank=1, world_size=2, local_rank=1)) == torch.device('cuda', 0)


def test_without_cuda_the_default_is_the_cpu(no_cuda):
    assert resolve_device() == torch.device('cpu')
    assert resolve_device(None, DistContext(rank=1, world_size=2, local_rank=1)) == torch.device('cpu')


def test_with_cuda_the_default_is_this_ranks_gpu(fake_cuda):
    ranks = DistContext(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert resolve_device(None, ranks) == resolve_device('cuda', ranks) == torch.device('cuda', 1)   # LOCAL_RANK
    assert resolve_device() == resolve_device('cuda', DistContext()) == torch.device('cuda', 3)       # current


@pytest.mark.parametrize('requested', ['cuda', 'cuda:1', torch.device('cuda', 0)])
def test_cuda_asked_for_without_cuda_is_an_error_not_a_cpu_run(no_cuda, requested):
    with pytest.raises(ValueError, match=r'--device cuda(:\d)?: CUDA is not available here .* use --device cpu'):
        resolve_device(requested)


def test_a_device_torch_does_not_know_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--device 'gpu0'"):
        resolve_device('gpu0')


def test_every_job_refuses_cuda_without_cuda_before_loading_a_model(no_cuda, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, '_choose_model', lambda *a: pytest.fail('a model was loaded'))
    with pytest.raises(engine.RunError, match='--device cuda: CUDA is not available'):
        engine.resolve(RunRequest(model='i3d_r50', device='cuda'), DistContext())
    args = features_job.build_parser().parse_args(['--data', str(tmp_path), '--out', str(tmp_path / 'f'),
                                                   '--device', 'cuda'])
    monkeypatch.setattr(features_job, 'resolve_run', lambda *a: pytest.fail('the run was resolved'))
    with pytest.raises(engine.RunError, match='--device cuda: CUDA is not available'):
        features_job._run(args, DistContext(), Console(True))
    args = finetune_job.build_parser().parse_args(['--model', 'i3d_r50', '--data', str(tmp_path / 'absent.txt'),
                                                   '--out', str(tmp_path / 'out'), '--device', 'cuda'])
    with pytest.raises(engine.RunError, match='--device cuda: CUDA is not available'):
        finetune_job.resolve(args, DistContext())


# ------------------------------------------------------------------------------- host to device, backend

def test_on_the_cpu_the_copy_step_copies_nothing():
    frames, labels = torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8), torch.tensor([1, 2])
    assert to_device(frames, torch.device('cpu')) is frames
    moved = to_device((frames, labels), torch.device('cpu'))
    assert isinstance(moved, tuple) and moved[0] is frames and moved[1] is labels
    assert not pin_memory(torch.device('cpu')) and pin_memory(torch.device('cuda', 0))


def test_the_loader_pins_the_pixels_of_scoring_and_feature_items(monkeypatch):
    """DataLoader(pin_memory=True) calls an item's pin_memory(); these dataclasses pin their tensors."""
    from torch.utils.data._utils.pin_memory import pin_memory as loader_pin
    pinned = []

    def fake_pin(tensor, *args, **kwargs):
        pinned.append(tensor)
        return tensor.clone()
    monkeypatch.setattr(torch.Tensor, 'pin_memory', fake_pin)
    plan = ViewPlan(num_decoded=1, frames=np.array([0]), clip_index=np.array([[0]]), size=(4, 4),
                    boxes=(Crop('centre', 0, 0, 4),))
    sample = VideoSample(0, VideoRecord('x', 'x'), plan, torch.ones(1, 4, 4, 3, dtype=torch.uint8))
    out = loader_pin(sample)
    assert isinstance(out, VideoSample) and out.plan is plan and pinned == [sample.frames]
    assert torch.equal(out.frames, sample.frames) and out.frames is not sample.frames
    pinned.clear()
    chunk = SnippetChunk(VideoJob(0, 'x', 'x', 'x'), 0, 0, torch.ones(2, 4, 4, 3, dtype=torch.uint8),
                         torch.zeros(1, 2, dtype=torch.int64))
    out = loader_pin(chunk)
    assert isinstance(out, SnippetChunk) and pinned == [chunk.frames, chunk.rows]
    assert dataclasses.replace(out, frames=chunk.frames, rows=chunk.rows) == chunk


class _Frames(torch.utils.data.Dataset):
    """Items as a decode worker sends them: a uint8 frame tensor and an int64 index tensor, in shared memory."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.full((2, 8, 8, 3), i, dtype=torch.uint8), torch.arange(4) + i


def _shared_records_while_iterating(loader):
    from torch.multiprocessing.reductions import shared_cache
    shared_cache.free_dead_references()
    sizes = []
    for i, (frames, rows) in enumerate(loader):
        assert int(frames[0, 0, 0, 0]) == i and int(rows[0]) == i   # every batch arrives, in order
        sizes.append(len(shared_cache))
    return sizes


def test_a_decode_loader_forgets_the_shared_storages_of_the_batches_it_has_handed_over():
    """torch.multiprocessing keeps a record (a weak reference) of every shared-memory storage a worker sent
    until 128 pile up; each keeps a small block allocated in the job's kept heap (zoo.heap), where such blocks
    split the holes the next activations need and the heap grows with the video's length (docs/performance.md).
    A plain DataLoader piles them up; every job's loader (decode_loader) keeps only those of the live batches."""
    plain = _shared_records_while_iterating(torch.utils.data.DataLoader(_Frames(), batch_size=None, num_workers=1))
    ours = _shared_records_while_iterating(decode_loader(_Frames(), torch.device('cpu'), 1, batch_size=None))
    assert len(plain) == len(ours) == 40
    assert plain[-1] >= 60                       # two storages a batch, none forgotten: the mechanism is there
    assert max(ours) <= 6                        # this batch's and the one before's (still referenced), no pile


def test_without_workers_a_decode_loader_is_a_plain_dataloader_iteration():
    loader = decode_loader(_Frames(), torch.device('cpu'), 0, batch_size=None)
    assert isinstance(loader, DecodeLoader) and loader.num_workers == 0 and loader.worker_init_fn is None
    assert isinstance(iter(loader), torch.utils.data.dataloader._SingleProcessDataLoaderIter)


def test_every_jobs_loader_is_a_decode_loader():
    """One place builds the jobs' DataLoaders (eval.kit.runtime.decode_loader): the four jobs call it, and no eval
    module calls DataLoader itself."""
    root = Path(__file__).resolve().parents[1] / 'eval'
    calls = {'DataLoader': set(), 'decode_loader': set()}
    for path in sorted(root.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, 'attr', getattr(node.func, 'id', None))
                if name in calls:
                    calls[name].add(str(path.relative_to(root)))
    assert calls == {'DataLoader': set(),
                     'decode_loader': {'kit/loop.py', 'features/job.py', 'finetune/job.py', 'fvd/job.py'}}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_on_cuda_loader_items_arrive_pinned_and_reach_the_gpu_unchanged():
    plan = ViewPlan(num_decoded=2, frames=np.array([0, 1]), clip_index=np.array([[0, 1]]), size=(8, 8),
                    boxes=(Crop('centre', 0, 0, 8),))
    frames = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    sample = VideoSample(0, VideoRecord('x', 'x'), plan, frames)
    loader = torch.utils.data.DataLoader([sample], batch_size=None, collate_fn=lambda item: item,
                                         pin_memory=pin_memory(resolve_device('cuda')))
    item = next(iter(loader))
    assert item.frames.is_pinned()
    on_gpu = to_device(item.frames, resolve_device('cuda'))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), frames)


@contextlib.contextmanager
def backend_switches(tf32: bool, benchmark: bool):
    """The three switches set to given values for a test, put back afterwards."""
    owners = (torch.backends.cuda.matmul, 'allow_tf32'), (torch.backends.cudnn, 'allow_tf32'), \
        (torch.backends.cudnn, 'benchmark')
    saved = [getattr(o, n) for o, n in owners]
    for (o, n), v in zip(owners, (tf32, tf32, benchmark)):
        setattr(o, n, v)
    try:
        yield
    finally:
        for (o, n), v in zip(owners, saved):
            setattr(o, n, v)


def switches():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def test_on_cuda_fp32_turns_tf32_off_and_benchmarks_fixed_shapes_until_the_job_ends():
    cuda = torch.device('cuda', 0)
    with backend_switches(tf32=True, benchmark=False):
        with job_backend(cuda, resolve_precision('fp32', cuda)):
            assert switches() == (False, False, True)
            with job_backend(cuda, resolve_precision('bf16', cuda)):     # a job inside a job
                assert switches() == (True, True, True)
            assert switches() == (False, False, True)
        assert switches() == (True, True, False)


def test_deterministic_algorithms_keep_cudnn_from_benchmarking():
    cuda = torch.device('cuda', 0)
    with backend_switches(tf32=True, benchmark=False):
        torch.use_deterministic_algorithms(True)
        try:
            with job_backend(cuda, resolve_precision('fp32', cuda)):
                assert switches() == (False, False, False)
        finally:
            torch.use_deterministic_algorithms(False)


def test_on_the_cpu_the_backend_switches_are_left_alone():
    with backend_switches(tf32=True, benchmark=False):
        with job_backend(torch.device('cpu'), resolve_precision('fp32', 'cpu')):
            assert switches() == (True, True, False)


# ------------------------------------------------------------------------------ pretrained-config fields

def test_the_fully_conv_head_runs_exactly_when_the_crop_exceeds_the_training_crop():
    cfg = zoo.get_pretrained_cfg('i3d_r50')                  # crop_size 224
    assert [fully_conv_head(cfg, c) for c in (192, 224, 225, 256)] == [False, False, True, True]
    assert fully_conv_head(None, 256) is False               # a model without a config: its own head
    small = cfg.replace(crop_size=32)
    assert fully_conv_head(small, 37) and not fully_conv_head(small, 32)


def test_the_published_tests_head_follows_from_each_entrys_crops():
    """ResNets: the Caffe2 fully-convolutional test (crop 256 > 224); Inception-I3D: DeepMind's centre 224
    crop, a plain head. No config carries a head flag of its own: eval decides from the crops alone."""
    assert 'i3d_inception' in ENTRIES and len(ENTRIES) > 1
    for name in ENTRIES:
        cfg = zoo.get_pretrained_cfg(name)
        expected = name != 'i3d_inception'
        assert fully_conv_head(cfg, cfg.test_crop_size) is expected, name
        assert not fully_conv_head(cfg, cfg.crop_size), name
    assert 'fully_conv_test' not in {f.name for f in dataclasses.fields(zoo.VideoPretrainedCfg)}


def test_every_entry_declares_the_bilinear_resize_eval_decodes_with():
    assert {zoo.get_pretrained_cfg(name).interpolation for name in ENTRIES} == {'bilinear'}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    h, w = scaled_size(60, 80, 48)
    resized = resize_short_side(image, 48)
    assert np.array_equal(resized, np.asarray(image.resize((w, h), Image.BILINEAR)))
    assert not np.array_equal(resized, np.asarray(image.resize((w, h), Image.BICUBIC)))
