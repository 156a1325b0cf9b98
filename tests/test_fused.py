"""``fused``: its CPU kernels (C++ and chunked torch) and its Triton kernels (under the interpreter)
against the float64 reference, with poisoned outputs, determinism and refusals.

Errors: loss as in helpers.error; gradient as the relative norm ||g - g_ref|| / ||g_ref|| (issue 3).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU in CI: the Triton kernels run interpreted

import pytest
import torch

import dice_impls
from dice_impls import DiceSpec, loss_from_statistics
from dice_impls.fused import interface as fused_interface
from dice_impls.fused import fused_statistics, ops
from helpers import error, random_inputs

LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
HALF_DTYPES = (torch.bfloat16, torch.float16)

SPECS = [
    DiceSpec(),
    DiceSpec(batch=True),
    DiceSpec(squared=True),
    DiceSpec(squared=True, batch=True, include_background=False),
    DiceSpec(beta=2.0, smooth_nr=0.5, smooth_dr=1.0),
    DiceSpec(ignore_index=255),
    DiceSpec(ignore_index=-100, batch=True, squared=True),
    DiceSpec(ignore_index=0),
    DiceSpec(weight=(0.5, 2.0, 1.0, 3.0), reduction="sum"),
    DiceSpec(reduction="none", log_loss=True),
    DiceSpec(average="micro", weight=(1.0, 0.0, 2.0, 1.0)),
    DiceSpec(absent_classes="zero"),
    DiceSpec(absent_classes="exclude", include_background=False),
    DiceSpec(out_of_range="zero_target", ignore_index=9),
    DiceSpec.preset("nnunet"),
    DiceSpec.preset("smp"),
    DiceSpec.preset("kornia"),
    DiceSpec(activation="sigmoid"),
    DiceSpec(activation="sigmoid", squared=True, ignore_index=255, batch=True),
    DiceSpec(activation="none"),
    DiceSpec(activation="none", squared=True, log_loss=True),
]


def loss_and_grad(logits, target, spec, backend=None, grad_seed=1):
    """Loss of ``fused`` and its gradient, under a random (non-unit) weighting of the loss."""
    x = logits.detach().clone().requires_grad_()
    if backend is None:
        loss = dice_impls.dice_loss(x, target, spec, impl="fused")
    else:
        loss = loss_from_statistics(fused_statistics(x, target, spec, backend=backend), spec)
    weight = torch.randn(loss.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    (loss.double() * weight).sum().backward()
    return loss.detach(), x.grad, weight


def reference_loss_and_grad(logits, target, spec, weight):
    x = logits.detach().double().requires_grad_()
    loss = dice_impls.dice_loss(x, target, spec, impl="reference")
    (loss * weight).sum().backward()
    return loss.detach(), x.grad


def grad_error(grad, expected):
    return float((grad.double() - expected).norm() / expected.norm().clamp_min(1e-300))


def check_against_reference(logits, target, spec, backend=None, loss_tol=1e-5, grad_tol=1e-5):
    loss, grad, weight = loss_and_grad(logits, target, spec, backend)
    expected_loss, expected_grad = reference_loss_and_grad(logits, target, spec, weight)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert error(loss, expected_loss, 1.0) <= loss_tol, (spec, float(loss.sum()), float(expected_loss.sum()))
    assert grad_error(grad, expected_grad) <= grad_tol, (spec, grad_error(grad, expected_grad))


def spec_inputs(spec, shape=(3, 19, 23), channels=4, seed=0, **kwargs):
    return random_inputs(
        shape, channels, seed=seed, ignore_index=spec.ignore_index,
        out_of_range_fraction=0.1 if spec.out_of_range == "zero_target" else 0.0,
        empty_classes=(2,) if spec.absent_classes != "include" else (),
        probabilities=spec.activation == "none", **kwargs,
    )


# --- the CPU path (C++ kernel) ------------------------------------------------------------------

def test_registered_with_its_own_finite_check():
    impl = dice_impls.IMPLEMENTATIONS["fused"]
    assert impl.checks_finite and impl.statistics is fused_statistics


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_cpu_matches_reference_across_specs(spec):
    check_against_reference(*spec_inputs(spec), spec)


@pytest.mark.parametrize("backend", ["cpp", "chunked"])
@pytest.mark.parametrize("shape", [(2, 17), (2, 5, 7, 9), (1, 130, 131), (2, 3, 4, 5, 6)], ids=str)
def test_cpu_backends_any_spatial_rank_and_task_boundaries(backend, shape):
    # (1, 130, 131) spans two 16384-pixel tasks of the C++ kernel and ends mid-block.
    for spec in (DiceSpec(), DiceSpec(activation="sigmoid", squared=True, ignore_index=3)):
        check_against_reference(*random_inputs(shape, 3, seed=len(shape), ignore_index=spec.ignore_index), spec,
                                backend=backend)


@pytest.mark.parametrize("channels", [17, 40, 300])
def test_many_channels(channels):
    # The C++ kernel shrinks its block of pixels as C grows (256 pixels up to C = 16, 16 at C = 300).
    for spec in (DiceSpec(), DiceSpec(squared=True, ignore_index=5, batch=True)):
        check_against_reference(*random_inputs((1, 130, 131), channels, seed=channels, ignore_index=spec.ignore_index),
                                spec, backend="cpp")


@pytest.mark.parametrize("backend", ["cpp", "chunked"])
def test_binary_single_channel(backend):
    spec = DiceSpec(activation="sigmoid", ignore_index=255)
    logits, labels = random_inputs((3, 11, 13), 1, ignore_index=255, label_dtype=torch.uint8)
    check_against_reference(logits, labels, spec, backend=backend)
    check_against_reference(logits, labels.ne(0) & labels.ne(255), spec.replace(ignore_index=None), backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, *HALF_DTYPES), ids=str)
def test_dtypes(dtype, label_dtype, backend):
    spec = DiceSpec(ignore_index=100)
    logits, labels = random_inputs((2, 5, 29), 3, dtype=dtype, label_dtype=label_dtype, ignore_index=100)
    # Half logits: the reference sees the same rounded logits; the loss must be within 1e-3 and
    # the gradient within the rounding of its own dtype.
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    check_against_reference(logits, labels, spec, backend=backend, loss_tol=tol,
                            grad_tol=max(1e-5, torch.finfo(dtype).eps))


def test_labels_are_read_without_a_copy(monkeypatch):
    seen = []
    operators = ops.backend_operators("cpp", torch.device("cpu"))

    def spy(logits, labels, *args):
        seen.append(labels)
        return operators.statistics(logits, labels, *args)

    monkeypatch.setattr(ops, "backend_operators", lambda name, device: operators._replace(statistics=spy))
    for label_dtype in LABEL_DTYPES:
        logits, labels = random_inputs((2, 6, 5), 3, label_dtype=label_dtype)
        fused_statistics(logits, labels, DiceSpec())
        assert seen[-1].dtype == label_dtype and seen[-1].data_ptr() == labels.data_ptr()


@pytest.mark.parametrize("backend", ["cpp", "chunked"])
def test_non_contiguous_inputs(backend):
    logits, labels = random_inputs((2, 12, 10), 3, seed=4)
    channels_last = logits.to(memory_format=torch.channels_last)
    transposed_labels = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert not channels_last.is_contiguous() and not transposed_labels.is_contiguous()
    check_against_reference(channels_last, transposed_labels, DiceSpec(squared=True), backend=backend)


@pytest.mark.parametrize("spec", [DiceSpec(), DiceSpec(squared=True, ignore_index=2, batch=True),
                                  DiceSpec(activation="sigmoid", beta=0.5), DiceSpec(activation="none", log_loss=True)],
                         ids=str)
def test_gradcheck_float64(spec):
    logits, labels = random_inputs((2, 3, 5), 3, dtype=torch.float64, seed=7, ignore_index=spec.ignore_index,
                                   probabilities=spec.activation == "none")
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: loss_from_statistics(fused_statistics(t, labels, spec, backend="cpp"), spec), (x,)
    )


def test_cpu_accuracy_at_4m_voxels():
    # Long sums: a plain float32 running sum drifts at this size; blocked accumulation must not.
    logits, labels = random_inputs((1, 2048, 2048), 2, seed=11)
    check_against_reference(logits, labels, DiceSpec(batch=True))


@pytest.mark.parametrize("backend", [None, "cpp"], ids=["folded", "cpp"])
@pytest.mark.parametrize("dtype", (torch.float32, *HALF_DTYPES), ids=str)
@pytest.mark.parametrize("pattern", ["offset+75", "offset+120", "offset-60", "offset-200", "some-pixels"])
def test_softmax_without_the_max_pass_falls_back_where_exp_leaves_its_range(pattern, dtype, backend):
    # The C++ softmax first skips the max pass and keeps a block only when every pixel's sum of
    # exp(x) lies in [2^-60, 2^100]: logits offset by +120 or -200 (every block), +75 (sums above
    # 2^100) or -60 (sums below 2^-60), or a few pixels far out in blocks of ordinary ones, must
    # give the reference's loss and gradient either way.
    spec = DiceSpec(ignore_index=9)
    logits, labels = random_inputs((2, 33, 41), 4, dtype=torch.float64, ignore_index=9, seed=5)
    if pattern == "some-pixels":
        gen = torch.Generator().manual_seed(6)
        pick = torch.rand(labels.shape, generator=gen)
        logits = logits + torch.where(pick < 0.01, 200.0, torch.where(pick > 0.99, -100.0, 0.0)).unsqueeze(1)
        logits[:, 1] = torch.where(pick < 0.005, logits[:, 1] - 400.0, logits[:, 1])
    else:
        logits = logits + float(pattern.removeprefix("offset"))
    logits = logits.to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    check_against_reference(logits, labels, spec, backend=backend, loss_tol=tol,
                            grad_tol=max(1e-5, torch.finfo(dtype).eps))


@pytest.mark.parametrize("backend", ["cpp", "chunked", "triton"])
@pytest.mark.parametrize("shape", [(2, 0, 4), (0, 5, 4)], ids=["no-voxels", "no-images"])
def test_empty_inputs(backend, shape):
    logits, labels = torch.randn(shape[0], 3, *shape[1:]), torch.zeros(shape, dtype=torch.int64)
    check_against_reference(logits, labels, DiceSpec(batch=True), backend=backend)


@pytest.mark.parametrize("backend", [None, "cpp", "chunked", "triton"], ids=["folded", "cpp", "chunked", "triton"])
def test_label_map_with_channel_axis_equals_squeezed(backend):
    """A label map (N, 1, *spatial) reaches the kernels as it is (they read labels by pixel count):
    the same losses, gradients and refusals as (N, *spatial)."""
    spec = DiceSpec(ignore_index=255, reduction="none")
    logits, labels = random_inputs((2, 3, 5, 7), 3, ignore_index=255, seed=12)
    for got, expected in zip(loss_and_grad(logits, labels.unsqueeze(1), spec, backend),
                             loss_and_grad(logits, labels, spec, backend)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    bad = labels.clone()
    bad[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"labels out of range: found \[7\]"):
        dice_impls.dice_loss(logits, bad.unsqueeze(1), spec, impl="fused")


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_compound_label_map_with_channel_axis_equals_squeezed(backend):
    from dice_impls.fused import compound_loss

    logits, labels = random_inputs((2, 3, 5, 7), 3, seed=13)
    results = []
    for target in (labels.unsqueeze(1), labels):
        x = logits.clone().requires_grad_()
        loss = compound_loss(x, target, DiceSpec(), lambda_dice=1.0, lambda_pixel=0.5, class_weight=[1.0, 2.0, 0.5],
                             backend=backend)
        loss.backward()
        results.append((loss.detach(), x.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# --- poisoning and determinism ------------------------------------------------------------------

@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer a kernel must overwrite starts as NaN (the C++ kernels allocate their own:
    DICE_FUSED_POISON=1 makes them fill it with NaN first)."""
    monkeypatch.setattr(fused_interface, "output_buffer",
                        lambda shape, device, dtype: torch.full(shape, float("nan"), device=device, dtype=dtype))
    monkeypatch.setenv("DICE_FUSED_POISON", "1")


