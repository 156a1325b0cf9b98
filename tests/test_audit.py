"""dice_impls.audit and `dicebench audit`: the spec identified for random DiceSpecs, hand-written
conventions and the installed peers; every defect id triggered by its own case and by no other."""

from __future__ import annotations

import functools
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dice_impls
from dice_impls import DiceSpec, dice_loss
from dice_impls.audit import DEFECT_IDS, audit
from dice_impls.audit.encoding import find_conventions
from dice_impls.audit.identify import identify_convention
from dice_impls.audit.probes import ProbeFactory
from dice_impls.audit.search import Units, form_of, grid_losses
from dice_impls.audit.target import Target
from dice_impls.score import DiceStatistics, loss_from_statistics

from audit_cases import CLEAN_SPEC, CONVENTIONS, DEFECTS, batch_foreground_dice, clean_dice

ROOT = Path(__file__).resolve().parent.parent
SMOOTHING = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0)


def random_spec(rng: random.Random, channels: int) -> DiceSpec:
    """A DiceSpec with every family field drawn: smoothing from the values found in the wild,
    F-beta and focal parameters from common values and from continuous ranges, Tversky weights
    with alpha + beta = 1 (alpha continuous) or a common pair."""
    f = dict(activation=rng.choice(["sigmoid"] if channels == 1 else ["softmax", "softmax", "sigmoid"]))
    s = rng.choice(SMOOTHING)
    f["smooth_nr"] = s if rng.random() < 0.7 else rng.choice(SMOOTHING)
    f["smooth_dr"] = s if rng.random() < 0.7 else rng.choice(SMOOTHING)
    if f["smooth_dr"] == 0 and rng.random() < 0.5:
        f["min_denominator"] = rng.choice([1e-8, 1e-7, 1e-6])
    f["squared"] = rng.random() < 0.25
    f["batch"] = rng.random() < 0.5
    if channels > 1:
        f["include_background"] = rng.random() < 0.6
    f["reduction"] = rng.choice(["mean"] * 4 + ["sum"])
    family = rng.choice(["dice"] * 3 + ["beta", "tversky", "jaccard", "generalized"])
    if family == "beta":
        f["beta"] = rng.choice([0.5, 2.0, round(rng.uniform(0.3, 3), 2)])
    elif family == "tversky":  # alpha + beta = 1 (Salehi et al.; MONAI's 0.5, 0.5), or a common pair
        alpha = round(rng.uniform(0.1, 0.9), 2)
        f["fp_weight"], f["fn_weight"] = rng.choice([(alpha, round(1 - alpha, 2))] * 3 + [(1.0, 1.0), (0.3, 0.7)])
    elif family == "jaccard":
        f["jaccard"] = True
    if family == "generalized":
        f["generalized"] = rng.choice(["square", "simple", "uniform"])
    else:
        average = rng.choice(["include"] * 3 + ["zero", "exclude", "micro"])
        if average == "micro":
            f["average"] = "micro"
        else:
            f["absent_classes"] = average
    form = rng.choice(["one_minus"] * 4 + ["negate", "log", "focal"])
    if form == "negate":
        f["negate"] = True
    elif form == "log":
        f["log_loss"] = True
    elif form == "focal":
        f["focal_gamma"] = rng.choice([0.75, 2.0, round(rng.uniform(0.5, 3), 2)])
    f["soft_label"] = rng.random() < 0.25
    return DiceSpec(**f)


def one_hot_only(spec: DiceSpec):
    """``dice_loss`` of ``spec`` that refuses label maps: the audit must hand it float one-hot
    (and soft) targets, where ``soft_label`` shows."""
    def loss(logits, target):
        if not target.is_floating_point() or target.shape[1] != logits.shape[1]:
            raise TypeError("this loss takes a float one-hot target (N, C, ...)")
        return dice_loss(logits, target, spec, validate=False)
    return loss


def sample_inputs(channels: int, float_target: bool, count: int = 6):
    """Inputs beside the audit's own, for checking that two specs give the same values."""
    factory = ProbeFactory(channels, "logits", seed=1234)
    return factory.random_inputs(count, float_target)


