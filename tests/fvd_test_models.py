"""A tiny registered embedding network for the FVD job's tests, and eval.fvd run with it registered.

    python -m tests.fvd_test_models --model tiny_fvd_net --random-weights --real DIR --fake DIR --out OUT ...
    torchrun --standalone --nproc_per_node 2 -m tests.fvd_test_models ...

``tiny_fvd_net`` takes the protocol's (N, 3, T, 224, 224) input like I3D and returns a 16-d embedding in
milliseconds (a 56x56 average pool to a 4x4 map, a temporal convolution, a linear layer on the map, the mean
over time), so the job's
file, store, resume and distributed paths are tested at the real input size without I3D's cost. With
FVD_TEST_SECONDS_PER_BATCH set it sleeps that long per forward pass, so a test can kill a run mid-way.
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # run as -m tests.fvd_test_models too
from eval_test_models import cli_env  # noqa: E402
import zoo  # noqa: E402
from zoo._builder import build_model_with_cfg  # noqa: E402
from zoo._registry import register_model  # noqa: E402

EMBEDDING = 16
default_cfgs = {'tiny_fvd_net': zoo.VideoPretrainedCfg(
    num_frames=16, sampling_rate=1, mean=(127.5,) * 3, std=(127.5,) * 3, crop_size=224, test_scale=224,
    test_crop_size=224, test_views=(1, 1), num_classes=EMBEDDING, label_set='test',
    class_names=tuple(f'class{i}' for i in range(EMBEDDING)))}


class TinyFVDNet(nn.Module):
    def __init__(self, num_classes: int = EMBEDDING):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, (3, 1, 1), padding=(1, 0, 0))
        self.fc = nn.Linear(64, num_classes)
        self.num_classes = num_classes
        self.seconds_per_batch = float(os.environ.get('FVD_TEST_SECONDS_PER_BATCH', '0'))

    def forward_features(self, x):
        if self.seconds_per_batch:
            import time
            time.sleep(self.seconds_per_batch)
        return self.conv(F.avg_pool3d(x, (1, 56, 56)))     # (N, 4, T, 4, 4)

    def forward_head(self, x, pre_logits: bool = False):
        x = x.transpose(1, 2).flatten(2)                    # (N, T, 64)
        return x.mean(1) if pre_logits else self.fc(x).mean(1)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model
def tiny_fvd_net(pretrained=False, **kwargs):
    return build_model_with_cfg(TinyFVDNet, 'tiny_fvd_net', pretrained, **kwargs)


def fvd_env(seconds_per_batch: float = 0.0) -> dict:
    return cli_env(seconds_per_batch, delay_variable='FVD_TEST_SECONDS_PER_BATCH')


if __name__ == '__main__':
    from eval.fvd.job import main
    sys.exit(main())
