"""CPU kernels of ``fused``: the compiled C++ extension (the default) and a chunked torch formulation.

The C++ operators (``fused_dice.cpp``, hot loops in ``fused_kernels.h``) are compiled when the
package is built (``setup.py``: ``dice_impls/fused/_C*.so``, a portable baseline plus AVX2 and
AVX-512 variants picked at run time). Where no built library loads (a source checkout used
without ``pip install``, or a torch other than the one the wheel was built against), they are
compiled once with ``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR`` under a name
keyed on the sources, the flags, torch and the machine type, and the build is logged. When that
fails too, the chunked formulation below does the work (one warning); it walks the voxels in
slices so its temporaries stay small.
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
from torch import Tensor

from . import autograd
from .build_config import CFLAGS, DIGEST_MARKER, LDFLAGS, SOURCES, digest_define, source_digest
from .autograd import Backend, KernelParams

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# Temporaries of the chunked formulation: about this many elements of (N, C, chunk) at a time.
CHUNK_ELEMENTS = 1 << 18


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


def _chunks(logits: Tensor):
    n, c, v = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(1, n * c))
    return (slice(start, start + step) for start in range(0, v, step))


def _activated(x: Tensor, labels: Tensor, params: KernelParams):
    """``(p, g, keep)`` of one slice in the compute dtype; ``g`` is the slice's one-hot."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    p = torch.softmax(x, 1) if params.activation == 0 else torch.sigmoid(x) if params.activation == 1 else x
    channels = x.shape[1]
    classes = torch.arange(channels, device=x.device).view(1, channels, 1) + (1 if channels == 1 else 0)
    keep = torch.ones_like(labels, dtype=dtype) if params.ignore_index is None else (labels != params.ignore_index).to(dtype)
    keep = keep.unsqueeze(1)
    g = (labels.unsqueeze(1) == classes).to(dtype) * keep
    return p, g, keep


def slice_statistics(x: Tensor, labels: Tensor, params: KernelParams):
    """``(stats (3, N, C) float64, probe)`` of a slice of voxels, in plain torch."""
    p, g, keep = _activated(x, labels, params)
    pk = p * p if params.squared else p
    stats = torch.stack([(p * g).sum(-1), (pk * keep).sum(-1), g.sum(-1)]).double()
    return stats, x.sum(dtype=torch.float32).double()


def slice_gradient(x: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams) -> Tensor:
    """``dL/dx`` of a slice of voxels (compute dtype), in plain torch."""
    p, g, keep = _activated(x, labels, params)
    q = a.to(p.dtype).unsqueeze(-1) * (2 * p if params.squared else 1) + b.to(p.dtype).unsqueeze(-1) * g
    if params.activation == 0:
        d = p * (q - (p * q).sum(1, keepdim=True))
    elif params.activation == 1:
        d = p * (1 - p) * q
    else:
        d = q.expand_as(p)
    return d * keep


def chunked_statistics(logits: Tensor, labels: Tensor, params: KernelParams, deterministic: bool):
    n, c, _ = logits.shape
    stats = torch.zeros(3, n, c, dtype=torch.float64, device=logits.device)
    probe = torch.zeros((), dtype=torch.float64, device=logits.device)
    for part in _chunks(logits):
        part_stats, part_probe = slice_statistics(logits[:, :, part], labels[:, part], params)
        stats += part_stats
        probe += part_probe
    return stats, probe


def chunked_gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams) -> Tensor:
    grad = autograd.output_buffer(logits.shape, logits.device, logits.dtype)
    for part in _chunks(logits):
        grad[:, :, part] = slice_gradient(logits[:, :, part], labels[:, part], a, b, params)
    return grad


CHUNKED = Backend(chunked_statistics, chunked_gradient)