def equivalent(found: DiceSpec, expected: DiceSpec, channels: int, float_target: bool, kind: str = "logits") -> float:
    """Max difference (relative above 1) between two specs' losses on fresh inputs."""
    worst = 0.0
    for probe in sample_inputs(channels, float_target):
        x = probe.inputs if kind == "logits" else ProbeFactory(channels, kind).activate(probe.inputs)
        a = float(dice_loss(x, probe.labels, found, impl="reference", validate=False))
        b = float(dice_loss(x, probe.labels, expected, impl="reference", validate=False))
        worst = max(worst, abs(a - b) / max(1.0, abs(b)) if math.isfinite(a - b) else math.inf)
    return worst


def auditable(spec: DiceSpec, channels: int) -> bool:
    """A perfect prediction must beat imperfect ones: a loss that cannot tell them apart (e.g. a
    smoothing so large that every input scores the same) is not auditable, and exit 2 is right."""
    factory = ProbeFactory(channels, "logits", seed=7)
    labels = factory.labels(2)
    loss = functools.partial(dice_loss, target=labels, spec=spec, impl="reference", validate=False)
    perfect = float(loss(factory.confident(labels)))
    others = [float(loss(x)) for x in (factory.noisy(labels, 0.0, 2.0), factory.confident(labels, 1.0),
                                        torch.zeros_like(factory.confident(labels)))]
    return math.isfinite(perfect) and all(math.isfinite(v) and perfect < v - 1e-6 for v in others)


def round_trip_cases(chunk: int, size: int):
    rng = random.Random(2026 + chunk)
    cases = []
    while len(cases) < size:
        channels = rng.choice([1, 2, 3, 3, 4])
        spec = random_spec(rng, channels)
        if auditable(spec, channels):
            cases.append((spec, channels, rng.random() < 0.25))
    return cases


def test_grid_losses_equal_loss_from_statistics():
    """The search's vectorised scorer is loss_from_statistics, for every structure and form."""
    rng = random.Random(5)
    generator = torch.Generator().manual_seed(5)
    for _ in range(60):
        channels = rng.choice([1, 2, 3, 4])
        spec = random_spec(rng, channels).replace(soft_label=False, squared=False, activation="softmax")
        stats = DiceStatistics(*(torch.rand(3, channels, generator=generator, dtype=torch.float64) * 5 for _ in range(3)))
        stats = DiceStatistics(stats.intersection.minimum(stats.pred_sum), stats.pred_sum,
                               torch.where(torch.rand(3, channels, generator=generator) < 0.3, 0.0, stats.target_sum))
        expected = loss_from_statistics(stats, spec)
        units_stats = stats.pooled() if spec.batch else stats
        units = Units(units_stats, torch.zeros(units_stats.intersection.shape[0], dtype=torch.int64), 1)
        one = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
        got = grid_losses(units, spec, one(spec.smooth_nr), one(spec.smooth_dr), one(spec.min_denominator),
                          [form_of(spec)])[0, 0, 0]
        assert float(got) == pytest.approx(float(expected), rel=1e-12, abs=1e-12), spec


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [0, 1])
def test_round_trip_recovers_random_specs(chunk):
    """200 random DiceSpecs (two halves run in parallel) through dice_loss: the audit finds each
    spec or one with the same values, in at least 99 % of cases (at most one miss per half)."""
    misses = []
    for spec, channels, float_only in round_trip_cases(chunk, 100):
        fn = one_hot_only(spec) if float_only else functools.partial(dice_loss, spec=spec, validate=False)
        target = Target.build(fn, None, "cpu", "round trip")
        conventions, reason = find_conventions(target, channels)
        assert conventions, (spec, reason)
        found = identify_convention(target, conventions, channels)[2].spec
        gap = math.inf if found is None else equivalent(found, spec, channels, float_only)
        if gap > 1e-4:
            misses.append((spec, found, gap))
    assert len(misses) <= 1, misses


def test_refinement_far_out_in_log_space_does_not_stop_the_audit():
    # On this spec Nelder-Mead's simplex wandered to a smoothing of 10**309 and 10.0 ** v raised
    # OverflowError: the audit of a loss that is a DiceSpec stopped with an error (exit status 2).
    spec = DiceSpec(activation="sigmoid", smooth_nr=0.01, smooth_dr=2.0, squared=True, log_loss=True,
                    generalized="simple")
    report = audit(one_hot_only(spec), 1, quick=True)
    assert report.error is None and report.exit_status != 2, report.error


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_conventions_identified(name):
    fn, channels, expected = CONVENTIONS[name]
    report = audit(fn, channels, quick=True)
    assert report.error is None, report.error
    assert report.spec is not None, report.sentence
    float_target = "one-hot" in report.target_encoding
    kind = report.input_kind
    assert equivalent(DiceSpec(**report.spec), expected, channels, float_target, kind) <= 1e-4, report.sentence
    assert report.activation == expected.activation
    assert report.max_abs_diff <= 1e-4


@pytest.mark.parametrize("defect", DEFECT_IDS)
def test_each_defect_is_flagged_alone(defect):
    report = audit(DEFECTS[defect], 3, quick=True)
    assert report.error is None, report.error
    assert set(report.defect_ids) == {defect}, [str(d) for d in report.defects]
    assert report.exit_status == 1
    (found,) = report.defects
    assert any(ch.isdigit() for ch in found.message), found.message  # says what happened in numbers
    assert json.loads(report.to_json())["defects"][0]["id"] == defect


def test_clean_loss_has_no_defect():
    report = audit(clean_dice, 3, quick=True)
    assert report.defects == [], [d.message for d in report.defects]
    assert report.exit_status == 0
    assert equivalent(DiceSpec(**report.spec), CLEAN_SPEC, 3, False) <= 1e-4
    assert report.seconds < 10  # --quick on a small loss: the bound (it takes well under 1 s)


def test_cost_rows_for_the_loss_fused_and_monai():
    report = audit(clean_dice, 3)
    rows = report.cost["rows"]
    names = {row["implementation"] for row in rows}
    assert {"audited loss", "fused (same spec)", "MONAI DiceLoss"} <= names
    for row in rows:
        assert (row["seconds"] is not None and row["seconds"] > 0) or row["note"], row
    assert "cost (forward+backward)" in str(report)


def test_dice_loss_defects_are_the_documented_ones():
    """The library's own vectorized dice_loss: MONAI's conventions, so an absent class costs a
    perfect prediction; float16 sums in the logits' dtype; validation reads one flag back."""
    report = audit(functools.partial(dice_loss, impl="vectorized"), 3, quick=True)
    assert report.spec is not None
    assert {"absent_class_penalty", "half_precision_overflow", "host_sync"} <= set(report.defect_ids)
    mixed = audit(functools.partial(dice_loss, impl="mixed", validate=False), 3, quick=True)
    assert "half_precision_overflow" not in mixed.defect_ids and "host_sync" not in mixed.defect_ids


class NeedsClassCount(torch.nn.Module):
    def __init__(self, num_classes, smooth=1.0):
        super().__init__()
        self.num_classes, self.smooth = num_classes, smooth

    def forward(self, logits, labels):
        if logits.shape[1] != self.num_classes:
            raise ValueError("wrong class count")
        return batch_foreground_dice(logits, labels, self.smooth)


def test_required_class_count_is_filled_from_channels():
    report = audit(NeedsClassCount, 3, quick=True)
    assert report.spec is not None and "built with num_classes=3" in " ".join(report.notes)
    assert audit(NeedsClassCount, 3, kwargs={"num_classes": 4}, quick=True).exit_status == 2


def keras_order(y_true, y_pred):
    """Ground truth first, as Keras losses take it."""
    return batch_foreground_dice(y_pred, y_true)


