"""``analysis/report.html``: the report as one self-contained file that opens from disk with no
network -- styles inline, figures inlined as base64 PNG, no script.

It renders the same sections as ``report.md`` (``report.report_sections``), in the same order:
the answer first (with the synthetic banner where it applies), the resolved config collapsed at
the end. The Markdown of those sections is converted here by a small converter that knows the
constructs ``report`` writes (headings, paragraphs, lists, pipe tables, block quotes, images,
code fences, ``<details>``, inline code, bold and links); nothing is fetched.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:0 auto;padding:1rem 1.5rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.5rem;margin:.2rem 0 .6rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;
margin-top:2rem}h3{font-size:1.05rem}
section.answer{border:2px solid #0072B2;border-radius:6px;padding:.2rem 1rem .6rem;
background:#f3f8fc}
section.answer h2+p,section.answer h2+blockquote+p{font-size:1.2rem}
section.answer.nothing{border-color:#D55E00;background:#fdf5ef}
blockquote{margin:.5rem 0;padding:.4rem .8rem;border-left:5px solid #D55E00;background:#fff4e5}
table{border-collapse:collapse;font-size:.78rem;margin:.5rem 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;white-space:nowrap}
th{background:#eee;position:sticky;top:0}
code{font-size:.85em;background:#f2f2f2;padding:0 2px;word-break:break-all}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.8rem}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5rem 0}
details{margin:.6rem 0}summary{cursor:pointer;font-weight:600}
"""

_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>")]
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")


def inline(text: str) -> str:
    """Markdown inline spans to HTML: code spans are set aside first (their content stays
    literal), then the rest is escaped and gets links, bold and emphasis, then the code spans
    return."""
    codes = []

    def keep(match) -> str:
        codes.append(f"<code>{html.escape(match.group(1))}</code>")
        return f"\x00{len(codes) - 1}\x00"
    text = html.escape(_CODE.sub(keep, text), quote=False).replace(r"\|", "|")
    text = _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', text)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], text)


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|")) if line.strip() != "|" else []
    return [c.strip() for c in cells]


def palette_png(path: Path) -> bytes:
    """The PNG at ``path`` with at most 256 colours: a plot's few colours survive, and the page
    stays a few MB with a full study's figures (about 2.6x smaller than the figure files)."""
    from PIL import Image

    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(colors=256).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _image(alt: str, source: str, folder: Path) -> str:
    path = folder / source
    if not path.is_file():
        return f"<p><em>figure {html.escape(source)} was not written</em></p>"
    data = base64.b64encode(palette_png(path)).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def markdown_to_html(text: str, folder: Path) -> str:
    """The HTML of the Markdown ``report`` writes; images under ``folder`` are inlined."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(block))}</code></pre>")
            i += 1
        elif stripped.startswith(("<details", "</details")):
            summary = re.search(r"<summary>(.*?)</summary>", stripped)
            out.append(f"<details><summary>{inline(summary.group(1))}</summary>"
                       if summary else "</details>" if "</details" in stripped else "<details>")
            i += 1
        elif m := re.match(r"^(#{1,4}) (.*)$", stripped):
            level = len(m.group(1))
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
            i += 1
        elif m := _IMAGE.match(stripped):
            out.append(_image(m.group(1), m.group(2), folder))
            i += 1
        elif stripped.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            head, body = _cells(rows[0]), [r for r in rows[1:] if not re.match(r"^\|(-+\|)+$",
                                                                               r.strip())]
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head)
                       + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in _cells(r))
                                 + "</tr>" for r in body) + "</tbody></table>")
        elif stripped.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            out.append(f"<blockquote>{inline(' '.join(quote))}</blockquote>")
        elif stripped.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(lines[i].strip()[2:])
                i += 1
            out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(
                    r"^(#{1,4} |\||>|- |```|!\[|<details|</details)", lines[i].strip()):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def render(sections: dict[str, str], folder: Path, *, title: str, status: str) -> str:
    """The whole page: one ``<section>`` per report section, the answer first and marked by
    ``status`` ("ship" or "nothing")."""
    body = []
    for name, text in sections.items():
        if not text:
            continue
        if name == "title":
            body.append(f"<header>{markdown_to_html(text, folder)}</header>")
            continue
        classes = f"{name} {status}" if name == "answer" else name
        body.append(f'<section class="{classes}" id="{name}">\n{markdown_to_html(text, folder)}'
                    "\n</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
