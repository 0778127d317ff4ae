"""Build self-contained HTML reports: one file, PNGs embedded as data URIs, no external assets."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#666;font-size:.9rem}.bad{color:#b00}.good{color:#070}
"""


def escape(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: Iterable[dict] | Any, columns: list[str] | None = None) -> str:
    """HTML table from dict rows or a pandas DataFrame."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    rows = list(rows)
    if not rows:
        return '<p class="note">(none)</p>'
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{escape(fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(path: str | Path, alt: str = "") -> str:
    """<img> with the PNG/JPEG embedded, so the report stays one file."""
    p = Path(path)
    mime = "image/png" if p.suffix.lower() == ".png" else "image/jpeg"
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<img alt="{escape(alt or p.stem)}" src="data:{mime};base64,{data}">'


@dataclass
class Report:
    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, *parts: str) -> Report:
        self.sections.append((heading, "\n".join(parts)))
        return self

    def render(self) -> str:
        body = "".join(f"<h2>{escape(h)}</h2>\n{c}\n" for h, c in self.sections)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{escape(self.title)}</h1>\n{body}</body></html>")

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.render(), encoding="utf-8")
        return p
