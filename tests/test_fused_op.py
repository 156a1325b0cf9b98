"""``fused`` as a PyTorch operator: torch.compile, opcheck, double backward, the folded loss and
the fused compound losses against their dense formulations, the instruction-set variants.

Tolerances: float64 logits 1e-9 (loss) and 1e-8 (gradient, relative norm); float32 1e-5; half
dtypes 1e-3 on the loss and their own epsilon on the gradient (the reference sees the same
rounded logits in float64).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dice_impls
from dice_impls import DiceCELoss, DiceFocalLoss, DiceSpec
from dice_impls.fused import FoldedLossArgs, PixelTerm, compound_loss, fusion, ops
from helpers import (COMPOUND_CASES, DTYPE_TOLERANCES, compound_kwargs, dense_compound, error, grad_error,
                     loss_and_grad, random_inputs)

pytestmark = pytest.mark.skipif(ops.cpp() is None, reason="the C++ extension did not build")

# --- the folded Dice loss ------------------------------------------------------------------------

FOLDED_SPECS = [
    DiceSpec(), DiceSpec(batch=True, squared=True), DiceSpec(include_background=False, ignore_index=255),
    DiceSpec(weight=(0.5, 2.0, 1.0, 3.0), reduction="sum"), DiceSpec(average="micro", weight=(1.0, 0.0, 2.0, 1.0)),
    DiceSpec(log_loss=True, absent_classes="exclude"), DiceSpec(absent_classes="zero", negate=True),
    DiceSpec(beta=2.0, smooth_nr=0.0, smooth_dr=0.0, min_denominator=1e-3), DiceSpec.preset("nnunet"),
    DiceSpec.preset("kornia"), DiceSpec(activation="sigmoid", squared=True), DiceSpec(activation="none", batch=True),
]


@pytest.mark.parametrize("spec", FOLDED_SPECS, ids=str)
def test_folded_loss_matches_reference(spec, monkeypatch):
    monkeypatch.setenv("DICE_FUSED_POISON", "1")  # every gradient element must be written
    assert fusion(torch.zeros(1, 4, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long), spec) == "folded"
    logits, labels = random_inputs((3, 13, 17), 4, dtype=torch.float64, seed=1, ignore_index=spec.ignore_index,
                                   empty_classes=(2,), probabilities=spec.activation == "none")
    loss, grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec, impl="fused"), logits)
    expected, expected_grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec, impl="reference"), logits)
    assert error(loss, expected, 1.0) <= 1e-9
    assert grad_error(grad, expected_grad) <= 1e-8


def test_fusion_refuses_what_the_kernels_do_not_compute():
    logits, labels = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    assert fusion(logits, labels, DiceSpec.preset("monai")) == "folded"
    assert fusion(logits, labels.float(), DiceSpec()) is None  # a float target
    assert fusion(logits[:0], labels[:0], DiceSpec()) is None  # an empty batch
    assert fusion(logits, labels, DiceSpec(), backend="chunked") is None
    assert fusion(logits, labels, DiceSpec(), backend="triton") == "triton"
    cross_entropy = PixelTerm()
    assert fusion(logits, labels, DiceSpec(), cross_entropy) == "folded"
    assert fusion(logits, labels, DiceSpec(reduction="sum"), cross_entropy) is None
    assert fusion(logits, labels, DiceSpec(activation="sigmoid"), cross_entropy) is None
    assert fusion(logits[:, :1], labels, DiceSpec(activation="sigmoid"), cross_entropy) is None
    assert fusion(logits, labels, DiceSpec(), PixelTerm(gamma=2.0, label_smoothing=0.1)) is None


def test_folded_loss_args_match_the_extension():
    from dice_impls.fused import interface

    layout = torch.ops.dice_fused.folded_loss_layout()
    interface.check_layout(layout)
    with pytest.raises(RuntimeError, match="rebuild it"):
        interface.check_layout(list(reversed(layout)))
    args = FoldedLossArgs.from_spec(DiceSpec(weight=(1.0, 2.0, 3.0), reduction="none"), lambda_dice=0.5)
    assert FoldedLossArgs.from_op_args(args.to_op_args()) == args


def test_validation_inside_the_kernel():
    logits, labels = random_inputs((2, 5, 6), 3)
    bad = labels.clone()
    bad[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"labels out of range: found \[7\] but labels must lie in \[0, 2\]"):
        dice_impls.dice_loss(logits, bad, impl="fused")
    with pytest.raises(ValueError, match="other than ignore_index=255"):
        dice_impls.dice_loss(logits, bad, DiceSpec(ignore_index=255), impl="fused")
    # out_of_range="zero_target" accepts them, as every implementation does.
    spec = DiceSpec(out_of_range="zero_target")
    assert torch.allclose(dice_impls.dice_loss(logits, bad, spec, impl="fused"),
                          dice_impls.dice_loss(logits, bad, spec, impl="reference").float(), atol=1e-6)
    nan = logits.clone()
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(1 values; first at index \(0, 1, 2, 3\)\)"):
        dice_impls.dice_loss(nan, labels, impl="fused")
    # validate=False: no value checks (the caller vouches for the data).
    unvalidated = FoldedLossArgs.from_spec(DiceSpec(), validate=False).to_op_args()
    assert torch.isnan(ops.cpp().loss(nan, labels, *unvalidated)[0])


def test_label_codes_of_the_statistics_pass():
    # 0 ignored, 1 no class (out of range, checks off), 2 + class: what loss_backward reads instead
    # of the labels; none with more classes than a byte codes, or one-byte labels (the backward
    # reads the labels then).
    labels = torch.tensor([[0, 2, 255, 7, 1, -3]])
    logits = torch.randn(1, 3, 6)
    config = FoldedLossArgs.from_spec(DiceSpec()).to_op_args()[5:]
    codes = ops.cpp().loss(logits, labels, 0, False, 255, False, False, *config)[2]
    assert codes.dtype == torch.uint8 and codes.tolist() == [[2, 4, 0, 1, 3, 1]]
    assert ops.cpp().loss(torch.randn(1, 254, 6), labels.clamp(0, 2), 0, False, None, True, True, *config)[2].numel() == 0
    uint8_labels = labels.clamp(0, 2).to(torch.uint8)  # as narrow as the codes: read as they are
    assert ops.cpp().loss(logits, uint8_labels, 0, False, None, True, True, *config)[2].numel() == 0


@pytest.mark.parametrize("channels", [253, 254])  # codes, and the labels themselves
def test_folded_loss_at_the_label_code_limit(channels):
    logits, labels = random_inputs((2, 3, 5), channels, dtype=torch.float64, seed=channels, ignore_index=0)
    spec = DiceSpec(ignore_index=0)
    loss, grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec, impl="fused"), logits)
    expected, expected_grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec, impl="reference"), logits)
    assert error(loss, expected, 1.0) <= 1e-12 and grad_error(grad, expected_grad) <= 1e-10


# --- torch.library: opcheck, compile, double backward --------------------------------------------

def _op_cases():
    logits, labels = random_inputs((2, 5, 7), 3, seed=2, ignore_index=9)
    a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    x = logits.requires_grad_()
    pixel = PixelTerm(0.5, 0.0, (1.0, 2.0, 1.0), None, 0.1)
    config = FoldedLossArgs.from_spec(DiceSpec(weight=(1.0, 2.0, 0.5)), pixel=pixel).to_op_args()[5:]
    _, saved, codes = ops.cpp().loss(logits.detach(), labels, 0, False, 9, True, True, *config)
    return [
        (torch.ops.dice_fused.statistics.default, (x, labels, 0, True, 9, True, True)),
        (torch.ops.dice_fused.gradient.default, (logits.detach(), labels, a, b, 1, False, None)),
        (torch.ops.dice_fused.loss.default, (x, labels, 0, False, 9, True, True, *config)),
        (torch.ops.dice_fused.loss_backward.default,
         (torch.tensor(1.5), logits.detach(), labels, saved, codes, 0, False, 9, *config)),
        (torch.ops.dice_fused.eager_loss.default, (x, labels, 0, False, 9, True, True, *config)),
    ]


@pytest.mark.parametrize("case", range(5), ids=["statistics", "gradient", "loss", "loss_backward", "eager_loss"])
def test_opcheck(case):
    op, args = _op_cases()[case]
    torch.library.opcheck(op, args)


def test_eager_loss_under_fake_tensors():
    # Its C++ autograd node calls loss / loss_backward through the dispatcher, so their fake kernels run.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(2, 4, 9, 7, requires_grad=True)
        loss = dice_impls.dice_loss(x, torch.randint(0, 4, (2, 9, 7)), DiceSpec(), impl="fused", validate=False)
        loss.backward()
        assert loss.shape == () and x.grad.shape == x.shape


def test_opcheck_chunked_backend():
    operators = ops.chunked()
    logits, labels = random_inputs((2, 5, 7), 3, seed=2)
    torch.library.opcheck(operators.statistics.default, (logits.requires_grad_(), labels, 0, False, None, True, True))


class SmallNet(torch.nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, channels, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def _training_step(loss_fn, compile_kwargs=None):
    """Loss and parameter gradients of a model + loss step; the forward compiled when asked
    (AOT autograd then compiles its backward)."""
    forward = lambda net, images, labels: loss_fn(net(images), labels)  # noqa: E731
    if compile_kwargs is not None:
        forward = torch.compile(forward, fullgraph=True, **compile_kwargs)

    def step(net, images, labels):
        loss = forward(net, images, labels)
        return loss, torch.autograd.grad(loss, list(net.parameters()))
    return step


@pytest.mark.parametrize("which", ["dice", "dice_ce", "statistics"])
def test_compile_fullgraph_matches_eager(which):
    torch.manual_seed(0)
    net = SmallNet().double()
    images = torch.randn(2, 1, 12, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 12, 10))
    spec = DiceSpec.preset("monai")
    loss_fn = {
        "dice": lambda logits, y: dice_impls.dice_loss(logits, y, spec, impl="fused"),
        "dice_ce": DiceCELoss(impl="fused", spec=spec),
        "statistics": lambda logits, y: dice_impls.loss_from_statistics(
            dice_impls.dice_statistics(logits, y, spec.replace(reduction="none"), impl="fused"), spec).sum(),
    }[which]
    step = _training_step(loss_fn)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = _training_step(loss_fn, dict(backend="aot_eager"))
    for _ in range(2):  # the second call must reuse the first graph
        loss, grads = compiled(net, images, labels)
    expected, expected_grads = step(net, images, labels)
    assert abs(float(loss - expected)) <= 1e-6
    for g, e in zip(grads, expected_grads):
        assert float((g - e).abs().max()) <= 1e-6
    assert counters["stats"]["unique_graphs"] == 1
    # New labels and logits of the same shape: no recompilation.
    compiled(net, torch.randn_like(images), torch.randint(0, 4, (2, 12, 10)))
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_inductor_float32():
    torch.manual_seed(0)
    net = SmallNet()
    images, labels = torch.randn(2, 1, 16, 16), torch.randint(0, 4, (2, 16, 16))
    loss_fn = lambda logits, y: dice_impls.dice_loss(logits, y, DiceSpec.preset("monai"), impl="fused")  # noqa: E731
    step = _training_step(loss_fn)
    torch._dynamo.reset()
    loss, grads = _training_step(loss_fn, {})(net, images, labels)
    expected, expected_grads = step(net, images, labels)
    assert abs(float(loss - expected)) <= 1e-6
    for g, e in zip(grads, expected_grads):
        assert float((g - e).abs().max()) <= 1e-6


@pytest.mark.parametrize("folded", [True, False])
def test_double_backward_refused(folded):
    logits, labels = random_inputs((2, 5, 6), 3, dtype=torch.float64)
    x = logits.requires_grad_()
    spec = DiceSpec() if folded else DiceSpec(reduction="none")
    loss = dice_impls.dice_loss(x, labels, spec, impl="fused").sum()
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        grad.pow(2).sum().backward()
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.gradgradcheck(lambda t: dice_impls.dice_loss(t, labels, spec, impl="fused").sum(), (x,))


def test_gradcheck_of_the_folded_loss():
    logits, labels = random_inputs((2, 4, 5), 3, dtype=torch.float64, ignore_index=2, seed=3)
    assert torch.autograd.gradcheck(
        lambda t: compound_loss(t, labels, DiceSpec(ignore_index=2), lambda_dice=0.7, lambda_pixel=1.3, gamma=2.0,
                                alpha=0.25), (logits.requires_grad_(),))


# --- fused compound losses against their dense formulations ---------------------------------------

@pytest.mark.parametrize("channels", [4, 7])  # 7: a group of four channels and one of three
@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCES), ids=str)
@pytest.mark.parametrize("case", range(len(COMPOUND_CASES)))
@pytest.mark.parametrize("spec", [DiceSpec(), DiceSpec(ignore_index=255, batch=True, squared=True)], ids=str)
def test_compound_matches_dense(spec, case, dtype, channels, monkeypatch):
    monkeypatch.setenv("DICE_FUSED_POISON", "1")
    kwargs = compound_kwargs(case, channels)
    logits, labels = random_inputs((2, 11, 13), channels, dtype=dtype, seed=case, ignore_index=spec.ignore_index,
                                   empty_classes=(1,))
    loss, grad = loss_and_grad(lambda x: compound_loss(x, labels, spec, **kwargs), logits)
    expected, expected_grad = loss_and_grad(lambda x: dense_compound(x, labels, spec, **kwargs), logits.double())
    loss_tol, grad_tol = DTYPE_TOLERANCES[dtype]
    assert grad.dtype == dtype
    assert error(loss, expected, 1.0) <= loss_tol, (float(loss), float(expected))
    assert grad_error(grad, expected_grad) <= grad_tol


def test_cross_entropy_term_is_torch_cross_entropy():
    logits, labels = random_inputs((2, 9, 8), 5, dtype=torch.float64, seed=4, ignore_index=-100)
    weight = (0.5, 1.0, 2.0, 1.5, 0.25)
    got = compound_loss(logits, labels, DiceSpec(ignore_index=-100), lambda_dice=0.0, lambda_pixel=1.0,
                        class_weight=weight, label_smoothing=0.1)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(weight, dtype=torch.float64), ignore_index=-100,
                               label_smoothing=0.1)
    assert abs(float(got - expected)) <= 1e-10


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 0.5])
def test_pixel_term_ignores_uncounted_pixels_with_extreme_logits(gamma):
    # An ignored pixel has no x_y: its nll would be its log-sum-exp, here far below 0 (outside the
    # polynomial exp's domain). It must not reach the class sums (it made them NaN at gamma = 1).
    logits, labels = random_inputs((2, 7, 6), 4, dtype=torch.float64, seed=8)
    labels[0, :2] = 255
    logits[0, :, :2] = -620.0 - math.log(4)
    spec = DiceSpec(ignore_index=255)
    for dtype in (torch.float64, torch.float32):
        x = logits.to(dtype)
        loss, grad = loss_and_grad(lambda t: compound_loss(t, labels, spec, lambda_dice=1.0, lambda_pixel=1.0,
                                                           gamma=gamma), x)
        expected, expected_grad = loss_and_grad(
            lambda t: dense_compound(t, labels, spec, lambda_dice=1.0, lambda_pixel=1.0, gamma=gamma), logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert error(loss, expected, 1.0) <= 1e-5 and grad_error(grad, expected_grad) <= 1e-5


def test_large_logit_gaps_keep_the_exact_nll():
    # x_y far below the max: -log p_y = lse - x_y must not go through exp(x_y - max) (it underflows).
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = 120.0
    labels = torch.ones(1, 1, 4, dtype=torch.long)
    got = compound_loss(logits, labels, DiceSpec(), lambda_dice=0.0, lambda_pixel=1.0)
    assert abs(float(got) - 120.0) <= 1e-4


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("module", ["ce", "focal"])
def test_compound_modules_use_the_fused_op(module, weighted, monkeypatch):
    calls = []
    original = torch.ops.dice_fused.eager_loss  # what eager mode calls (compiled code: loss)

    class Spy:
        def __call__(self, *args):
            calls.append(args)
            return original(*args)

    monkeypatch.setattr(torch.ops.dice_fused, "eager_loss", Spy())
    logits, labels = random_inputs((2, 9, 8), 3, seed=5, ignore_index=255)
    spec = DiceSpec(ignore_index=255, weight=(0.5, 2.0, 1.0) if weighted else None)

    def make(impl):
        if module == "ce":
            return DiceCELoss(impl=impl, spec=spec, weighted_ce=weighted)
        return DiceFocalLoss(impl=impl, spec=spec, alpha=0.3, weighted_focal=weighted)

    loss, reference = make("fused"), make("reference")
    x = logits.clone().requires_grad_()
    got = loss(x, labels)
    got.backward()
    assert calls, "the fused compound path was not taken"
    y = logits.double().requires_grad_()
    expected = reference(y, labels)
    expected.backward()
    assert error(got, expected, 1.0) <= 1e-5
    assert grad_error(x.grad, y.grad) <= 1e-5


def test_sigmoid_compound_falls_back_correctly():
    logits, labels = random_inputs((2, 6, 5), 1, seed=6)
    spec = DiceSpec(activation="sigmoid")
    assert compound_loss(logits, labels, spec, lambda_dice=1.0, lambda_pixel=1.0) is None
    got = DiceCELoss(impl="fused", spec=spec)(logits, labels)
    expected = DiceCELoss(impl="reference", spec=spec)(logits.double(), labels)
    assert error(got, expected, 1.0) <= 1e-5


# --- instruction sets ----------------------------------------------------------------------------

def test_every_instruction_set_gives_the_same_result(tmp_path):
    """Each variant the CPU can run, in a subprocess (the choice is made once at load): Dice + CE
    (the softmax with its max pass) plus Dice (without it where the logits allow; one image's
    logits offset by 90, which sends its blocks back to the max pass)."""
    script = (
        "import torch, dice_impls\n"
        "from dice_impls.fused import ops\n"
        "from helpers import random_inputs\n"
        "x, y = random_inputs((2, 37, 29), 5, dtype=torch.{dtype}, seed=8, ignore_index=255)\n"
        "x[1] += 90\n"
        "x.requires_grad_()\n"
        "spec = dice_impls.DiceSpec(ignore_index=255)\n"
        "loss = (dice_impls.DiceCELoss(impl='fused', ignore_index=255)(x, y)\n"
        "        + dice_impls.dice_loss(x, y, spec, impl='fused'))\n"
        "loss.backward()\n"
        "torch.save((ops.isa(), loss.detach(), x.grad), r'{out}')\n"
    )
    results = {}
    for isa in ("baseline", "avx2", "avx512"):
        for dtype in ("float32", "float16"):
            out = tmp_path / f"{isa}-{dtype}.pt"
            env = dict(os.environ, DICE_FUSED_ISA=isa, PYTHONPATH=os.pathsep.join(sys.path))
            subprocess.run([sys.executable, "-c", script.format(dtype=dtype, out=out)], env=env, check=True,
                           cwd=os.path.dirname(__file__))
            results[isa, dtype] = torch.load(out)
    for (isa, dtype), (chosen, loss, grad) in results.items():
        assert chosen in ("baseline", "avx2", "avx512") and (chosen == isa or isa != "baseline")
        base_loss, base_grad = results["baseline", dtype][1:]
        tol = 1e-6 if dtype == "float32" else 1e-3
        assert abs(float(loss - base_loss)) <= tol
        assert grad_error(grad, base_grad.double()) <= tol
    for dtype in ("float32", "float16"):  # and the baseline against the reference, on the same logits
        x, y = random_inputs((2, 37, 29), 5, dtype=getattr(torch, dtype), seed=8, ignore_index=255)
        x[1] += 90
        x = x.double().requires_grad_()
        loss = (DiceCELoss(impl="reference", ignore_index=255)(x, y)
                + dice_impls.dice_loss(x, y, DiceSpec(ignore_index=255), impl="reference"))
        loss.backward()
        base_loss, base_grad = results["baseline", dtype][1:]
        tol = 1e-5 if dtype == "float32" else 1e-3
        assert abs(float(base_loss) - float(loss)) <= tol * abs(float(loss))
        assert grad_error(base_grad, x.grad) <= max(tol, torch.finfo(getattr(torch, dtype)).eps)


# 4.2 MB (huge-page buffers) and 1.0 MB of float32 (a 4x4x128x128-like gradient): both pooled.
@pytest.mark.parametrize("size", [(1, 512, 520), (1, 256, 256)], ids=["4.2MB", "1.0MB"])
def test_gradient_memory_pool_reuses_a_freed_gradient(size, monkeypatch):
    monkeypatch.setenv("DICE_FUSED_POOL", "1")
    logits, labels = random_inputs(size, 4, seed=9)
    a, b = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    first = torch.ops.dice_fused.gradient(logits, labels, a, b, 0, False, None)
    address, expected = first.data_ptr(), first.clone()
    del first  # back to the pool
    assert torch.ops.dice_fused.pooled_buffers() >= 1
    monkeypatch.setenv("DICE_FUSED_POISON", "1")
    again = torch.ops.dice_fused.gradient(logits, labels, a, b, 0, False, None)
    assert again.data_ptr() == address and torch.equal(again, expected)
    monkeypatch.setenv("DICE_FUSED_POOL", "0")
    assert torch.ops.dice_fused.gradient(logits, labels, a, b, 0, False, None).data_ptr() != address


def test_a_library_older_than_its_sources_is_not_loaded(tmp_path):
    from dice_impls.fused import cpu
    from dice_impls.fused.build_config import DIGEST_MARKER, source_digest

    library = tmp_path / "_C.so"
    library.write_bytes(b"\x7fELF..." + DIGEST_MARKER.encode() + b"0123456789abcdef" + b"...")
    assert cpu.is_stale(str(library))
    library.write_bytes(b"\x7fELF..." + DIGEST_MARKER.encode() + source_digest(cpu.HERE).encode() + b"...")
    assert not cpu.is_stale(str(library))
    assert cpu.jit_name().endswith(source_digest(cpu.HERE))  # the fallback build's name follows the sources


@pytest.mark.parametrize("validate", [True, False])
def test_no_host_reads_in_forward_and_backward(monkeypatch, validate):
    reads = []
    for name in ("__bool__", "item", "__int__", "__float__", "__index__", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k))
    logits, labels = random_inputs((2, 7, 6), 4, seed=10, ignore_index=255)
    x = logits.clone().requires_grad_()
    spec = DiceSpec(ignore_index=255)
    dice_impls.dice_loss(x, labels, spec, impl="fused", validate=validate).backward()
    compound_loss(x, labels, spec, lambda_dice=1.0, lambda_pixel=1.0, validate=validate).backward()
    assert reads == []
