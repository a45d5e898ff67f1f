"""Render an EvalRecord as Markdown, as a self-contained HTML page, and as a PNG bar chart
(matplotlib's Agg canvas, no pyplot, so it is safe in a background thread)."""

from __future__ import annotations

import html
import io
from typing import Any

from kb.eval.records import EvalRecord

_LABELS = {
    "ndcg": "nDCG",
    "recall": "Recall",
    "mrr": "MRR",
    "map": "MAP",
    "label_accuracy": "label acc.",
    "exact_match": "EM",
    "f1": "F1",
    "citation_precision": "cit. P",
    "citation_recall": "cit. R",
    "grounded_rate": "grounded",
    "not_covered_rate": "not covered",
    "latency_mean_s": "latency mean (s)",
    "latency_p50_s": "latency p50 (s)",
    "latency_p95_s": "latency p95 (s)",
    "answered": "answered",
}
_QUALITY_ANSWER_METRICS = (
    "label_accuracy",
    "exact_match",
    "f1",
    "citation_precision",
    "citation_recall",
    "grounded_rate",
)


def metric_label(name: str) -> str:
    """ "ndcg@10" -> "nDCG@10", "exact_match" -> "EM"."""
    base, at, cutoff = name.partition("@")
    return f"{_LABELS.get(base, base)}{at}{cutoff}"


def format_value(value: Any, metric: str = "") -> str:
    if value is None:
        return "–"
    if metric == "answered":
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.3f}" if metric.startswith("latency") else f"{value:.4f}"
    return str(value)


def metric_names(record: EvalRecord) -> list[str]:
    names: list[str] = []
    for group in record.metrics.values():
        names += [m for m in group if m not in names]
    return names


def quality_metrics(record: EvalRecord) -> list[str]:
    """The metrics in [0, 1] that the chart shows."""
    if record.kind == "answers":
        return [m for m in _QUALITY_ANSWER_METRICS if m in metric_names(record)]
    return [m for m in metric_names(record) if not m.startswith("latency")]


def title(record: EvalRecord) -> str:
    kind = "Retrieval" if record.kind == "retrieval" else "Answer"
    return f"{kind} evaluation {record.eval_id}" + (f" ({record.name})" if record.name else "")


# --- tables as plain data, shared by the Markdown and HTML writers --------------------------


def summary_table(record: EvalRecord) -> tuple[list[str], list[list[str]]]:
    group_label = "method" if record.kind == "retrieval" else "mode"
    names = metric_names(record)
    header = [group_label] + [metric_label(m) for m in names]
    rows = [
        [group] + [format_value(values.get(m), m) for m in names]
        for group, values in record.metrics.items()
    ]
    return header, rows


def detail_table(record: EvalRecord) -> tuple[list[str], list[list[str]]]:
    """One row per query (retrieval) or question (answers), the groups side by side."""
    groups = list(record.metrics)
    if record.kind == "retrieval":
        header = ["id", "query", "relevant"] + [f"{g} nDCG@10 / R@10" for g in groups]
        rows = []
        for row in record.rows:
            cells = [row["id"], row["query"], ", ".join(row["relevant"])]
            for g in groups:
                scores = row["methods"].get(g, {})
                cells.append(
                    f"{format_value(scores.get('ndcg@10'))} / {format_value(scores.get('recall@10'))}"
                )
            rows.append(cells)
        return header, rows
    header = ["id", "question", "gold"]
    for g in groups:
        header += [f"{g} answer", f"{g} scores"]
    rows = []
    for row in record.rows:
        cells = [row["id"], row["question"], _gold_text(row["gold"])]
        for g in groups:
            outcome = row["modes"].get(g, {})
            if "error" in outcome:
                cells += [f"error: {outcome['error']}", ""]
            else:
                cells += [outcome.get("answer", ""), _answer_scores(outcome)]
        rows.append(cells)
    return header, rows


def _gold_text(gold: dict[str, Any]) -> str:
    parts = []
    if gold.get("label") is not None:
        parts.append(f"label: {gold['label']}")
    if gold.get("answers"):
        parts.append("answer: " + " / ".join(gold["answers"]))
    if gold.get("sources"):
        parts.append("sources: " + ", ".join(gold["sources"]))
    return "; ".join(parts)


