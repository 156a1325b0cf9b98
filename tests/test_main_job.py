"""The main job as a user gets it: the page built from the committed results exactly as shipped,
and ``dicebench run --quick`` end to end into a fresh folder, both opened in headless Chromium.

The other report tests use small fixtures; these read what the repository ships, so a committed
result the page cannot render (a new benchmark whose cells clash with another's, a missing
section) fails here before it reaches a user.
"""

from __future__ import annotations

import re
from markupsafe import escape
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import benchmark_report
from analysis.cli import main
from analysis.report import SECTIONS, collect
from analysis.report_template import MISSING, SHORT_MISSING

from test_browser import CHROMIUM, Browser, inspect
from test_report import Tables

REPO = Path(__file__).resolve().parent.parent
# One xdist worker runs them all (make test: --dist loadgroup), so the quick run happens once.
pytestmark = pytest.mark.xdist_group("main_job")
FIRST_SCREEN_PX = 900  # the glance must end above this on a 1280-pixel-wide window


def glance_of(html: str) -> str:
    return html.split('<section id="glance"', 1)[1].split("</section>", 1)[0]


def section_of(html: str, section_id: str) -> str:
    return html.split(f'<section id="{section_id}"', 1)[1].split("</section>", 1)[0]


def without_tags(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """``dicebench report`` with every default: the committed results under results/."""
    out = tmp_path_factory.mktemp("shipped")
    assert main(["report", "--out", str(out)]) == 0
    return out / "index.html"


def test_the_shipped_page_has_every_section(shipped):
    html = shipped.read_text(encoding="utf-8")
    for section_id, title in (("glance", "At a glance"), *SECTIONS):
        assert f"<section id=\"{section_id}\"" in html and escape(title) in html


def test_the_shipped_page_shows_every_stored_number(shipped):
    """Each asv number of the measure tables has its own cell (its data-key), showing a number where
    the results hold one; a cell says n/a only where the results hold none."""
    data = collect()
    ratios = benchmark_report.with_baseline_ratio(data.asv)
    keyed = Tables(shipped.read_text(encoding="utf-8")).keyed
    expected = {}
    for _, _, methods in benchmark_report.MEASURES:
        rows = benchmark_report.measure_rows(ratios, methods)
        for r in rows.itertuples():
            key = benchmark_report.cell_key(r.comparison, r.method, r.implementation, r.dtype, r.shape, r.run)
            expected[key] = r.status == "ok" and np.isfinite(r.value)
    assert expected and any(k.startswith(benchmark_report.COMPOUND) for k in expected), "no Dice+CE cell in the results"
    assert [k for k, has_number in expected.items() if has_number and keyed[k][0] in (SHORT_MISSING, MISSING)] == []
    assert [k for k, has_number in expected.items() if not has_number and keyed[k][1] is not None] == []
    # a cell stands for a stored result or for a combination the grid never ran, never for a guess
    assert [k for k, (text, value, _) in keyed.items() if k not in expected and value is not None] == []


def test_the_shipped_first_screen_states_the_headline(shipped):
    html = shipped.read_text(encoding="utf-8")
    glance = without_tags(glance_of(html))
    for phrase in ("than MONAI:", "than kornia:", "than torch.compile:", "fused Dice+CE than MONAI's DiceCELoss",
                   "Memory", "Main finding", "Half precision:"):
        assert phrase in glance, phrase
    assert re.search(r"than MONAI: [0-9.]+× \([0-9.]+–[0-9.]+\)", glance)
    # n/a only where nothing is stored: the audit's and the GPU's columns
    for paragraph in re.findall(r"<p>.*?</p>", glance_of(html), flags=re.S):
        if "n/a" in paragraph:
            assert "Audit" in paragraph or "GPU" in paragraph, without_tags(paragraph)
    assert glance_of(html).count("<img") == 1
    headline = section_of(html, "implementations")
    assert "Dice+CE: fused Dice+CE vs MONAI DiceCELoss" in headline and "Headline ratios" in headline


def test_the_shipped_page_names_no_machine_path(shipped):
    text = shipped.read_text(encoding="utf-8")
    assert str(REPO) not in text and "existing-py_" not in text and "/root/" not in text


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """``dicebench run --quick`` as a user runs it, into a fresh folder (its asv run beside the curated one)."""
    out = tmp_path_factory.mktemp("quick") / "run"
    done = subprocess.run([sys.executable, "-m", "dicebench", "run", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_a_quick_run_writes_a_page_with_this_run_beside_the_curated_one(quick_run):
    html = (quick_run / "index.html").read_text(encoding="utf-8")
    assert "This run against the stored results" in html
    assert "headline ratios agree" in without_tags(glance_of(html))
    assert "Dice+CE: fused Dice+CE vs MONAI DiceCELoss" in section_of(html, "implementations")
    for section_id, _ in SECTIONS:
        assert f'<section id="{section_id}"' in html


@pytest.mark.slow
def test_a_quick_run_leaves_no_machine_path_behind(quick_run):
    shown = [p.name for p in quick_run.rglob("*")]
    assert [name for name in shown if "existing-py_" in name] == []
    for path in quick_run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".html"):
            text = path.read_text(encoding="utf-8")
            assert str(REPO) not in text and str(quick_run) not in text and "existing-py_" not in text, path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (Debian: apt-get install -y chromium)")
    session = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield session
    session.close()


GLANCE_BOTTOM = "document.getElementById('glance').getBoundingClientRect().bottom + window.scrollY"


def test_the_shipped_page_renders_and_leads_with_the_glance(browser, shipped):
    seen = inspect(browser, shipped)
    assert seen["errors"] == []
    assert seen["images"] and [src[:40] for src, complete, width in seen["images"] if not (complete and width > 0)] == []
    assert seen["sections"][:1] == ["glance"] and [s for s, _ in SECTIONS if s not in seen["sections"]] == []
    assert browser.run("window.innerWidth") == 1280
    assert browser.run(GLANCE_BOTTOM) <= FIRST_SCREEN_PX


@pytest.mark.slow
def test_the_quick_run_page_renders(browser, quick_run):
    seen = inspect(browser, quick_run / "index.html")
    assert seen["errors"] == []
    assert seen["images"] and [src[:40] for src, complete, width in seen["images"] if not (complete and width > 0)] == []
    assert [s for s, _ in SECTIONS if s not in seen["sections"]] == []


def test_the_shipped_page_shows_every_audited_peer(shipped):
    from analysis.peer_audits import load_peer_audits

    audits = load_peer_audits()
    rows = Tables(shipped.read_text(encoding="utf-8")).rows_of_tables("What each peer's Dice loss computes")[1:]
    assert [row[0][0] for row in rows] == list(audits["name"])
    assert [row[-1][0] for row in rows] == [d or "none" for d in audits["defects"]]


@pytest.mark.slow
def test_a_quick_run_says_its_small_scale_study_is_a_check(quick_run):
    glance = without_tags(glance_of((quick_run / "index.html").read_text(encoding="utf-8")))
    assert "(small scale)" in glance and "Small scale checks that every experiment runs" in glance
