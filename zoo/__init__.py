"""A timm-style model zoo of video 3D ConvNets ported from Caffe2 video-nonlocal-net (and relatives).

    import zoo
    net = zoo.create_model('i3d_r50', pretrained=True)
"""
from ._builder import (build_model_with_cfg, create_model, load_state_dict_file, load_weights, read_checkpoint_file,
                       save_checkpoint_file)
from ._pretrained import CAFFE2_NORM, MINUS1_1_NORM, VideoPretrainedCfg, kinetics400_class_names
from ._registry import (get_pretrained_cfg, is_model, list_models, list_modules, list_pretrained_tags, model_entrypoint,
                        register_model)
from .inflate import inflate_conv_weight, inflate_state_dict, InflationReport
from .heap import keep_freed_memory
from .resnet3d import ResNet3D, ResNet3DSpec, NonLocalBlock3d, Bottleneck3d, AffineChannel3d
from . import video_nonlocal_net  # noqa: F401  (registers the entries)
from . import inception_i3d  # noqa: F401
from ._timm_plugin import register_with_timm

register_with_timm()

__version__ = '0.1.0'
