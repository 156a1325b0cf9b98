"""``dicebench report`` and ``dicebench compare`` on small real results.

The run folder is made by the real storage functions: two fast experiments run at small scale
(``analysis.storage.run_experiment``) and asv results written by asv's own ``Results.save`` from
seeded random samples (running the asv grid itself takes minutes), so asv computes the medians and
quartiles itself. Every number the report shows is checked against the stored value it came from
(the ``data-value`` attribute of its cell).
"""

from __future__ import annotations

import datetime
from markupsafe import escape
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import pytest

from analysis.benchmark_report import BASELINE, MISSING, SHORT_MISSING, UNSTABLE_MARK
from analysis.cli import main
from analysis.compare import compare_runs, comparison_to_text
from analysis.report import SECTIONS, collect, write_report
from analysis.storage import load_results, run_experiment

FAST_EXPERIMENTS = ("e2_gradients", "p1_precision")  # a few seconds each at small scale
NO_EXPERIMENTS = Path("no-experiments-here")  # for pages about benchmarks only (no experiment figures to draw)

Row = List[Tuple[str, Optional[str]]]  # (text, data-value) per cell


class Tables(HTMLParser):
    """Every table row of a page as ``[(cell text, data-value or None), ...]``, plus img sources and links."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: List[Row] = []
        self.css: List[List[str]] = []  # per row, each cell's class
        self.captions: List[str] = []  # per table
        self.table_of_row: List[int] = []  # which table each row is in
        self.images: List[str] = []
        self.links: List[str] = []
        self.keyed: dict = {}  # data-key -> (text, data-value, class) of the cell that stands for it
        self._cell: Optional[list] = None
        self._key: Optional[Tuple[str, str]] = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.captions.append("")
        elif tag == "caption":
            self._cell = ["", None]
        elif tag == "tr":
            self.rows.append([])
            self.css.append([])
            self.table_of_row.append(len(self.captions) - 1)
        elif tag in ("td", "th"):
            self._cell = ["", attrs.get("data-value")]
            self.css[-1].append(attrs.get("class") or "")
            self._key = (attrs.get("data-key"), attrs.get("class") or "")
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("a", "link", "script"):
            self.links.append(attrs.get("href") or attrs.get("src") or "")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[0].strip(), self._cell[1]))
            key, css = self._key
            if key:
                assert key not in self.keyed, f"two cells stand for {key}"
                self.keyed[key] = (self._cell[0].strip(), self._cell[1], css)
            self._cell = None
        elif tag == "caption" and self._cell is not None:
            self.captions[-1] = self._cell[0].strip()
            self._cell = None

    def rows_of_tables(self, caption_part: str) -> List[Row]:
        return [row for row, t in zip(self.rows, self.table_of_row) if caption_part in self.captions[t]]

    def rows_starting(self, *texts: str) -> List[Row]:
        return [r for r in self.rows if [c[0] for c in r[: len(texts)]] == list(texts)]


def stored_value(cell: Tuple[str, Optional[str]]) -> float:
    assert cell[1] is not None, f"cell {cell[0]!r} carries no stored value"
    return float(cell[1])


ASV_MACHINE = dict(machine="testbox", cpu="Test CPU 2-core", num_cpu="2", os="Linux", arch="x86_64", ram="8 GiB", version=1)
OTHER_MACHINE = dict(ASV_MACHINE, machine="otherbox", cpu="Other CPU 8-core", num_cpu="8")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The cell whose samples are spread wide (quartiles far apart): it must show as unstable.
UNSTABLE_CELL = ("bench_loss.Grid.time_forward_backward", "'mixed'", "'float32'")


def asv_definitions():
    """Benchmarks named and parametrised as in the suite; ``float16`` is left out of ``Headline``
    so that a dtype without any number must show as not measured."""
    from benchmarks.benchmarks.common import GRID_SHAPES, HEADLINE_SHAPES, SCALING_VOXELS

    impls = ["naive", "vectorized", "mixed", "fused", "monai", "kornia"]
    q = lambda values: [repr(v) for v in values]  # noqa: E731  (asv stores parameters as reprs)
    table = [
        ("bench_loss.Grid.time_forward_backward", "seconds", [impls, ["float32", "bfloat16", "float16"], GRID_SHAPES[:1]]),
        ("bench_loss.Headline.time_forward_backward", "seconds", [impls[1:], ["float32", "bfloat16"], HEADLINE_SHAPES[:1]]),
        ("bench_loss.Headline.track_peak_bytes_forward_backward", "bytes", [impls, ["float32", "bfloat16"], HEADLINE_SHAPES[:1]]),
        ("bench_scaling.Voxels.time_forward_backward", "seconds", [["vectorized", "fused", "monai"], SCALING_VOXELS[:3]]),
        ("bench_training.TrainingStep.time_step", "seconds", [["monai DiceLoss", "drop-in DiceLoss"], ["4x4x256x256"]]),
    ]
    return [dict(name=name, unit=unit, type="track", version="1", code="", timeout=60,
                 param_names=["implementation", "dtype", "shape"][: len(params)] if len(params) == 3 else ["implementation", "shape"],
                 params=[q(v) for v in params]) for name, unit, params in table]


def write_asv_results(results_dir: Path, seed: int = 0, machine: dict = ASV_MACHINE, commit: str = COMMIT,
                      date: int = 1_700_000_000_000, unstable: Tuple[str, str, str] = UNSTABLE_CELL) -> None:
    """Seeded random numbers stored by asv itself (``Benchmarks.save``, ``Results.save``): timings
    as 10 samples each, of which asv takes the median and quartiles (``UNSTABLE_CELL`` spread
    wide, the others within 2 %); kornia in float16 is n/a (NaN, as when setup raises
    NotImplementedError), naive in bfloat16 failed (None)."""
    import itertools

    from asv.benchmarks import Benchmarks
    from asv.config import Config
    from asv.results import Results
    from asv.runner import BenchmarkResult

    conf = Config()
    conf.results_dir = str(results_dir)
    definitions = asv_definitions()
    Benchmarks(conf, definitions).save()
    rng = np.random.default_rng(seed)
    results = Results({"machine": machine["machine"]}, {}, commit, date, "3.11", "virtualenv-py3.11", {})
    for definition in definitions:
        combos = list(itertools.product(*definition["params"]))
        timing = definition["unit"] == "seconds"
        scale = 1e-2 if timing else 1e8
        values = [math.nan if "'kornia'" in c and "'float16'" in c  # n/a
                  else None if "'naive'" in c and "'bfloat16'" in c  # failed
                  else float(rng.uniform(0.1, 2.0) * scale) for c in combos]
        samples, number = [None] * len(values), [None] * len(values)
        if timing:
            for i, (value, combo) in enumerate(zip(values, combos)):
                if value is not None and not math.isnan(value):
                    wide = definition["name"] == unstable[0] and set(unstable[1:]) <= set(combo)
                    samples[i] = list(value * (1 + rng.uniform(-0.5 if wide else -0.02, 0.5 if wide else 0.02, 10)))
                    number[i] = 1
        started = datetime.datetime.fromtimestamp(date / 1e3, datetime.timezone.utc)
        results.add_result(definition, BenchmarkResult(values, samples, number, 0, "", None), started_at=started)
    results.save(str(results_dir))
    (results_dir / machine["machine"] / "machine.json").write_text(json.dumps(machine))


def write_targets(path: Path, seed: int = 0) -> None:
    """A ``benchmarks/targets.py`` result file (its JSON layout) with seeded random numbers."""
    rng = np.random.default_rng(seed)
    speed, memory = [], []
    for shape in ("16x4x512x512", "2x4x128x128x128"):
        for impl in ("monai", "fused"):
            seconds, floor = float(rng.uniform(0.01, 1)), float(rng.uniform(0.001, 0.01))
            speed.append(dict(shape=shape, impl=impl, seconds=seconds, vs_monai=float(rng.uniform(1, 5)),
                              floor_ratio=seconds / floor, floor_s=floor, memory_s=floor, exp_s=floor / 2))
            memory.append(dict(shape=shape, impl=impl, peak_above_inputs=1e8, x_logits=float(rng.uniform(1, 4))))
    accuracy = [dict(dtype=d, voxels=2**27, loss_error=float(rng.uniform(0, 1e-4)), target=1e-3, met=True)
                for d in ("bfloat16", "float16")]
    path.write_text(json.dumps(dict(machine=dict(cpu="Test CPU", threads=2, torch="2.x"), speed=speed,
                                    memory=memory, accuracy=accuracy)))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    for name in FAST_EXPERIMENTS:
        run_experiment(name, root / "experiments", scale="small", progress=False)
    write_asv_results(root / "asv")
    write_targets(root / "targets_cpu.json")
    return root


@pytest.fixture(scope="module")
def built_report(run_folder) -> Tuple[Path, str]:
    data = collect(run_folder / "experiments", run_folder / "asv", targets=run_folder / "targets_cpu.json")
    index = write_report(data, run_folder / "report")
    return index, index.read_text(encoding="utf-8")


def test_every_section_is_present(built_report):
    _, html = built_report
    for sid, title in SECTIONS:
        assert f'<section id="{sid}">' in html
        assert f"<h2>{escape(title)}</h2>" in html


def test_claims_match_the_stored_claims(run_folder, built_report):
    tables = Tables(built_report[1])
    for name in FAST_EXPERIMENTS:
        _, claims, _ = load_results(run_folder / "experiments", name)
        assert claims
        for claim in claims:
            (row,) = tables.rows_starting(claim["id"])
            assert row[1][0] == claim["kind"] and row[3][0] == claim["statement"]
            for cell, key in ((row[5], "value"), (row[7], "threshold")):
                stored = float(claim[key])
                assert stored_value(cell) == stored or (math.isnan(stored) and math.isnan(stored_value(cell)))
            assert row[7][0].startswith(claim["op"] + " ")
            assert row[-1][0] == ("PASS" if claim["passed"] else "FAIL")  # both experiments hold verifications only


def test_manifests_are_shown(run_folder, built_report):
    tables = Tables(built_report[1])
    for name in FAST_EXPERIMENTS:
        _, claims, manifest = load_results(run_folder / "experiments", name)
        (row,) = tables.rows_starting(name, manifest["scale"])
        assert stored_value(row[7]) == manifest["wall_time_s"]
        assert row[5][0].startswith(manifest["git_commit"][:10])
        assert row[8][0] == f"{sum(c['passed'] for c in claims)}/{len(claims)}"
    (torch_row,) = tables.rows_starting("torch")
    assert torch_row[1][0] == manifest["torch"]


def test_experiments_without_results_are_shown_as_missing(built_report):
    from analysis.experiments import EXPERIMENTS

    html = built_report[1]
    absent = [n for n in EXPERIMENTS if n not in FAST_EXPERIMENTS]
    assert absent, "every experiment ran: nothing to show as missing"
    note = next(line for line in html.splitlines() if "(no stored results)" in line)
    assert MISSING in note and all(name in note for name in absent)


def test_the_page_is_one_self_contained_file(run_folder, built_report):
    """Figures inline as PNG data URIs, nothing beside the page, no link out, no absolute path of
    the machine that wrote it, no citation of a document outside the repository."""
    import base64

    index, html = built_report
    tables = Tables(html)
    assert len(tables.images) >= len(FAST_EXPERIMENTS)
    for src in tables.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.html"]
    assert "http://" not in html and "https://" not in html
    assert all(link.startswith("#") for link in tables.links)
    assert str(run_folder) not in html and str(Path.cwd()) not in html and "/work/" not in html
    assert "DESIGN" not in html


def test_figures_can_be_written_beside_the_page(run_folder, tmp_path):
    data = collect(NO_EXPERIMENTS, run_folder / "asv", targets=run_folder / "targets_cpu.json")
    index = write_report(data, tmp_path / "report", inline_figures=False)
    tables = Tables(index.read_text(encoding="utf-8"))
    assert tables.images
    for src in tables.images:
        path = index.parent / src
        assert not Path(src).is_absolute() and path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_benchmark_numbers_and_ratios_match_the_stored_results(run_folder, built_report):
    """Every stored number of the measure tables has its cell (found by its data-key): MONAI's own
    value, the others' ratio to it, "failed" or n/a exactly where the results say so."""
    from benchmarks.results import load_asv_results

    stored = load_asv_results(run_folder / "asv")
    keyed = Tables(built_report[1]).keyed
    for benchmark, scale in (("bench_loss.Grid.time_forward_backward", 1e3),
                             ("bench_loss.Headline.track_peak_bytes_forward_backward", 1 / 2**20)):
        stored_rows = stored[stored["benchmark"] == benchmark]
        assert len(stored_rows)
        for r in stored_rows.itertuples():
            baseline = stored_rows[(stored_rows["dtype"] == r.dtype) & (stored_rows["implementation"] == BASELINE)]["value"].iloc[0]
            (text, value, _), = [v for k, v in keyed.items() if k.startswith(f"{benchmark}|{r.implementation}|{r.dtype}|{r.shape}|")]
            if r.status == "failed":
                assert text == "failed"
            elif r.implementation == BASELINE:
                assert float(value) == r.value * scale
            elif math.isnan(r.value):
                assert text == SHORT_MISSING
            else:
                assert float(value) == r.value / baseline


def test_the_training_step_states_what_the_drop_in_gains(run_folder, built_report):
    from benchmarks.results import load_asv_results

    stored = load_asv_results(run_folder / "asv")
    step = stored[stored["benchmark"] == "bench_training.TrainingStep.time_step"].set_index("implementation")["value"]
    (row,) = Tables(built_report[1]).rows_of_tables("One training step of a small U-Net")[1:]
    assert [c[0] for c in row[1:3]] == ["4x4x256x256", "DiceLoss"]
    assert stored_value(row[3]) == step["monai DiceLoss"] * 1e3 and stored_value(row[4]) == step["drop-in DiceLoss"] * 1e3
    assert stored_value(row[5]) == pytest.approx(step["monai DiceLoss"] / step["drop-in DiceLoss"])
    glance = built_report[1].split('<section id="glance"', 1)[1].split("</section>", 1)[0]
    assert "One training step of a small U-Net" in glance


def test_missing_devices_and_dtypes_are_shown(run_folder, built_report):
    from benchmarks.benchmarks.common import HEADLINE_SHAPES

    tables = Tables(built_report[1])
    rows = tables.rows_of_tables("ratio to MONAI")  # the measure tables of the implementations section
    groups = [row for row in rows if row[0][0] == ""]
    assert groups and all(g[1][0].startswith("CPU · testbox") and "(Test CPU" in g[1][0] and g[2][0] == "GPU" for g in groups)
    body = [row for row in rows if row[0][0] not in ("", "benchmark")]
    assert body and all(row[-1][0] == MISSING for row in body)  # no GPU results: the GPU column is n/a
    memory = tables.rows_of_tables("peak memory above the inputs (cpu: track_peak_bytes")
    (float16,) = [row for row in memory if [c[0] for c in row[:3]] == ["Dice", HEADLINE_SHAPES[0], "float16"]]  # not in that grid
    assert all(cell[0] in (MISSING, SHORT_MISSING) for cell in float16[3:])


def test_fused_targets_match_the_stored_file(run_folder, built_report):
    targets = json.loads((run_folder / "targets_cpu.json").read_text())
    tables = Tables(built_report[1])
    peaks = {(r["shape"], r["impl"]): r["x_logits"] for r in targets["memory"]}
    for r in targets["speed"]:
        (row,) = tables.rows_starting(r["shape"], r["impl"])
        assert [stored_value(c) for c in row[2:]] == [r["seconds"] * 1e3, r["vs_monai"], r["floor_s"] * 1e3,
                                                      r["floor_ratio"], peaks[r["shape"], r["impl"]]]
    for r in targets["accuracy"]:
        (row,) = [row for row in tables.rows_starting(r["dtype"]) if len(row) == 6]
        assert stored_value(row[2]) == r["loss_error"] and row[3][0] == MISSING and row[5][0] == "yes"


def test_scaling_figures_are_drawn(built_report):
    _, html = built_report
    tables = Tables(html)
    captions = [c for c in html.split("<figcaption>")[1:] if c.startswith("bench_scaling.Voxels.time_forward_backward on testbox")]
    assert len(captions) == 1 and "the dotted line is slope 1" in captions[0]
    assert len(tables.images) >= len(FAST_EXPERIMENTS) + 1


# --------------------------------------------------------------------------------------------
# Machines, stability, the headline and a fresh run


