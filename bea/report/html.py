"""Self-contained HTML pages: headings, text, tables and embedded PNG plots.

A :class:`Page` collects blocks and renders one HTML file with no external resources
(plots are base64 ``data:`` URIs, styles inline), so a report can be mailed or opened
offline. Plots are drawn with matplotlib's Agg backend, which needs no display.

    page = Page("multitask quick")
    page.heading("Losses")
    fig, ax = new_figure()
    ax.plot(steps, loss)
    page.figure(fig, caption="training loss")       # closes the figure
    page.table([{"method": "sgd", "acc": 0.91}], caption="final metrics")
    html = page.render()                             # a str; write it where you like

Helpers: :func:`line_plot` (several named series, optional log axis and vertical
markers), :func:`heatmap` (a matrix with row and column labels), :func:`format_number`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: .3em 0; }
figure { display: inline-block; margin: .6em 1em .6em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; max-width: 520px; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
.note { color: #555; font-size: .9em; }
"""


def format_number(value: Any, digits: int = 4) -> str:
    """Numbers to short text (``4`` significant digits, ints as they are)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def new_figure(width: float = 5.2, height: float = 3.4, ncols: int = 1):
    """``(figure, axes)`` on the Agg backend."""
    plt = _matplotlib()
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=True)
    return fig, axes


def figure_to_data_uri(fig: Any, dpi: int = 100) -> str:
    """PNG ``data:`` URI of a matplotlib figure; the figure is closed."""
    plt = _matplotlib()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def line_plot(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    vlines: Iterable[tuple[float, str]] = (),
    hline: float | None = None,
):
    """A figure with one line per ``name: (x, y)``; ``vlines`` are ``(x, label)`` markers."""
    fig, ax = new_figure()
    for name, (x, y) in curves.items():
        ax.plot(list(x), list(y), label=name, linewidth=1.3)
    for x, label in vlines:
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        if label:
            ax.annotate(
                label,
                (x, 1),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
                ha="right",
                color="grey",
            )
    if hline is not None:
        ax.axhline(hline, color="black", linewidth=0.6)
    if logy:
        ax.set_yscale("symlog" if _has_nonpositive(curves) else "log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def _has_nonpositive(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> bool:
    return any(v <= 0 for _, y in curves.values() for v in y if not math.isnan(v))


def heatmap(
    matrix: Sequence[Sequence[float]],
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "RdBu_r",
    symmetric: bool = True,
):
    """A matrix as an image; with ``symmetric`` the colour scale is centred on 0."""
    import numpy as np

    data = np.asarray(matrix, dtype=float)
    fig, ax = new_figure(width=6.4, height=max(2.4, 0.28 * data.shape[0] + 1.2))
    limit = float(np.nanmax(np.abs(data))) if data.size and symmetric else None
    limit = limit or None
    image = ax.imshow(
        data,
        aspect="auto",
        cmap=cmap,
        vmin=-limit if limit else None,
        vmax=limit if limit else None,
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, fraction=0.04)
    if row_labels:
        ax.set_yticks(range(len(row_labels)))
        ax.set_yticklabels(row_labels, fontsize=7)
    if col_labels:
        step = max(1, len(col_labels) // 10)
        ax.set_xticks(range(0, len(col_labels), step))
        ax.set_xticklabels(list(col_labels)[::step], fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


class Page:
    """An HTML page built block by block (state: the list of blocks)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.figure_count = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")

    def preformatted(self, text: str) -> None:
        self.blocks.append(f"<pre>{html.escape(text)}</pre>")

    def raw(self, markup: str) -> None:
        """Insert trusted markup as is."""
        self.blocks.append(markup)

    def figure(self, fig: Any, caption: str = "") -> None:
        """Embed a matplotlib figure as a base64 PNG (the figure is closed)."""
        uri = figure_to_data_uri(fig)
        self.figure_count += 1
        alt = html.escape(caption or f"figure {self.figure_count}")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f'<figure><img src="{uri}" alt="{alt}">{cap}</figure>')

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        caption: str = "",
    ) -> None:
        """A table of dict rows; ``columns`` defaults to the keys in first-seen order."""
        if columns is None:
            columns = []
            for row in rows:
                columns.extend(k for k in row if k not in columns)
        parts = ["<table>"]
        if caption:
            parts.append(f"<caption>{html.escape(caption)}</caption>")
        head = "".join(f'<th class="text">{html.escape(str(c))}</th>' for c in columns)
        parts.append(f"<tr>{head}</tr>")
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column, "")
                cls = "" if isinstance(value, (int, float)) else ' class="text"'
                cells.append(f"<td{cls}>{html.escape(format_number(value))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        self.blocks.append("".join(parts))

    def render(self) -> str:
        body = "\n".join(self.blocks)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n"
        )


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The same rows as a GitHub-flavoured Markdown table (for docs)."""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_number(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON text (for config tables)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat
