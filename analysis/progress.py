"""Progress of long stages: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns and, when bars nest, cursor moves (``\\x1b[A``): fine on
a terminal, garbage in a log file, a pipe or CI. Off a terminal, ``track`` writes one line when
the stage starts, one about every tenth of the way (at most one per ``PLAIN_INTERVAL_S``), and one
when it ends::

    experiments: 0/8
    experiments: 3/8 (38%), 41 s, about 68 s left
    experiments: 8/8 in 112 s

Use it like tqdm: ``for x in track(items, desc="..."):`` or ``with track(total=n, desc="...") as
bar: ... bar.update()``.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator, Optional

PLAIN_INTERVAL_S = 10.0


def track(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str, unit: str = "it",
          disable: bool = False, file: Optional[IO[str]] = None):
    """tqdm on a terminal (``file``, default stderr), ``PlainProgress`` elsewhere."""
    file = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not disable and file.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file)
    return PlainProgress(iterable, total=total, desc=desc, disable=disable, file=file)


class PlainProgress:
    """The part of tqdm's interface the suite uses, as whole lines."""

    def __init__(self, iterable: Optional[Iterable], total: Optional[int], desc: str, disable: bool, file: IO[str]):
        self.iterable, self.total, self.desc, self.disable, self.file = iterable, total, desc, disable, file
        self.n, self.closed = 0, False
        self.start = self.last_line = time.perf_counter()
        self.next_fraction = 0.1
        self._write(f"{self.desc}: 0" + (f"/{self.total}" if self.total else ""))

    def _write(self, line: str) -> None:
        if not self.disable:
            print(line, file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.total or self.n >= self.total:
            return  # the closing line says it
        if self.n / self.total >= self.next_fraction and now - self.last_line >= PLAIN_INTERVAL_S:
            elapsed = now - self.start
            left = elapsed * (self.total - self.n) / self.n
            self._write(f"{self.desc}: {self.n}/{self.total} ({self.n / self.total:.0%}), {elapsed:.0f} s, "
                        f"about {left:.0f} s left")
            self.last_line = now
            self.next_fraction = self.n / self.total + 0.1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
                        + f" in {time.perf_counter() - self.start:.0f} s")

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
