"""Packaging for the video 3D ConvNet zoo: zoo/ (models), converters/ (checkpoints), eval/ (benchmarks)."""
from setuptools import find_packages, setup

setup(
    name='video-zoo',
    version='0.1.0',
    description='Caffe2 video-nonlocal-net I3D/C2D ResNet-50 (and relatives) in PyTorch, timm-style',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0 (code); checkpoints keep their own licences, see MODEL_CARD.md',
    python_requires='>=3.9',
    packages=find_packages(include=['zoo', 'zoo.*', 'converters', 'converters.*', 'eval', 'eval.*']),
    package_data={'zoo': ['data/*.txt']},
    install_requires=[
        'torch>=2.1',
        'torchvision',      # timm imports it
        'timm>=0.9',
        'fvcore',
        'einops',
        'numpy',
        'requests',
        'tqdm',
        'safetensors',
        'av>=11',           # PyAV: video decoding for eval
        'pillow',
        'simplejpeg',       # exact JPEG decoding, ~2.4x PIL here; PIL is the fallback
        'scipy',            # scipy.linalg.sqrtm: the StyleGAN-V FVD protocols' square root, by definition
        # the pinned ffmpeg (7.0.2-static) of the JPEG round trip of eval.features' i3d-r50-10crop preset: its
        # JPEG bytes depend on the build, so the version is pinned (eval.data.jpeg_roundtrip)
        'imageio-ffmpeg==0.6.0',
    ],
    extras_require={
        'hdf5': ['h5py'],   # eval.features --hdf5
        'torchmetrics': ['torchmetrics'],     # eval.fvd.FVDMetric
        'test': ['pytest>=7', 'h5py', 'torchmetrics'],
    },
)
