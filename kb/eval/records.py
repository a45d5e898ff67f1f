"""Evaluation records: one folder per run under settings.evals_dir/<eval_id>/ holding
result.json, report.md, report.html and chart.png; listed, loaded and compared by id."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kb.errors import InvalidInput, NotFound
from kb.files import atomic_write
from kb.settings import Settings

EvalKind = Literal["retrieval", "answers"]
RESULT_FILE = "result.json"
_EVAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class EvalRecord:
    """The outcome of one evaluation run and everything needed to reproduce it.

    `metrics` maps a group (a retrieval method or an answering mode) to metric -> value (None
    where a metric does not apply); `rows` holds one entry per query or question; `context`
    names what the run measured (collection, its generation, embedder id, model names).
    """

    eval_id: str
    kind: EvalKind
    created_at: str
    seed: int
    spec: dict[str, Any]
    context: dict[str, Any]
    metrics: dict[str, dict[str, float | None]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # group -> why it could not run
    duration_s: float = 0.0
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class EvalSummary:
    """What `kb eval list` shows for one record."""

    eval_id: str
    kind: EvalKind
    created_at: str
    name: str | None
    collection: str | None
    groups: list[str]
    metrics: dict[str, dict[str, float | None]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetricDelta:
    group: str
    metric: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}


@dataclass
class EvalComparison:
    """Metric deltas (b - a) for every group and metric in either record, and what changed
    between the two runs' contexts (collection generation, embedder, models)."""

    a: str
    b: str
    kind: EvalKind
    deltas: list[MetricDelta]
    context_changes: dict[str, tuple[Any, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "kind": self.kind,
            "deltas": [d.to_dict() for d in self.deltas],
            "context_changes": {k: list(v) for k, v in self.context_changes.items()},
        }


def new_eval_id(kind: EvalKind) -> str:
    """A sortable, unique id such as "retrieval-20250101-120000-3fa9c2"."""
    return f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def eval_dir(settings: Settings, eval_id: str) -> Path:
    if not _EVAL_ID.match(eval_id):
        raise InvalidInput(
            f"invalid evaluation id {eval_id!r}: ids are letters, digits, '.', '_' and '-'; "
            "run `kb eval list` to see them"
        )
    return settings.evals_dir / eval_id


def save_eval(settings: Settings, record: EvalRecord) -> Path:
    """Write the record's folder (reports, chart, then result.json), each file atomically."""
    from kb.eval.report import render_chart_png, render_html, render_markdown

    folder = eval_dir(settings, record.eval_id)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "report.md", render_markdown(record).encode("utf-8"))
    atomic_write(folder / "report.html", render_html(record).encode("utf-8"))
    atomic_write(folder / "chart.png", render_chart_png(record))
    # result.json last: a folder without it is an unfinished run and is not listed
    payload = json.dumps(record.to_dict(), indent=2, ensure_ascii=False, default=str)
    atomic_write(folder / RESULT_FILE, payload.encode("utf-8"))
    return folder


def load_eval(settings: Settings, eval_id: str) -> EvalRecord:
    """The record saved under this id."""
    path = eval_dir(settings, eval_id) / RESULT_FILE
    if not path.is_file():
        raise NotFound(
            f"no evaluation {eval_id!r} in {settings.evals_dir}: run `kb eval list` to see the ids"
        )
    try:
        return EvalRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InvalidInput(
            f"evaluation file {path} is unreadable ({exc}): delete its folder and run it again"
        ) from exc


def list_evals(settings: Settings) -> list[EvalSummary]:
    """Summaries of the saved records, newest first; unreadable folders are skipped."""
    if not settings.evals_dir.is_dir():
        return []
    summaries = []
    for folder in settings.evals_dir.iterdir():
        if not (folder / RESULT_FILE).is_file() or not _EVAL_ID.match(folder.name):
            continue
        try:
            record = load_eval(settings, folder.name)
        except InvalidInput:
            continue
        summaries.append(
            EvalSummary(
                eval_id=record.eval_id,
                kind=record.kind,
                created_at=record.created_at,
                name=record.name,
                collection=record.context.get("collection"),
                groups=list(record.metrics),
                metrics=record.metrics,
            )
        )
    return sorted(summaries, key=lambda s: (s.created_at, s.eval_id), reverse=True)


def compare_evals(a: EvalRecord, b: EvalRecord) -> EvalComparison:
    """Deltas b - a for each (group, metric) of either record; the kinds must match."""
    if a.kind != b.kind:
        raise InvalidInput(
            f"cannot compare {a.eval_id!r} ({a.kind}) with {b.eval_id!r} ({b.kind}): "
            "pick two evaluations of the same kind"
        )
    deltas = []
    for group in _union(a.metrics, b.metrics):
        metrics_a, metrics_b = a.metrics.get(group, {}), b.metrics.get(group, {})
        for metric in _union(metrics_a, metrics_b):
            deltas.append(MetricDelta(group, metric, metrics_a.get(metric), metrics_b.get(metric)))
    changes = {
        key: (a.context.get(key), b.context.get(key))
        for key in _union(a.context, b.context)
        if a.context.get(key) != b.context.get(key)
    }
    return EvalComparison(
        a=a.eval_id, b=b.eval_id, kind=a.kind, deltas=deltas, context_changes=changes
    )


def _union(first: dict, second: dict) -> list:
    return list(first) + [key for key in second if key not in first]
