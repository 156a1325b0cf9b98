"""The generated report in headless Chromium: it renders without console errors, every image
loads (inline data URIs by default, files beside the page on request), every section and the
"At a glance" block are there; a screenshot is saved.

Chromium is driven through the Chrome DevTools Protocol over a pipe (``--remote-debugging-pipe``:
JSON messages ending in NUL on file descriptors 3 and 4), with the standard library only: no
extra package and no chromedriver. Debian: ``apt-get install -y chromium`` (``.ci/run`` does it).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from analysis.report import SECTIONS, collect, write_report

from test_report import built_report, run_folder  # noqa: F401  (fixtures: a report from small real results)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,2000"]
TIMEOUT_S = 120


def high_fd_pipe() -> tuple[int, int]:
    """``os.pipe()`` with both ends above fd 4, so moving them onto fds 3 and 4 cannot clash."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


class Browser:
    """One headless Chromium with one page, spoken to in DevTools Protocol messages over a pipe."""

    def __init__(self, profile: Path):
        to_chrome, self._write_end = high_fd_pipe()
        self._read_end, from_chrome = high_fd_pipe()

        # Chromium reads commands on fd 3 and writes replies on fd 4. bash (dash takes one-digit fds
        # only) moves the pipe ends there and execs Chromium: no preexec_fn (unsafe in a threaded
        # pytest-xdist worker), and Chromium inherits no other descriptor of this process.
        redirect = f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome} {to_chrome}<&- {from_chrome}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", redirect, CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "about:blank"],
            pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _receive(self) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            if not select.select([self._read_end], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._read_end, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict = None, session: bool = False) -> dict:
        """Send one command; keep the events that arrive before its reply."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write_end, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (which waits for every image)."""
        self.events = []
        self.call("Page.navigate", {"url": url}, session=True)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._receive())

    def run(self, expression: str):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)["result"]["value"]

    def errors(self) -> list:
        """console.error/assert calls, uncaught exceptions, and resources that failed to load."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("exception: " + details.get("exception", {}).get("description", details["text"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        return found

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            self.process.kill()
        finally:
            self.process.wait(timeout=30)
            os.close(self._write_end)
            os.close(self._read_end)


IMAGES = "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
SECTION_IDS = "Array.from(document.querySelectorAll('section[id]')).map(s => s.id)"


def inspect(browser: Browser, page: Path) -> dict:
    browser.open(page.resolve().as_uri())
    return dict(images=browser.run(IMAGES), sections=browser.run(SECTION_IDS), errors=browser.errors())


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    session = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield session
    session.close()


def test_report_renders_in_chromium(browser, built_report, tmp_path):  # noqa: F811
    index, _ = built_report
    seen = inspect(browser, index)
    browser.screenshot(tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["errors"] == []
    assert seen["images"], "the report shows no figure"
    assert all(src.startswith("data:image/png;base64,") for src, _, _ in seen["images"])
    assert [src[:60] for src, complete, width in seen["images"] if not (complete and width > 0)] == []
    assert "glance" in seen["sections"]
    assert [sid for sid, _ in SECTIONS if sid not in seen["sections"]] == []


def test_report_with_figure_files_renders_in_chromium(browser, run_folder, tmp_path):  # noqa: F811
    data = collect(Path("no-experiments-here"), run_folder / "asv", targets=run_folder / "targets_cpu.json")
    index = write_report(data, tmp_path / "report", inline_figures=False)
    seen = inspect(browser, index)
    assert seen["errors"] == []
    assert seen["images"] and all(src.startswith("figures/") for src, _, _ in seen["images"])
    assert [src for src, complete, width in seen["images"] if not (complete and width > 0)] == []


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """The same checks on a page with a missing image and a script error do report both."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><section id="run"></section><img src="missing.png">'
                    "<script>console.error('boom'); undefined_function();</script></body></html>")
    seen = inspect(browser, page)
    assert seen["images"] == [["missing.png", True, 0]]
    messages = " ".join(seen["errors"])
    assert "boom" in messages and "undefined_function" in messages and "missing.png" in messages
    assert seen["sections"] == ["run"]