def group_labels(tables: Tables) -> List[str]:
    """The column-group labels of the implementations section's measure tables."""
    return [cell[0] for row in tables.rows_of_tables("ratio to MONAI") if row[0][0] == "" for cell in row[1:]]


@pytest.fixture(scope="module")
def two_machine_report(run_folder, tmp_path_factory) -> Tuple[Path, str]:
    """The stored folder of ``run_folder`` plus a second machine with other numbers at the same commit."""
    root = tmp_path_factory.mktemp("two-machines")
    shutil.copytree(run_folder / "asv", root / "asv")
    write_asv_results(root / "asv", seed=1, machine=OTHER_MACHINE)
    data = collect(NO_EXPERIMENTS, root / "asv", targets=None)
    index = write_report(data, root / "report")
    return root, index.read_text(encoding="utf-8")


def test_tables_never_mix_machines(two_machine_report):
    """Each machine gets its own column group, named by it alone, and each number in it is that
    machine's own (the other machine's numbers never replace or merge into it)."""
    from benchmarks.results import load_asv_results

    root, html = two_machine_report
    stored = load_asv_results(root / "asv")
    tables = Tables(html)
    labels = [g for g in group_labels(tables) if g.startswith("CPU")]
    for machine, cpu in (("testbox", "Test CPU 2-core"), ("otherbox", "Other CPU 8-core")):
        mine = [g for g in labels if machine in g]
        assert mine and all(cpu in g and ("otherbox" if machine == "testbox" else "testbox") not in g for g in mine)
    rows = tables.rows_of_tables("forward+backward time (cpu: time_forward_backward")
    header = [c[0] for c in rows[1]]
    baseline_columns = [i for i, h in enumerate(header) if h == f"{BASELINE} (ms)"]
    assert len(baseline_columns) == 2  # one per machine
    machines = [("testbox" if "testbox" in g else "otherbox") for g in (c[0] for c in rows[0][1:]) if g.startswith("CPU")]
    assert sorted(machines) == ["otherbox", "testbox"]
    grid = stored[stored["benchmark"].str.startswith("bench_loss.") & stored["benchmark"].str.endswith(".time_forward_backward")]
    for column, machine in zip(baseline_columns, machines):
        for row in rows[2:]:
            shape, dtype = row[0][0], row[1][0]
            expected = grid[(grid["machine"] == machine) & (grid["shape"] == shape) & (grid["dtype"] == dtype)
                            & (grid["implementation"] == BASELINE)]["value"]
            if len(expected) and row[column][1] is not None:
                assert stored_value(row[column]) == expected.iloc[0] * 1e3
    glance_captions = [c for c in tables.captions if c.startswith("Headline ") and "÷ MONAI" in c]
    assert len(glance_captions) == 4  # time and memory, per machine
    assert all(("testbox" in c) != ("otherbox" in c) for c in glance_captions)


