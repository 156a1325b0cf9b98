"""The loader of ``fused``'s compiled C++ extension, the default CPU kernels (``torch.ops.dice_fused``).

The C++ operators (``fused_ops.cpp`` and the files it names, hot loops in ``fused_kernels.h``) are compiled when the
package is built (``setup.py``: ``dice_impls/fused/_C*.so``, a portable baseline plus AVX2 and
AVX-512 variants picked at run time). Where no built library loads (a source checkout used
without ``pip install``, or a torch other than the one the wheel was built against), they are
compiled once with ``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR`` under a name
keyed on the sources, the flags, torch and the machine type, and the build is logged. When that
fails too, the chunked torch formulation (``chunked``) does the work (one warning).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

import torch

from .build_config import CFLAGS, DIGEST_MARKER, LDFLAGS, SOURCES, digest_define, source_digest

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


def built_library():
    """Path of the extension built with the package, or None."""
    spec = importlib.util.find_spec("dice_impls.fused._C")
    return spec.origin if spec is not None and spec.origin else None


def jit_name() -> str:
    """A build name that changes with the sources, the flags, torch and the machine type."""
    torch_version = torch.__version__.replace(".", "_").replace("+", "_")
    return f"dice_fused_{platform.machine()}_torch{torch_version}_{source_digest(HERE)}"


def is_stale(library: str) -> bool:
    """Whether the sources beside a built library changed since it was built (a checkout edited
    after `make`); a wheel without sources is never stale."""
    if not all((HERE / name).exists() for name in SOURCES):
        return False
    data = Path(library).read_bytes()
    start = data.find(DIGEST_MARKER.encode())
    built = data[start + len(DIGEST_MARKER):start + len(DIGEST_MARKER) + 16].decode(errors="replace")
    return start < 0 or built != source_digest(HERE)


def jit_build() -> None:
    from torch.utils.cpp_extension import _get_build_directory, load

    # torch runs `ninja` from PATH; a virtual environment used without activation has it beside python.
    if shutil.which("ninja") is None:
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    name = jit_name()
    log.warning("fused: no built C++ extension found; compiling it into %s (once per machine and torch version)",
                _get_build_directory(name, verbose=False))
    load(name=name, sources=[str(HERE / s) for s in SOURCES], extra_cflags=CFLAGS + [digest_define(HERE)],
         extra_ldflags=LDFLAGS,
         extra_include_paths=[str(HERE)], is_python_module=False, verbose=False)


@functools.lru_cache(maxsize=None)
def load_extension() -> str:
    """Load the C++ operators (torch.ops.dice_fused); returns how: "built" or "jit"."""
    library = built_library()
    if library is not None and is_stale(library):
        log.warning("fused: the built C++ extension %s is older than its sources; not loading it", library)
    elif library is not None:
        try:
            torch.ops.load_library(library)
            return "built"
        except OSError as error:  # e.g. built against another torch
            log.warning("fused: the built C++ extension %s does not load (%s)", library, error)
    jit_build()
    return "jit"


@functools.lru_cache(maxsize=None)
def extension_available() -> bool:
    try:
        load_extension()
    except Exception as error:  # a missing compiler or ninja: fall back, say why once
        warnings.warn(f"fused: the C++ CPU kernel did not build ({error}); using the chunked torch kernel")
        return False
    return True
