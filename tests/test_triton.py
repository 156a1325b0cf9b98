"""The Triton kernels of ``fused`` under the interpreter, and their launches recorded on meta tensors.

Interpreted: both channel layouts (resident and looped, C = 150 and 256 included) against the
float64 reference with NaN-poisoned outputs, float64 computed in float64, no voxels with the
fixed-order reduction; Dice + cross-entropy / focal (the per-pixel term) against its dense float64
formulation in both layouts and every dtype. Recorded (``benchmarks.gpu_compile``): the grids of large inputs stay in
CUDA's limits, and the launchers read no tensor value (a meta tensor has none to read). The
compiled side — registers, spills, int32 index arithmetic — is ``make gpu-compile``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU in CI: the Triton kernels run interpreted

import pytest
import torch

import dice_impls
from benchmarks import gpu_compile
from dice_impls import DiceSpec, loss_from_statistics
from dice_impls.fused import interface as fused_interface
from dice_impls.fused import compound_loss, fused_statistics, triton_kernels
from dice_impls.fused.autograd import KernelParams
from helpers import (COMPOUND_CASES, DTYPE_TOLERANCES, compound_kwargs, dense_compound, error, grad_error,
                     loss_and_grad, random_inputs)

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy on masked -inf lanes


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer a kernel must overwrite starts as NaN."""
    monkeypatch.setattr(fused_interface, "output_buffer",
                        lambda shape, device, dtype: torch.full(shape, float("nan"), device=device, dtype=dtype))


def against_reference(shape, channels, spec, *, dtype=torch.float32, deterministic=True, seed=0):
    """(loss error, gradient error) of the Triton path against the float64 reference.

    The gradient error is the relative norm for float32/float64; half gradients hold values near
    their subnormal range at large C and are judged by ``helpers.error`` with that floor."""
    logits, labels = random_inputs(shape, channels, dtype=dtype, seed=seed, ignore_index=spec.ignore_index,
                                   probabilities=spec.activation == "none")
    weight = None
    results = []
    for impl in ("triton", "reference"):
        x = (logits.double() if impl == "reference" else logits).clone().requires_grad_()
        if impl == "reference":
            loss = dice_impls.dice_loss(x, labels, spec, impl="reference")
        else:
            stats = fused_statistics(x, labels, spec, backend="triton", deterministic=deterministic)
            loss = loss_from_statistics(stats, spec)
        if weight is None:
            weight = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        (loss.double() * weight).sum().backward()
        results.append((loss.detach().double(), x.grad.double()))
    (loss, grad), (expected_loss, expected_grad) = results
    assert torch.isfinite(grad).all()
    if dtype in (torch.float16, torch.bfloat16):
        return error(loss, expected_loss, 1.0), error(grad, expected_grad, torch.finfo(dtype).tiny)
    return error(loss, expected_loss, 1.0), float((grad - expected_grad).norm() / expected_grad.norm())