def test_unstable_cells_are_flagged(run_folder, built_report):
    from benchmarks.results import load_asv_results

    stored = load_asv_results(run_folder / "asv")
    wide = stored[(stored["benchmark"] == UNSTABLE_CELL[0]) & (stored["implementation"] == "mixed")
                  & (stored["dtype"] == "float32")]
    assert wide["unstable"].all() and (wide["spread"] > 0.15).all()
    tight = stored[(stored["unit"] == "seconds") & (stored["status"] == "ok") & ~stored.index.isin(wide.index)]
    assert not tight["unstable"].any() and (tight["spread"] < 0.15).all()
    tables = Tables(built_report[1])
    rows = tables.rows_of_tables("forward+backward time (cpu: time_forward_backward")
    header = [c[0] for c in rows[1]]
    column = header.index("mixed")
    flagged = [(row, css) for row, css in zip(tables.rows, tables.css) if row in rows[2:] and row[2][0] == "float32"
               and row[1][0] in set(wide["shape"])]
    assert flagged
    for row, css in flagged:
        assert row[column][0].endswith(UNSTABLE_MARK) and css[column] == "unstable"
    stable = [(row, css) for row, css in zip(tables.rows, tables.css) if row in rows[2:] and row[2][0] == "bfloat16"]
    assert stable and all(not row[column][0].endswith(UNSTABLE_MARK) and css[column] != "unstable"
                          for row, css in stable if row[column][1] is not None)


