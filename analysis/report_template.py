"""The HTML scaffolding of the report: one page, inline CSS, no scripts, no external resources."""

from __future__ import annotations

import html
from typing import Iterable, Optional, Sequence, Tuple

CSS = """
body { font: 15px/1.5 Georgia, 'Times New Roman', serif; color: #222; max-width: 72rem;
       margin: 0 auto; padding: 1rem 2rem 4rem; background: #fff; }
h1 { font-size: 1.9rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.4rem; border-bottom: 1px solid #ccc; margin-top: 2.5rem; }
h3 { font-size: 1.15rem; margin-top: 1.8rem; }
.lede { color: #333; margin-top: 0; }
nav ol { columns: 2; font-size: 0.95rem; }
table { border-collapse: collapse; margin: 0.8rem 0 0.3rem; font: 13px/1.35 Menlo, Consolas, monospace; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; vertical-align: top; white-space: nowrap; }
td.text { white-space: normal; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
td.missing { color: #999; font-style: italic; }
td.pass { color: #176b1d; font-weight: bold; }
td.fail { color: #a21c1c; font-weight: bold; }
caption { caption-side: bottom; text-align: left; font: italic 13px/1.4 Georgia, serif; color: #555;
          padding-top: 0.3rem; }
figure { margin: 1rem 0; display: inline-block; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; font-size: 13px; color: #555; max-width: 40rem; }
pre { background: #f6f6f6; padding: 0.5rem 0.8rem; overflow-x: auto; font-size: 13px; }
.note { background: #fff8e1; border-left: 4px solid #e0b000; padding: 0.4rem 0.8rem; }
.scroll { overflow-x: auto; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, lede: str, sections: Sequence[Tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are ``(id, title, body_html)``, listed in a contents nav."""
    contents = "".join(f'<li><a href="#{esc(sid)}">{esc(stitle)}</a></li>' for sid, stitle, _ in sections)
    body = "".join(f'<section id="{esc(sid)}">\n<h2>{esc(stitle)}</h2>\n{shtml}\n</section>\n' for sid, stitle, shtml in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{esc(title)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n<div class=\"lede\">{lede}</div>\n"
        f"<nav><ol>{contents}</ol></nav>\n{body}</body>\n</html>\n"
    )


class Cell:
    """A table cell: text shown, plus the exact stored number (``data-value``) when it shows one."""

    def __init__(self, text: str, value: Optional[float] = None, css: str = ""):
        self.text, self.value, self.css = text, value, css

    def render(self) -> str:
        attrs = f' class="{self.css}"' if self.css else ""
        if self.value is not None:
            attrs += f' data-value="{self.value!r}"'
        return f"<td{attrs}>{esc(self.text)}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "", text_columns: int = 1,
          groups: Sequence[Tuple[str, int]] = ()) -> str:
    """A table; cells are ``Cell`` objects or plain values. The first ``text_columns`` align left.
    ``groups`` adds a header row above ``header`` of ``(label, columns spanned)``."""
    head = "".join(f'<th class="text">{esc(h)}</th>' if i < text_columns else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    if groups:
        top = "".join(f'<th colspan="{span}">{esc(label)}</th>' for label, span in groups)
        head = f"{top}</tr><tr>{head}"
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if not isinstance(cell, Cell):
                cell = Cell(str(cell), css="text" if i < text_columns else "")
            cells.append(cell.render())
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure(src: str, caption: str, width: Optional[int] = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    return f'<figure{style}><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{caption}</figcaption></figure>'


def code(command: str) -> str:
    return f"<pre><code>{esc(command)}</code></pre>"