@pytest.mark.parametrize("backend", ["cpp", "chunked", "triton"])
def test_outputs_poisoned_before_kernels_write_them(poisoned, backend):
    for spec in (DiceSpec(ignore_index=1), DiceSpec(activation="sigmoid")):
        check_against_reference(*random_inputs((2, 7, 45), 3, ignore_index=spec.ignore_index), spec, backend=backend)


def test_cpu_is_bitwise_deterministic():
    logits, labels = random_inputs((2, 150, 150), 5, seed=3)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (2, 2, 1):  # a different thread count must not change the result either
            torch.set_num_threads(threads)
            runs.append(loss_and_grad(logits, labels, DiceSpec(), backend="cpp"))
    finally:
        torch.set_num_threads(before)
    for loss, grad, _ in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])


# --- the Triton kernels, interpreted on CPU tensors ---------------------------------------------

def triton_cases():
    from dice_impls.fused import triton_kernels

    block_v = triton_kernels.layout(4).block_v
    return [
        ((2, 13, 7), 4),  # odd sizes
        ((1, block_v), 4),  # exactly one tile
        ((2, block_v + 1), 4),  # one pixel into the next tile
        ((2, 3, 5, 7), 3),  # 3-D
        ((3, 9, 11), 1),  # binary, one channel
        ((1, 6, 5), 33),  # channels above a power of two
    ]


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("case", range(6))
def test_triton_matches_reference(case, deterministic):
    shape, channels = triton_cases()[case]
    for spec in (DiceSpec(ignore_index=255, squared=case % 2 == 0),
                 DiceSpec(activation="sigmoid" if case % 2 else "none", batch=True, ignore_index=255)):
        if channels == 1:
            spec = spec.replace(activation="sigmoid")
        logits, labels = random_inputs(shape, channels, seed=case, ignore_index=255, label_dtype=torch.uint8,
                                       probabilities=spec.activation == "none")
        x = logits.clone().requires_grad_()
        loss = loss_from_statistics(
            fused_statistics(x, labels, spec, backend="triton", deterministic=deterministic), spec
        )
        weight = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (loss.double() * weight).sum().backward()
        expected_loss, expected_grad = reference_loss_and_grad(logits, labels, spec, weight)
        assert error(loss, expected_loss, 1.0) <= 1e-5
        assert grad_error(x.grad, expected_grad) <= 1e-5