def _answer_scores(outcome: dict[str, Any]) -> str:
    parts = []
    if outcome.get("label_correct") is not None:
        parts.append("label " + ("✓" if outcome["label_correct"] else "✗"))
    if outcome.get("exact_match") is not None:
        parts.append(f"EM {outcome['exact_match']:.0f}")
    if outcome.get("f1") is not None:
        parts.append(f"F1 {outcome['f1']:.2f}")
    if outcome.get("citation_recall") is not None:
        parts.append(
            f"cit P {format_value(outcome.get('citation_precision'))} "
            f"R {format_value(outcome['citation_recall'])}"
        )
    parts.append("grounded" if outcome.get("grounded") else "ungrounded")
    if outcome.get("not_covered"):
        parts.append("not covered")
    parts.append(f"{outcome.get('latency_s', 0.0):.2f}s")
    return " · ".join(parts)


def context_items(record: EvalRecord) -> list[tuple[str, str]]:
    items = [("created", record.created_at), ("seed", str(record.seed))]
    items += [("duration", f"{record.duration_s:.1f}s")]
    items += [(key, _compact(value)) for key, value in record.context.items() if value is not None]
    return items


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value)
    return str(value)


# --- writers --------------------------------------------------------------------------------


def render_markdown(record: EvalRecord) -> str:
    """The record as a Markdown report: context, one summary table, one row per question."""
    lines = [f"# {title(record)}", ""]
    lines += [f"- **{key}**: {_md_cell(value)}" for key, value in context_items(record)]
    lines += ["", "## Results", "", *_md_table(*summary_table(record)), ""]
    if record.errors:
        lines += ["## Not run", ""]
        lines += [f"- **{group}**: {_md_cell(message)}" for group, message in record.errors.items()]
        lines.append("")
    lines += ["![chart](chart.png)", ""]
    heading = "Per query" if record.kind == "retrieval" else "Per question"
    lines += [f"## {heading}", "", *_md_table(*detail_table(record)), ""]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return (
        str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")
    )


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.answer { max-width: 28rem; white-space: pre-wrap; }
img { max-width: 100%; }
"""


def render_html(record: EvalRecord) -> str:
    """The same report as a self-contained HTML page (the chart is the sibling chart.png)."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title(record))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title(record))}</h1>",
        "<ul>"
        + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in context_items(record))
        + "</ul>",
        "<h2>Results</h2>",
        _html_table(*summary_table(record), css_id="summary"),
    ]
    if record.errors:
        parts.append("<h2>Not run</h2><ul>")
        parts += [f"<li><b>{esc(g)}</b>: {esc(m)}</li>" for g, m in record.errors.items()]
        parts.append("</ul>")
    parts.append('<img src="chart.png" alt="chart of the results">')
    heading = "Per query" if record.kind == "retrieval" else "Per question"
    parts += [f"<h2>{heading}</h2>", _html_table(*detail_table(record), css_id="rows")]
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]], css_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"answer" if h.endswith("answer") else ""}">{html.escape(str(c))}</td>'
            for h, c in zip(header, row, strict=True)
        )
        + "</tr>\n"
        for row in rows
    )
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def render_chart_png(record: EvalRecord) -> bytes:
    """Grouped bars: one group per metric, one bar per method or mode; answer evaluations
    get a second panel with latency p50 and p95 per mode."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(record.metrics)
    metrics = quality_metrics(record)
    with_latency = record.kind == "answers" and groups
    fig = Figure(figsize=(11 if with_latency else 9, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1) if with_latency else fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(groups), 1)
    for i, group in enumerate(groups):
        values = [record.metrics[group].get(m) for m in metrics]
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, [float("nan") if v is None else v for v in values], width, label=group)
    ax.set_xticks(range(len(metrics)), [metric_label(m) for m in metrics], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(title(record), fontsize=10)
    if groups:
        ax.legend(fontsize=8)
    if with_latency:
        lat = fig.add_subplot(1, 2, 2)
        for j, key in enumerate(("latency_p50_s", "latency_p95_s")):
            values = [record.metrics[g].get(key) for g in groups]
            xs = [i + (j - 0.5) * 0.4 for i in range(len(groups))]
            lat.bar(
                xs, [float("nan") if v is None else v for v in values], 0.4, label=metric_label(key)
            )
        lat.set_xticks(range(len(groups)), groups)
        lat.set_ylabel("seconds")
        lat.set_title("latency per mode", fontsize=10)
        lat.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
