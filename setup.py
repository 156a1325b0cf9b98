"""Builds the C++ CPU kernels of ``fused`` with the package (metadata: pyproject.toml)."""

import importlib.util
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

FUSED = Path("dice_impls") / "fused"
_spec = importlib.util.spec_from_file_location("build_config", FUSED / "build_config.py")
config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config)

setup(
    ext_modules=[
        CppExtension(
            "dice_impls.fused._C",
            sources=[str(FUSED / name) for name in config.SOURCES],
            depends=[str(FUSED / name) for name in config.HEADERS],
            include_dirs=[str(FUSED.resolve())],
            extra_compile_args=config.CFLAGS + [config.digest_define(FUSED)],
            extra_link_args=config.LDFLAGS,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