def test_triton_program_loops_and_deterministic_reduction(poisoned):
    from dice_impls.fused import triton_kernels
    from dice_impls.fused.autograd import KernelParams

    logits, labels = random_inputs((2, 9, 101), 4, seed=5, ignore_index=7)
    x, y = logits.reshape(2, 4, -1), labels.reshape(2, -1)
    params = KernelParams.from_spec(DiceSpec(ignore_index=7))
    expected, _ = dice_impls.dice_statistics(logits, labels, impl="reference", ignore_index=7), None
    runs = [triton_kernels.triton_statistics(x, y, params, True, tiles_per_program=tiles) for tiles in (1, 2, 3, 3)]
    for stats, probe in runs:
        assert torch.isfinite(probe)
        assert torch.allclose(stats, torch.stack(expected), rtol=1e-6, atol=1e-6)
    assert torch.equal(runs[2][0], runs[3][0])  # same launch, bitwise the same
    atomic, _ = triton_kernels.triton_statistics(x, y, params, False, tiles_per_program=2)
    assert torch.allclose(atomic, runs[1][0], rtol=1e-6, atol=1e-6)


def test_deterministic_flag_follows_torch(monkeypatch):
    from dice_impls.fused import triton_kernels

    seen = []
    original = triton_kernels.TRITON.statistics
    monkeypatch.setattr(triton_kernels, "TRITON", triton_kernels.KernelPair(
        lambda *args: seen.append(args[3]) or original(*args), triton_kernels.TRITON.gradient))
    logits, labels = random_inputs((1, 4, 4), 2)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        for flag in (True, False):
            torch.use_deterministic_algorithms(flag)
            fused_statistics(logits, labels, DiceSpec(), backend="triton")
    finally:
        torch.use_deterministic_algorithms(before)
    assert seen == [True, False]


# --- refusals -------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter's numpy on inf
@pytest.mark.parametrize("backend", ["cpp", "chunked", "triton"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_refused(backend, activation, bad):
    logits, labels = random_inputs((2, 5, 6), 3)
    logits[1, 2, 3, 4] = bad
    spec = DiceSpec(activation=activation)
    with pytest.raises(ValueError, match=r"NaN or inf .*index \(1, 2, 3, 4\)"):
        impl = dice_impls.IMPLEMENTATIONS["fused"]
        loss_from_statistics(impl.statistics(logits, labels, spec, backend=backend), spec)
    with pytest.raises(ValueError, match="NaN or inf"):
        dice_impls.dice_loss(logits, labels, spec, impl="fused")


def test_float_targets_refused_naming_vectorized():
    logits, target = random_inputs((2, 5, 6), 3, target_kind="soft")
    with pytest.raises(TypeError, match="label map.*vectorized"):
        dice_impls.dice_loss(logits, target, impl="fused")


def test_unknown_backend_refused():
    logits, labels = random_inputs((2, 5, 6), 3)
    with pytest.raises(ValueError, match="unknown fused backend 'cuda'"):
        fused_statistics(logits, labels, DiceSpec(), backend="cuda")