def test_the_headline_states_its_interval_and_its_stability(run_folder, tmp_path):
    """The first screen gives fused's speed-up over MONAI with its quartile interval at 2 significant
    digits; when a timing behind it is unstable, the number is marked and the mark explained."""
    from benchmarks.benchmarks.common import HEADLINE_SHAPES

    import re

    def glance_line(html: str) -> str:
        glance = html.split('<section id="glance"', 1)[1].split("</section>", 1)[0]
        return next(li for li in glance.split("<li>") if li.startswith("than MONAI"))

    data = collect(NO_EXPERIMENTS, run_folder / "asv", targets=None)
    html = write_report(data, tmp_path / "stable").read_text(encoding="utf-8")
    line = glance_line(html)
    speedup, low, high = re.search(r"([0-9.]+)× \(([0-9.]+)–([0-9.]+)\) at " + HEADLINE_SHAPES[0], line).groups()
    assert float(low) <= float(speedup) <= float(high) and UNSTABLE_MARK not in line
    assert all(len(x.replace(".", "").lstrip("0")) <= 2 for x in (speedup, low, high))
    from benchmarks.results import load_asv_results

    stored = load_asv_results(run_folder / "asv")
    cell = stored[(stored["benchmark"] == "bench_loss.Headline.time_forward_backward") & (stored["dtype"] == "float32")]
    value = lambda i: cell.loc[cell["implementation"] == i, "value"].iloc[0]  # noqa: E731
    assert float(speedup) == pytest.approx(value("monai") / value("fused"), rel=0.05)

    write_asv_results(tmp_path / "asv", unstable=("bench_loss.Headline.time_forward_backward", "'fused'", "'float32'"))
    data = collect(NO_EXPERIMENTS, tmp_path / "asv", targets=None)
    html = write_report(data, tmp_path / "unstable").read_text(encoding="utf-8")
    assert UNSTABLE_MARK in glance_line(html) and "is unstable" in html.split('<section id="glance"', 1)[1].split("</section>")[0]


def test_a_fresh_run_is_compared_with_the_stored_one(run_folder, tmp_path):
    write_asv_results(tmp_path / "fresh", seed=0, machine=OTHER_MACHINE, commit="f" * 40,
                      unstable=("bench_loss.Headline.time_forward_backward", "'mixed'", "'float32'"))
    data = collect(NO_EXPERIMENTS, run_folder / "asv", targets=None, fresh_asv_dir=tmp_path / "fresh")
    html = write_report(data, tmp_path / "report").read_text(encoding="utf-8")
    tables = Tables(html)
    rows = tables.rows_of_tables("This run (otherbox")
    assert rows, "no comparison of the fresh run"
    body = rows[1:]
    assert body and {r[8][0] for r in body} <= {"agree", "differ", "unstable", "no interval"}
    # The same seed: equal ratios, so stable cells agree; the cell spread wide in the fresh run is
    # unstable there, and is never read as agreement.
    wide = [r for r in body if r[2][0] == "mixed" and r[3][0] == "float32" and r[0][0] == "forward+backward time"]
    assert wide and all(r[8][0] == "unstable" for r in wide)
    others = [r for r in body if r not in wide]
    assert others and all(stored_value(r[7]) == pytest.approx(1.0) and r[8][0] == "agree" for r in others)
    glance = html.split('<section id="glance"', 1)[1].split("</section>", 1)[0]
    assert f"{len(others)} of {len(body)} headline ratios agree" in glance


# --------------------------------------------------------------------------------------------
# compare


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report"))
    return target


def test_compare_identical_runs_reports_nothing(run_folder, tmp_path):
    other = copy_run(run_folder, tmp_path / "other")
    comparison = compare_runs(run_folder, other)
    assert comparison.changes == [] and comparison.checked > 0
    assert main(["compare", str(run_folder), str(other)]) == 0


def test_compare_detects_a_moved_number(run_folder, tmp_path):
    other = copy_run(run_folder, tmp_path / "other")
    path = other / "experiments" / "p1_precision" / "results.parquet"
    df = pd.read_parquet(path)
    column = next(c for c in df.columns if pd.api.types.is_float_dtype(df[c]) and np.isfinite(df[c]).all() and (df[c] != 0).all())
    row = len(df) // 2
    df.loc[row, column] *= 1 + 10 * 1e-3  # ten times the default tolerance
    df.to_parquet(path, index=False)
    comparison = compare_runs(run_folder, other, rtol=1e-3)
    (change,) = comparison.changes
    assert change.kind == "number" and change.where == "p1_precision" and change.what.startswith(f"{column}: 1/")
    assert change.relative == pytest.approx(10 * 1e-3 / (1 + 10 * 1e-3), rel=1e-6)
    assert compare_runs(run_folder, other, rtol=0.1).changes == []  # within a looser tolerance
    assert main(["compare", str(run_folder), str(other)]) == 1


