import re
from pathlib import Path

import torch
import torch.distributed as dist

import dice_impls
from dice_impls import DiceSpec
from dice_impls.distributed import global_dice_loss

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_implementation_matches_reference_on_default_spec():
    logits = torch.randn(2, 3, 9, 7)
    labels = torch.randint(0, 3, (2, 9, 7))
    expected = dice_impls.dice_loss(logits, labels, impl="reference")
    for name in dice_impls.IMPLEMENTATIONS:
        assert torch.allclose(dice_impls.dice_loss(logits, labels, impl=name).double(), expected, rtol=1e-5)


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_readme_quick_start_runs():
    (code,) = re.findall(r"```python\n(.*?)```", readme_section("Quick start"), re.S)
    namespace = {}
    exec(code, namespace)
    assert torch.isfinite(namespace["loss"]) and namespace["loss"].requires_grad


def readme_ddp_lines() -> str:
    """The README's indented code block under "Distributed training", exactly as written."""
    (block,) = re.findall(r"\n\n((?:    \S.*\n)+)", readme_section("Distributed training"))
    return "\n".join(line[4:] for line in block.splitlines())


def test_readme_ddp_line_runs_without_a_process_group():
    logits, labels = torch.randn(3, 4, 8, 8, requires_grad=True), torch.randint(0, 4, (3, 8, 8))
    assert not dist.is_initialized()
    namespace = dict(torch=torch, global_dice_loss=global_dice_loss, DiceSpec=DiceSpec, logits=logits, labels=labels)
    exec(readme_ddp_lines(), namespace)
    expected = dice_impls.dice_loss(logits, labels, DiceSpec.preset("nnunet"))
    torch.testing.assert_close(namespace["loss"], expected)


def test_readme_ddp_line_scales_by_the_world_size_in_a_process_group(tmp_path):
    logits, labels = torch.randn(3, 4, 8, 8, requires_grad=True), torch.randint(0, 4, (3, 8, 8))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        namespace = dict(torch=torch, global_dice_loss=global_dice_loss, DiceSpec=DiceSpec, logits=logits, labels=labels)
        exec(readme_ddp_lines(), namespace)
        assert namespace["world_size"] == 1
        expected = dice_impls.dice_loss(logits, labels, DiceSpec.preset("nnunet"))
        torch.testing.assert_close(namespace["loss"], expected)
    finally:
        dist.destroy_process_group()
