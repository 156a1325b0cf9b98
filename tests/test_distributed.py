"""Global Dice across processes: 2 and 3 gloo ranks on CPU against one process on the whole batch.

One group of ranks per world size runs every case; each rank writes its losses and gradients
to a file and the test process compares them with ``dice_loss`` on the concatenated batch.
"""

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dice_impls
from dice_impls import DiceSpec, dice_loss
from dice_impls.distributed import global_dice_loss, global_statistics, is_distributed

IMPLS = ["vectorized", "fused"]
# Per-rank image counts: unequal, one rank with none.
SPLITS = {2: [1, 4], 3: [3, 0, 2]}
CASES = {
    "batch-2d": dict(spec=DiceSpec(batch=True), channels=3, spatial=(9, 7)),
    "nnunet-3d": dict(spec=DiceSpec.preset("nnunet"), channels=3, spatial=(5, 6, 4)),
    "batch-ignore-squared": dict(spec=DiceSpec(batch=True, ignore_index=-1, squared=True), channels=4, spatial=(8, 8)),
    "batch-sigmoid-soft": dict(spec=DiceSpec(batch=True, activation="sigmoid"), channels=2, spatial=(8, 6), soft=True),
    "image-mean": dict(spec=DiceSpec(batch=False), channels=3, spatial=(9, 7)),
    "image-sum": dict(spec=DiceSpec(batch=False, reduction="sum"), channels=3, spatial=(9, 7)),
}
DDP_SPEC = DiceSpec(batch=True, include_background=False)
DDP_STEPS, DDP_LR = 2, 0.5
# A rank that cannot reach its peers fails within COLLECTIVE_TIMEOUT instead of gloo's default
# 30 minutes; the group as a whole is killed after GROUP_DEADLINE_S.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
GROUP_DEADLINE_S = 300


def make_inputs(world: int) -> dict:
    """Whole-batch inputs for every case: background-heavy labels, so the ranks' sums differ."""
    gen = torch.Generator().manual_seed(world)
    images = sum(SPLITS[world])
    inputs = {}
    for name, case in CASES.items():
        c, spatial = case["channels"], case["spatial"]
        logits = 2 * torch.randn(images, c, *spatial, generator=gen)
        if case.get("soft"):
            target = torch.rand(images, c, *spatial, generator=gen)
        else:
            target = torch.randint(0, c, (images, *spatial), generator=gen)
            target[torch.rand(target.shape, generator=gen) < 0.6] = 0
            if case["spec"].ignore_index is not None:
                target[torch.rand(target.shape, generator=gen) < 0.2] = case["spec"].ignore_index
        inputs[name] = (logits, target)
    x = torch.randn(images, 1, 12, 10, generator=gen)
    inputs["ddp"] = (x, ((x > 1.0).long() + (x > 2.0).long()))  # 3 classes, rare foreground
    return inputs


def tiny_model() -> torch.nn.Module:
    """The same initial weights on every call, without touching the caller's global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1)
        )


def train(model, x, y, loss_fn):
    """``DDP_STEPS`` SGD steps; returns the gradients of the first step and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=DDP_LR)
    first_grads = None
    for _ in range(DDP_STEPS):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        if first_grads is None:
            first_grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
    return first_grads, [p.detach().clone() for p in model.parameters()]


def rank_slice(world: int, rank: int) -> slice:
    start = sum(SPLITS[world][:rank])
    return slice(start, start + SPLITS[world][rank])


def loss_and_gradient(loss_fn, impl: str, logits, target, spec):
    """``loss_fn(logits, target, spec, impl=impl)`` and its gradient w.r.t. ``logits``."""
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, target, spec, impl=impl)
    loss.backward()
    return loss.detach(), logits.grad


def expected_results(inputs: dict) -> dict:
    """``{(impl, case): (loss, grad)}``, or the reason an implementation refuses (skip) or fails."""
    results = {}
    for impl in IMPLS:
        if impl not in dice_impls.IMPLEMENTATIONS:
            results.update({(impl, case): f"skip: {impl!r} is not registered" for case in CASES})
            continue
        for case in CASES:
            try:
                results[impl, case] = loss_and_gradient(dice_loss, impl, *inputs[case], CASES[case]["spec"])
            except (TypeError, ValueError) as error:  # validation: a documented refusal
                results[impl, case] = f"skip: {impl} refuses {case} in one process: {error}"
            except Exception as error:
                results[impl, case] = f"fail: {impl} fails on {case} in one process: {type(error).__name__}: {error}"
    return results