def test_ground_truth_first_is_called_that_way():
    report = audit(keras_order, 3, quick=True)
    assert report.spec is not None and any("called as f(y_true, y_pred)" in n for n in report.notes)
    assert equivalent(DiceSpec(**report.spec), CONVENTIONS["batch_foreground_dice"][2], 3, False) <= 1e-4


def test_loss_that_always_raises_is_not_auditable():
    def broken(logits, target):
        raise RuntimeError("CUDA only")
    report = audit(broken, 3, quick=True)
    assert report.exit_status == 2
    assert "CUDA only" in report.error and "\n" not in report.error


def test_loss_returning_nonsense_is_not_auditable():
    report = audit(lambda logits, target: "loss", 3, quick=True)
    assert report.exit_status == 2 and "str" in report.error


def test_report_json_and_text():
    report = audit(clean_dice, 3, quick=True, name="clean")
    data = json.loads(report.to_json())
    for key in ("target_encoding", "spec", "max_abs_diff", "activation", "reduction_unit", "include_background",
                "squared", "smooth_nr", "smooth_dr", "sentence", "defects", "exit_status"):
        assert key in data
    assert data["reduction_unit"] == "per_image" and data["activation"] == "softmax"
    text = str(report)
    assert report.sentence in text and "defects: none" in text


def test_top_level_function():
    assert dice_impls.audit is audit


MONAI_CASES = [
    (dict(softmax=True, to_onehot_y=True), 3, DiceSpec.preset("monai")),
    (dict(softmax=True, to_onehot_y=True, include_background=False, batch=True), 3,
     DiceSpec(batch=True, include_background=False)),
    (dict(softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6), 3,
     DiceSpec(squared=True, smooth_nr=0.0, smooth_dr=1e-6)),
    (dict(softmax=True, to_onehot_y=True, jaccard=True, reduction="sum"), 3, DiceSpec(jaccard=True, reduction="sum")),
    (dict(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0), 1, DiceSpec(activation="sigmoid", smooth_nr=1.0, smooth_dr=1.0)),
    (dict(), 3, DiceSpec(activation="none")),
]


@pytest.mark.parametrize("kwargs, channels, expected", MONAI_CASES)
def test_monai_dice_loss_recovered(kwargs, channels, expected):
    monai = pytest.importorskip("monai.losses")
    report = audit(monai.DiceLoss, channels, kwargs=kwargs, quick=True)
    assert report.spec is not None, report.sentence
    assert equivalent(DiceSpec(**report.spec), expected, channels, "one-hot" in report.target_encoding,
                      report.input_kind) <= 1e-4


def test_class_weights_identified():
    """Weights by least squares on the per-class losses: ours (a weighted mean) exactly, MONAI's
    plain mean of w_c l_c as the weighted mean rescaled by sum(w) / C (docs/conventions.md)."""
    ours = DiceSpec(weight=(0.2, 1.0, 2.0), batch=True)
    report = audit(functools.partial(dice_loss, spec=ours, validate=False), 3, quick=True)
    assert report.spec is not None and equivalent(DiceSpec(**report.spec), ours, 3, False) <= 1e-4
    monai = pytest.importorskip("monai.losses")
    report = audit(monai.DiceLoss, 3, kwargs=dict(softmax=True, to_onehot_y=True, weight=[1.0, 2.0, 4.0]), quick=True)
    assert report.spec is None and report.affine["scale"] == pytest.approx(7 / 3, rel=1e-4)
    assert report.closest_spec["weight"] == pytest.approx((1 / 7, 2 / 7, 4 / 7), abs=1e-3)


