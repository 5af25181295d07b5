"""The document's blocks as markdown (plots and WAVs linked by relative path) and as one
self-contained HTML page (no external CSS, JS or fonts: plots as base64 PNG, WAVs as
`<audio>` data URIs and also linked), with every name and value escaped."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from urllib.parse import quote

from emogen.experiment.report.document import AudioClip, Block, Cell, Code, Heading, Para, Plot, Table

AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: middle; }
th { background: #f3f3f3; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
audio { height: 2em; vertical-align: middle; }
"""


def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, AudioClip):
        return f"[{_md_text(cell.rel)}]({quote(cell.rel)})"
    return _md_text(str(cell))


def md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_text(h) for h in table.headers) + " |",
        "|" + "|".join("---" for _ in table.headers) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_md(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Para):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(md_table(block))
        elif isinstance(block, Code):
            parts.append("```bash\n" + block.text + "\n```")
        elif isinstance(block, Plot):
            parts.append(f"![{block.title}]({quote(block.rel)})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_cell(cell: Cell) -> str:
    esc = html.escape
    if isinstance(cell, AudioClip):
        mime = AUDIO_MIME.get(cell.path.suffix.lower(), "audio/wav")
        return (
            f'<audio controls src="{_data_uri(cell.path, mime)}"></audio> '
            f'<a href="{esc(quote(cell.rel))}">{esc(cell.rel)}</a>'
        )
    return esc(str(cell))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>\n" for row in table.rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def render_html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{esc(block.text)}</code></pre>")
        elif isinstance(block, Plot):
            parts.append(
                f'<figure><img src="{_data_uri(block.path, "image/png")}" alt="{esc(block.title)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