def test_compare_detects_a_flipped_claim(run_folder, tmp_path):
    other = copy_run(run_folder, tmp_path / "other")
    path = other / "experiments" / "e2_gradients" / "claims.json"
    claims = json.loads(path.read_text())
    claims[0]["passed"] = not claims[0]["passed"]
    path.write_text(json.dumps(claims))
    (change,) = compare_runs(run_folder, other).changes
    assert change.kind == "claim" and "flipped" in change.what and claims[0]["id"] in change.what
    assert main(["compare", str(run_folder), str(other)]) == 1


def test_report_includes_a_comparison(run_folder, tmp_path):
    other = copy_run(run_folder, tmp_path / "other")
    path = other / "experiments" / "e2_gradients" / "claims.json"
    claims = json.loads(path.read_text())
    claims[-1]["passed"] = not claims[-1]["passed"]
    path.write_text(json.dumps(claims))
    out = tmp_path / "report"
    assert main(["report", "--results", str(other / "experiments"), "--asv-results", str(other / "asv"),
                 "--compare", str(run_folder), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert '<section id="comparison">' in html
    (row,) = Tables(html).rows_starting("claim", "e2_gradients")
    assert claims[-1]["id"] in row[2][0] and "flipped" in row[2][0]


def test_compare_lists_unstable_timings_apart(run_folder, tmp_path):
    """A timing that is unstable moves without counting as a change (exit status 0), and is listed
    as unstable; the same move of a stable timing is a change."""
    other = copy_run(run_folder, tmp_path / "other")
    (path,) = (other / "asv" / ASV_MACHINE["machine"]).glob(f"{COMMIT[:8]}-*.json")
    stored = json.loads(path.read_text())
    stored["results"][UNSTABLE_CELL[0]][0] = [None if v is None else 2 * v  # result column: every Grid cell doubles
                                              for v in stored["results"][UNSTABLE_CELL[0]][0]]
    path.write_text(json.dumps(stored))
    comparison = compare_runs(run_folder, other)
    wide = [ch for ch in comparison.unstable if " mixed float32 " in f" {ch.what} "]
    assert wide and all(ch.kind == "unstable" and ch.relative == pytest.approx(0.5) for ch in wide)
    moved = [ch for ch in comparison.changes if ch.kind == "benchmark"]
    assert moved and all(UNSTABLE_CELL[0] in ch.what and " mixed float32 " not in f" {ch.what} " for ch in moved)
    assert "not compared, neither a change nor agreement" in comparison_to_text(comparison)


def test_scaling_plots_explain_irregular_points(tmp_path):
    """A 0-byte memory point is drawn (at the axis floor) and named, a number that falls as the size
    grows is circled and explained, and the slope-1 reference is drawn."""
    from analysis.benchmark_report import scaling_figures
    from benchmarks.benchmarks.common import SCALING_VOXELS, voxels

    values = [0.0, 3e6, 12e6, 8e6]  # bytes: nothing measured, then a fall between the last two sizes
    rows = [dict(run="testbox · stored", benchmark="bench_scaling.Voxels.track_peak_bytes_forward_backward",
                 module="bench_scaling", implementation="fused", shape=shape, voxels=voxels(shape), value=value,
                 unit="bytes", status="ok", q25=math.nan, q75=math.nan, spread=math.nan, unstable=False, latest=True)
            for shape, value in zip(SCALING_VOXELS, values)]
    ((path, caption),) = scaling_figures(pd.DataFrame(rows), tmp_path)
    assert path.is_file()
    assert f"fused at {SCALING_VOXELS[0]}: 0 MiB, 0 bytes measured, drawn at the axis floor" in caption
    assert f"fused at {SCALING_VOXELS[3]}" in caption and f"lower than at {SCALING_VOXELS[2]}" in caption
    assert "the dotted line is slope 1" in caption
