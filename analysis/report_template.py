"""The HTML of the report, rendered from the jinja2 templates in ``analysis/templates/``.

Autoescaping is on: every value handed to a template is escaped, except the HTML fragments that
the helpers here return (plain ``str``, so that joining them never escapes twice) and that
``page``/``table`` mark safe when they pass them on. The page has inline CSS, no scripts, and no
external resources; ``inline_images`` turns its figures into data URIs, so that one file carries all.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

TEMPLATES = Path(__file__).resolve().parent / "templates"
_ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                   keep_trailing_newline=True)


MISSING = "n/a — not measured"
SHORT_MISSING = "n/a"  # in dense tables, whose captions spell it out


def format_number(value: object, digits: int = 3) -> str:
    """How the page prints every number: ``digits`` significant digits, integers whole, plain
    decimals (no exponent) from 1e-4 up; None is not measured."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.{digits}g}"
    if "e" in text and abs(value) >= 1e-4:
        text = f"{float(text):f}".rstrip("0").rstrip(".")
    return text


# What every template may use: the wording of an absent measurement and the number formatter.
_ENV.globals.update(missing_text=MISSING, fmt=format_number)


def esc(value: object) -> str:
    """``value`` as escaped HTML (for the prose that report.py writes around the templates)."""
    return str(Markup.escape(str(value)))


def render(template: str, **values) -> Markup:
    """A template rendered: HTML, marked safe so that the templates that include it never escape it."""
    return Markup(_ENV.get_template(template).render(**values))


def page(title: str, lede: str, sections: Sequence[Tuple[str, str, str]]) -> str:
    """The whole document; ``lede`` is the "At a glance" block, ``sections`` are ``(id, title,
    body_html)``, listed in a contents nav."""
    return render("page.html.j2", title=title, lede=Markup(lede),
                  sections=[dict(id=sid, title=stitle, body=Markup(body)) for sid, stitle, body in sections])


@dataclass
class Cell:
    """A table cell: text shown, plus the exact stored number (``data-value``) when it shows one;
    ``title`` is a tooltip (e.g. why a number is flagged); ``key`` (``data-key``) names the stored
    result a cell stands for, shown or missing."""

    text: str
    value: Optional[float] = None
    css: str = ""
    title: str = ""
    key: str = ""

    @property
    def value_text(self) -> str:
        return repr(float(self.value))


def table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "", text_columns: int = 1,
          groups: Sequence[Tuple[str, int]] = ()) -> str:
    """A table; cells are ``Cell`` objects or plain values. The first ``text_columns`` align left.
    ``groups`` adds a header row above ``header`` of ``(label, columns spanned)``. ``caption`` is
    HTML (escape what it quotes)."""
    body = [[cell if isinstance(cell, Cell) else Cell(str(cell), css="text" if i < text_columns else "")
             for i, cell in enumerate(row)] for row in rows]
    return render("table.html.j2", header=header, rows=body, caption=Markup(caption), text_columns=text_columns,
                  groups=groups)


def figure(src: str, caption: str, width: Optional[int] = None) -> str:
    """An image with its caption (HTML); ``src`` is relative to the page."""
    alt = html.unescape(re.sub(r"<[^>]+>", "", caption))
    return render("figure.html.j2", src=src, alt=alt, caption=Markup(caption), width=width)


_IMG_SRC = re.compile(r'(<img src=")([^"]+)(")')
_MIME = {".png": "image/png", ".svg": "image/svg+xml"}


def inline_images(document: str, base: Path) -> str:
    """Every ``<img src="relative path">`` of ``document`` as a data URI of the file under ``base``."""

    def embed(match: re.Match) -> str:
        path = Path(base) / html.unescape(match.group(2))
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{match.group(1)}data:{_MIME[path.suffix]};base64,{data}{match.group(3)}"

    return _IMG_SRC.sub(embed, document)
