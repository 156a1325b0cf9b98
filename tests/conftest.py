"""Setup shared by every test module."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def fresh_compile_caches(tmp_path_factory):
    """torch.compile's caches (Inductor's FX graph cache, AOTAutograd's) in a folder of this run:
    they key a custom operator by its name, not by its schema or autograd formula, so a cache
    written before an operator of ``dice_fused`` changed would replay the old one."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor-cache"))
    yield
    if previous is None:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


@pytest.fixture
def folded_calls(monkeypatch):
    """The argument tuples of every call of the folded C++ loss operator (what eager mode calls)."""
    calls = []
    original = torch.ops.dice_fused.eager_loss

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(torch.ops.dice_fused, "eager_loss", spy)
    return calls