def _worker(rank: int, world: int, workdir: str, runs: list) -> None:
    torch.set_num_threads(1)
    # Loopback, whatever the machine's hostname resolves to: every rank lives on this machine.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
    )
    try:
        inputs = torch.load(os.path.join(workdir, "inputs.pt"))
        mine = rank_slice(world, rank)
        out = {}
        for impl, case in runs:
            logits, target = inputs[case]
            spec = CASES[case]["spec"]
            out[impl, case] = loss_and_gradient(global_dice_loss, impl, logits[mine], target[mine], spec)
        x, y = inputs["ddp"]
        model = torch.nn.parallel.DistributedDataParallel(tiny_model())
        scale = dist.get_world_size()  # undoes DDP's gradient averaging
        out["ddp"] = train(model, x[mine], y[mine], lambda z, t: scale * global_dice_loss(z, t, DDP_SPEC))
        torch.save(out, os.path.join(workdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, workdir, runs: list) -> None:
    """Runs ``world`` ranks to completion; a rank's exception fails the test, a hang is killed."""
    # forkserver, not fork: pytest-xdist workers run threads, and a child forked from a threaded
    # process can deadlock on a lock some thread held. The server imports torch once for all ranks.
    mp.set_forkserver_preload(["torch", "dice_impls"])
    context = mp.start_processes(
        _worker, args=(world, str(workdir), runs), nprocs=world, start_method="forkserver", join=False
    )
    deadline = time.monotonic() + GROUP_DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
                process.join()
            pytest.fail(f"{world} gloo ranks did not finish within {GROUP_DEADLINE_S} s; killed")


@pytest.fixture(scope="module", params=sorted(SPLITS), ids=lambda w: f"world{w}")
def spawned(request, tmp_path_factory):
    world = request.param
    workdir = tmp_path_factory.mktemp(f"world{world}")
    inputs = make_inputs(world)
    torch.save(inputs, workdir / "inputs.pt")
    expected = expected_results(inputs)
    runs = [key for key, value in expected.items() if not isinstance(value, str)]
    run_ranks(world, workdir, runs)
    ranks = [torch.load(workdir / f"rank{r}.pt") for r in range(world)]
    return world, inputs, expected, ranks


def close(actual, expected, what):
    """Equal to float32 summation-order noise: 1e-6 relative to the largest expected value."""
    scale = max(float(expected.abs().max()), 1e-30) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_global_loss_and_gradients_equal_one_process_on_the_whole_batch(spawned, impl, case):
    world, _, expected, ranks = spawned
    if isinstance(expected[impl, case], str):
        verdict, reason = expected[impl, case].split(": ", 1)
        (pytest.skip if verdict == "skip" else pytest.fail)(reason)
    loss, grad = expected[impl, case]
    for rank, result in enumerate(ranks):
        close(result[impl, case][0], loss, f"{case} loss on rank {rank}/{world}")
        close(result[impl, case][1], grad[rank_slice(world, rank)], f"{case} gradient on rank {rank}/{world}")


def test_ddp_training_with_world_size_scaling_matches_one_process(spawned):
    world, inputs, _, ranks = spawned
    x, y = inputs["ddp"]
    grads, params = train(tiny_model(), x, y, lambda z, t: dice_loss(z, t, DDP_SPEC))
    assert any(float(g.abs().max()) > 1e-4 for g in grads), "the test needs a non-trivial gradient"
    for rank, result in enumerate(ranks):
        rank_grads, rank_params = result["ddp"]
        for i, (actual, expected) in enumerate(zip(rank_grads, grads)):
            close(actual, expected, f"parameter {i} gradient on rank {rank}/{world}")
        for i, (actual, expected) in enumerate(zip(rank_params, params)):
            close(actual, expected, f"parameter {i} after {DDP_STEPS} SGD steps on rank {rank}/{world}")


def test_without_process_group_it_is_the_local_loss():
    assert not dist.is_initialized()
    logits, labels = torch.randn(3, 3, 6, 5), torch.randint(0, 3, (3, 6, 5))
    for spec in (DiceSpec(batch=True), DiceSpec(batch=False), DiceSpec(batch=False, reduction="sum")):
        torch.testing.assert_close(global_dice_loss(logits, labels, spec), dice_loss(logits, labels, spec))
    pooled = global_statistics(dice_impls.dice_statistics(logits, labels))
    assert pooled.intersection.shape == (1, 3)


def test_group_without_process_group_raises():
    with pytest.raises(RuntimeError, match="not initialised"):
        is_distributed(group=object())


def test_world_size_without_process_group_raises(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=4"):
        global_dice_loss(torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4)), batch=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("spec", [DiceSpec(batch=True), DiceSpec(batch=False, reduction="sum")], ids=["batch", "image-sum"])
def test_empty_batch_scores_zero_sums_with_an_empty_gradient(impl, spec):
    if impl not in dice_impls.IMPLEMENTATIONS:
        pytest.skip(f"implementation {impl!r} is not registered")
    logits = torch.randn(0, 3, 5, 4, requires_grad=True)
    loss = global_dice_loss(logits, torch.randint(0, 3, (0, 5, 4)), spec, impl=impl)
    zeros = dice_impls.DiceStatistics(*torch.zeros(3, 1, 3))
    torch.testing.assert_close(loss, dice_impls.loss_from_statistics(zeros, spec))
    loss.backward()
    assert logits.grad.shape == logits.shape


def test_empty_float_target_passes_validation():
    stats = dice_impls.dice_statistics(torch.randn(0, 2, 4, 4), torch.rand(0, 2, 4, 4))
    assert stats.intersection.shape == (0, 2)