SPECS = [
    DiceSpec(ignore_index=255, squared=True),
    DiceSpec(ignore_index=0, batch=True),
    DiceSpec(activation="sigmoid", squared=True, ignore_index=255),
    DiceSpec(activation="none", log_loss=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("channels", [3, 32, 40, 150, 256])
def test_layouts_match_reference(channels, spec):
    shape = (2, 5, 3) if channels < 100 else (1, 3, 5)
    for deterministic in (True, False):
        loss_error, grad_error = against_reference(shape, channels, spec, deterministic=deterministic, seed=channels)
        assert loss_error <= 1e-5 and grad_error <= 1e-5


def test_looped_layout_walks_tiles_and_programs():
    # 40 channels: 5 blocks of 8 x 128 pixels; 600 pixels are 5 tiles, over 3 programs of 2 tiles.
    logits, labels = random_inputs((2, 600), 40, seed=3, ignore_index=7)
    params = KernelParams.from_spec(DiceSpec(ignore_index=7))
    expected = torch.stack(dice_impls.dice_statistics(logits, labels, impl="reference", ignore_index=7))
    x, y = logits.reshape(2, 40, -1), labels.reshape(2, -1)
    assert triton_kernels.layout(40) == triton_kernels.Layout(8, 128, 5)
    for deterministic in (True, False):
        stats, probe = triton_kernels.triton_statistics(x, y, params, deterministic, tiles_per_program=2)
        assert torch.isfinite(probe) and torch.allclose(stats, expected, rtol=1e-6, atol=1e-6)
    loss_error, grad_error = against_reference((2, 600), 40, DiceSpec(ignore_index=7, squared=True))
    assert loss_error <= 1e-5 and grad_error <= 1e-5


def compound_errors(case, channels, spec, dtype=torch.float32, deterministic=True, shape=(2, 11, 13)):
    """(loss error, gradient error) of the Triton Dice + pixel term against the dense float64 one."""
    kwargs = compound_kwargs(case, channels)
    logits, labels = random_inputs(shape, channels, dtype=dtype, seed=case, ignore_index=spec.ignore_index,
                                   empty_classes=(1,))
    loss, grad = loss_and_grad(lambda x: compound_loss(x, labels, spec, backend="triton", deterministic=deterministic,
                                                       **kwargs), logits)
    expected, expected_grad = loss_and_grad(lambda x: dense_compound(x, labels, spec, **kwargs), logits.double())
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    return error(loss, expected, 1.0), grad_error(grad, expected_grad)


@pytest.mark.parametrize("channels", [4, 40], ids=["resident", "looped"])
@pytest.mark.parametrize("case", range(len(COMPOUND_CASES)))
def test_compound_matches_dense(case, channels):
    spec = DiceSpec(ignore_index=255, batch=True, squared=True) if case % 2 else DiceSpec()
    loss_error, grad_error_ = compound_errors(case, channels, spec, deterministic=case != 3)
    loss_tol, grad_tol = DTYPE_TOLERANCES[torch.float32]
    assert loss_error <= loss_tol and grad_error_ <= grad_tol


@pytest.mark.parametrize("case", [3, 5], ids=["weighted-smoothed-ce", "focal-alpha"])
def test_compound_looped_layout_over_several_programs(case):
    # 63 channels: 7 full blocks of 8 and one of 7; 407 pixels are 7 tiles of 64, one program each.
    loss_error, grad_error_ = compound_errors(case, 63, DiceSpec(ignore_index=255), shape=(2, 37, 11))
    loss_tol, grad_tol = DTYPE_TOLERANCES[torch.float32]
    assert loss_error <= loss_tol and grad_error_ <= grad_tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", [3, 5], ids=["weighted-smoothed-ce", "focal-alpha"])
def test_compound_dtypes(case, dtype):
    loss_error, grad_error_ = compound_errors(case, 4, DiceSpec(ignore_index=255), dtype=dtype)
    loss_tol, grad_tol = DTYPE_TOLERANCES[dtype]
    assert loss_error <= loss_tol and grad_error_ <= grad_tol


@pytest.mark.parametrize("channels", [1, 4, 150])
def test_float64_is_computed_in_float64(channels):
    # float32 arithmetic would leave errors near 1e-7; float64 lands near 1e-15.
    spec = DiceSpec(activation="sigmoid" if channels == 1 else "softmax", squared=True, ignore_index=255)
    loss_error, grad_error = against_reference((2, 7, 5), channels, spec, dtype=torch.float64, seed=channels)
    assert loss_error <= 1e-12 and grad_error <= 1e-12


def test_half_dtypes_match_reference():
    for dtype in (torch.float16, torch.bfloat16):
        loss_error, grad_error = against_reference((2, 9, 4), 150, DiceSpec(ignore_index=255), dtype=dtype)
        assert loss_error <= 1e-3 and grad_error <= torch.finfo(dtype).eps


@pytest.mark.parametrize("channels", [3, 150])
def test_no_voxels_with_fixed_order_reduction(channels):
    # The partials of a (2, C, 0, 4) input must be written (as zeros) by the kernel, not left as NaN.
    logits, labels = torch.randn(2, channels, 0, 4), torch.zeros(2, 0, 4, dtype=torch.int64)
    for deterministic in (True, False):
        stats = fused_statistics(logits, labels, DiceSpec(batch=True), backend="triton", deterministic=deterministic)
        for s in stats:
            assert s.shape == (2, channels) and torch.equal(s, torch.zeros_like(s))


def test_padding_lanes():
    for channels in range(1, 1025):
        shape = triton_kernels.layout(channels)
        tile = triton_kernels.TILE_ELEMENTS if shape.resident else triton_kernels.LOOPED_TILE_ELEMENTS
        assert shape.block_c * shape.block_v == tile
        padded = shape.block_c * shape.channel_blocks
        assert padded >= channels and (shape.resident or padded - channels < 8)
        wide = triton_kernels.layout(channels, float64=True)
        assert wide.block_c * wide.block_v * 2 == tile and wide.channel_blocks == shape.channel_blocks
    assert triton_kernels.layout(150).block_c * triton_kernels.layout(150).channel_blocks == 152


@pytest.mark.parametrize("n,c,v", gpu_compile.LIMIT_SHAPES)
def test_large_launches_fit_cuda_grid_limits(n, c, v):
    # e.g. 512^3 at C = 4 used to launch the gradient on a (1, 262144) grid (y > 65535).
    launches = gpu_compile.launches_of(gpu_compile.BASE._replace(n=n, c=c, v=v))
    assert {launch.name for launch in launches} == {"_statistics_kernel", "_gradient_kernel"}
    for launch in launches:
        assert gpu_compile.grid_violations(launch.grid) == [], (launch.name, launch.grid)
    gradient = next(launch for launch in launches if launch.name == "_gradient_kernel")
    block_v = triton_kernels.layout(c).block_v
    programs, tiles_per_program = gradient.args[11], gradient.args[12]  # after 8 pointers, V, C, ignore_index
    assert gradient.grid == (n * programs,) and programs * tiles_per_program * block_v >= v


def test_grid_violations_names_the_problem():
    assert gpu_compile.grid_violations((1, 262144)) == ["grid y = 262144 > 65535"]
    assert gpu_compile.grid_violations((2**31,)) == ["grid x = 2147483648 > 2^31 - 1"]
    assert gpu_compile.grid_violations((4, 1, 1)) == []


def test_launchers_read_no_tensor_values():
    # Meta tensors have no data: an .item(), a bool(tensor) or a host copy would raise here.
    for dtype in (torch.float32, torch.float64):
        for case in (gpu_compile.BASE, gpu_compile.BASE._replace(c=150, deterministic=False)):
            assert len(gpu_compile.launches_of(case._replace(dtype=dtype))) == 2
