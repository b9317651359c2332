"""The report's HTML: one self-contained page that refers to its PNGs by relative path (readable offline)."""

from __future__ import annotations

import html
from typing import Any

STYLE = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;
border-bottom:1px solid #eee}.note{color:#666;font-size:.9em}"""


def table(rows: list[tuple[str, Any]], header: tuple[str, str] | None = None) -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def section(title: str, body: str, note: str = "") -> str:
    shown = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{shown}{body}</section>"


def image(file: str, alt: str) -> str:
    return f'<img src="{html.escape(file)}" alt="{html.escape(alt)}">'


def page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n")
