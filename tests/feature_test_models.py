"""A tiny registered feature model for the feature-extraction tests, and eval.features run with it registered.

    python -m tests.feature_test_models --model tiny_feature_net --random-weights --data DIR --out OUT ...
    torchrun --standalone --nproc_per_node 2 -m tests.feature_test_models ...

``tiny_feature_net`` speaks the zoo protocol (forward_features, forward_head(pre_logits=True)) with two
named stages, so --layer and the fast path have something to work on, at milliseconds per snippet;
``slow_tiny_feature_net`` sleeps FEATURE_TEST_SECONDS_PER_BATCH per forward pass so a test can kill a run
mid-way.
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # run as -m tests.feature_test_models too
import eval_test_models  # noqa: E402
import zoo  # noqa: E402
from eval_test_models import REPO_ROOT, cli_env  # noqa: E402,F401  (REPO_ROOT: the tests import it from here)
from zoo._builder import build_model_with_cfg  # noqa: E402
from zoo._registry import register_model  # noqa: E402

_CFG = zoo.VideoPretrainedCfg(
    num_frames=16, sampling_rate=1, mean=(127.5,) * 3, std=(127.5,) * 3, crop_size=32, test_scale=40,
    test_crop_size=32, test_views=(1, 1), num_classes=10, label_set='test',
    class_names=tuple(f'class{i}' for i in range(10)))
default_cfgs = {'tiny_feature_net': _CFG, 'slow_tiny_feature_net': _CFG}


def _stage(cin, cout):
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU())


class TinyFeatureNet(nn.Module):
    def __init__(self, num_classes: int = 10, seconds_per_batch: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(8)
        self.layer1 = _stage(8, 16)
        self.layer2 = _stage(16, 24)
        self.num_features = 24
        self.fc = nn.Linear(24, num_classes)
        self.seconds_per_batch = seconds_per_batch
        with torch.no_grad():   # non-trivial statistics, so folding BatchNorm changes the weights
            for m in self.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)

    def forward_features(self, x):
        if self.seconds_per_batch:
            import time
            time.sleep(self.seconds_per_batch)
        return self.layer2(self.layer1(self.bn1(self.conv1(x)).relu()))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean(dim=(2, 3, 4))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model
def tiny_feature_net(pretrained=False, **kwargs):
    return build_model_with_cfg(TinyFeatureNet, 'tiny_feature_net', pretrained, **kwargs)


@register_model
def slow_tiny_feature_net(pretrained=False, **kwargs):
    delay = float(os.environ.get('FEATURE_TEST_SECONDS_PER_BATCH', '0.3'))
    return build_model_with_cfg(TinyFeatureNet, 'slow_tiny_feature_net', pretrained, seconds_per_batch=delay,
                                **kwargs)


SMALL = ['--resize', '48x40', '--crop-size', '32']      # frames 48x40 (W x H), crops of 32: cheap


def feature_args(data: str, out: str, *extra: str, model: str = 'tiny_feature_net') -> list:
    return ['--model', model, '--random-weights', '--data', data, '--out', out, '--workers', '0', '--threads', '1',
            '--no-progress', *SMALL, *extra]


def feature_env(seconds_per_batch: float = 0.0) -> dict:
    return cli_env(seconds_per_batch, delay_variable='FEATURE_TEST_SECONDS_PER_BATCH')


def python_command(args: list) -> list:
    return eval_test_models.python_command(args, module='tests.feature_test_models')


def torchrun_command(nproc: int, args: list) -> list:
    return eval_test_models.torchrun_command(nproc, args, module='tests.feature_test_models')


if __name__ == '__main__':
    from eval.features.job import main
    sys.exit(main())