@pytest.mark.parametrize("cls, kwargs, expected", [
    ("GeneralizedDiceLoss", dict(softmax=True, to_onehot_y=True), DiceSpec(generalized="square")),
    ("GeneralizedDiceLoss", dict(softmax=True, to_onehot_y=True, w_type="simple", batch=True),
     DiceSpec(generalized="simple", batch=True)),
    ("TverskyLoss", dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7), DiceSpec(fp_weight=0.3, fn_weight=0.7)),
])
def test_monai_family_recovered(cls, kwargs, expected):
    monai = pytest.importorskip("monai.losses")
    report = audit(getattr(monai, cls), 3, kwargs=kwargs, quick=True)
    assert report.spec is not None, report.sentence
    assert equivalent(DiceSpec(**report.spec), expected, 3, False) <= 1e-4


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), DiceSpec.preset("kornia", ignore_index=None)),
    (dict(average="macro"), DiceSpec.preset("kornia", ignore_index=None, average="macro", absent_classes="exclude")),
])
def test_kornia_recovered(kwargs, expected):
    kornia = pytest.importorskip("kornia.losses")
    report = audit(kornia.dice_loss, 3, kwargs=kwargs, quick=True)
    assert report.spec is not None, report.sentence
    assert equivalent(DiceSpec(**report.spec), expected, 3, False) <= 1e-4
    assert "crash" in report.defect_ids  # kornia takes 4-D input only


@pytest.mark.parametrize("batch_dice, do_bg, smooth", [(True, False, 1e-5), (False, True, 1.0)])
def test_nnunet_recovered(batch_dice, do_bg, smooth):
    dice = pytest.importorskip("nnunetv2.training.loss.dice")
    kwargs = dict(apply_nonlin=functools.partial(torch.softmax, dim=1), batch_dice=batch_dice, do_bg=do_bg,
                  smooth=smooth, ddp=False)
    report = audit(dice.MemoryEfficientSoftDiceLoss, 3, kwargs=kwargs, quick=True)
    expected = DiceSpec.preset("nnunet", batch=batch_dice, include_background=do_bg, smooth_nr=smooth, smooth_dr=smooth)
    assert report.spec is not None, report.sentence
    assert equivalent(DiceSpec(**report.spec), expected, 3, False) <= 1e-4


def test_load_peer_audits_reads_the_committed_table():
    pytest.importorskip("pandas")
    from analysis.peer_audits import DEFAULT_PATH, PEERS, load_peer_audits, skipped_peers

    table = load_peer_audits(DEFAULT_PATH)
    skipped = {s["name"] for s in skipped_peers(DEFAULT_PATH)}
    assert len(table) + len(skipped & {name for name, *_ in PEERS}) == len(PEERS)
    for column in ("name", "sentence", "activation", "reduction_unit", "include_background", "squared", "smooth_nr",
                   "smooth_dr", "spec_match", "max_abs_diff", "defects"):
        assert column in table.columns
    monai = table.set_index("name").loc["MONAI DiceLoss softmax"]
    assert monai.spec_match and monai.reduction_unit == "per_image" and "absent_class_penalty" in monai.defects
    assert "torchmetrics" in skipped


# -- the command line ----------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dicebench", "audit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_clean_loss_exits_0_and_writes_json(tmp_path):
    out = tmp_path / "report.json"
    result = run_cli("tests/audit_cases.py:clean_dice", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "equal to DiceSpec" in result.stdout
    assert json.loads(out.read_text())["exit_status"] == 0


def test_cli_defect_exits_1_and_builds_classes_with_kwargs():
    result = run_cli("tests.audit_cases:IgnoreLeak", "--kwargs", '{"ignore_index": 7}', "--quick")
    assert result.returncode == 1, result.stderr
    assert "ignore_leak" in result.stdout and "labelled 7" in result.stdout


@pytest.mark.parametrize("target, message", [
    ("tests/audit_cases.py:no_such_loss", "has no 'no_such_loss'"),
    ("no_such_module_xyz:loss", "cannot import no_such_module_xyz"),
    ("just_a_name", "TARGET must be"),
])
def test_cli_bad_target_is_one_line_exit_2(target, message):
    result = run_cli(target, "--quick")
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_unauditable_loss_is_one_line_exit_2(tmp_path):
    source = tmp_path / "broken.py"
    source.write_text("def loss(logits, target):\n    raise NotImplementedError('todo')\n")
    result = run_cli(f"{source}:loss", "--quick")
    assert result.returncode == 2
    assert "could not audit" in result.stderr and "todo" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
