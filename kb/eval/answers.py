"""Answer quality across modes: question files, SQuAD-style answer metrics, citation metrics,
and the runner that sends every question through every mode.

Question files are JSONL, one object a line: "question", and optionally "id", "answer" or
"answers" (alternative gold strings), "sources" or "gold_pages" (gold source paths, or doc
ids), "label", and "unanswerable": true (or "why": the reason the documents do not answer it).
The sqlite-docs set (qa.jsonl, unanswerable.jsonl) reads as it is; a folder stands for its
*.jsonl files.

The runner depends only on `AnswerFn`, a callable (question, mode) -> AnswerOutcome, so the
answering core, an HTTP client or a test double can be evaluated the same way.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kb.answering import MODES
from kb.errors import InvalidInput, KBError, ModelNotFound, ModeUnavailable
from kb.eval.records import EvalRecord, new_eval_id, utc_now
from kb.prompting import cited_numbers, not_covered_answer

#: an answer longer than this never counts as containing a gold string: a long answer would
#: otherwise score by listing everything it found
MAX_ANSWER_WORDS = 80
SUPPORT_POLICIES = ("flag", "drop", "fallback")

#: per-mode metrics in display order; the latency ones are seconds
ANSWER_METRICS = (
    "label_accuracy",
    "exact_match",
    "f1",
    "gold_answer_rate",
    "answer_words_p50",
    "citation_precision",
    "citation_recall",
    "gold_citation_rate",
    "supported_share",
    "grounded_rate",
    "not_covered_rate",
    "unanswerable_not_covered_rate",
    "stray_citation_rate",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p95_s",
)


@dataclass
class Question:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)  # gold answer strings
    label: str | None = None  # gold label, for classification-style questions
    sources: list[str] = field(default_factory=list)  # gold source paths or doc ids
    unanswerable: bool = False  # the documents do not answer it: "not covered" is right


@dataclass
class AnswerOutcome:
    """What one mode answered to one question."""

    text: str
    cited_sources: list[str] = field(default_factory=list)
    not_covered: bool = False
    latency_s: float = 0.0
    model: str | None = None
    # share of the answer's sentences the support check found in their passages (None: unchecked)
    supported_share: float | None = None
    stray_citations: list[int] = field(default_factory=list)  # [n] beyond the passages given
    support_action: str | None = None  # what the support check did: kept, flagged, fallback...


class AnswerFn(Protocol):
    def __call__(self, question: str, mode: str) -> AnswerOutcome: ...


@dataclass
class AnswerEvalSpec:
    """What to evaluate: a JSONL question file (or questions already loaded) across modes."""

    questions: str | Path | list[str | Path] | list[Question]
    modes: list[str] = field(default_factory=lambda: list(MODES))
    collection: str | None = None
    model: str | None = None
    k: int = 5
    seed: int = 0
    name: str | None = None
    support: str | None = None  # the answering core's support policy; None: its default
    # the folder the collection was ingested from: a source under it matches a gold path only
    # by its path relative to it ("backup.html" is then not "c3ref/backup.html")
    source_root: str | None = None

    def validate(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise InvalidInput(
                f"unknown modes {unknown or self.modes!r}: use some of {', '.join(MODES)}"
            )
        if self.k < 1:
            raise InvalidInput(f"k={self.k}: give the RAG modes at least 1 passage")
        if self.support is not None and self.support not in SUPPORT_POLICIES:
            raise InvalidInput(
                f"unknown support policy {self.support!r}: use one of {', '.join(SUPPORT_POLICIES)}"
            )

    def loaded_questions(self) -> list[Question]:
        if isinstance(self.questions, list) and all(
            isinstance(q, Question) for q in self.questions
        ):
            return list(self.questions)  # type: ignore[arg-type]
        return load_questions(self.questions)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.questions, (str, Path)):
            data["questions"] = str(self.questions)
        elif all(isinstance(q, (str, Path)) for q in self.questions):
            data["questions"] = [str(q) for q in self.questions]
        else:
            data["questions"] = f"<{len(self.questions)} questions>"
        return data


# --- question files -------------------------------------------------------------------------


def load_questions(paths: str | Path | Sequence[str | Path]) -> list[Question]:
    """Read one or more JSONL question files (a folder: its *.jsonl files); see the module doc."""
    files: list[Path] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise InvalidInput(f"no *.jsonl question file in folder {path}: pass a JSONL file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInput(
                f"no question file at {path}: pass a JSONL file with one question a line"
            )
    questions: list[Question] = []
    seen: set[str] = set()
    for path in files:
        before = len(questions)
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    question = _question(line, f"{path}:{lineno}", len(questions) + 1)
                    if question.id in seen:
                        raise InvalidInput(
                            f"{path}:{lineno} repeats id {question.id!r}: give every question "
                            "its own id"
                        )
                    seen.add(question.id)
                    questions.append(question)
        if len(questions) == before:
            raise InvalidInput(f"question file {path} is empty: add one JSON object a line")
    return questions


def _question(line: str, where: str, number: int) -> Question:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where} is not valid JSON ({exc.msg}): fix the line") from exc
    if not isinstance(data, dict) or not str(data.get("question") or "").strip():
        raise InvalidInput(f'{where} has no "question": every line needs one')
    answers = _string_list(data.get("answers", data.get("answer")), where, "answers")
    sources = _string_list(data.get("sources", data.get("gold_pages")), where, "sources")
    unanswerable = bool(data.get("unanswerable", "why" in data))
    if unanswerable and (answers or sources):
        raise InvalidInput(
            f"{where} is marked unanswerable but gives answers or sources: drop one or the other"
        )
    label = data.get("label")
    return Question(
        id=str(data.get("id", f"q{number}")),
        question=str(data["question"]),
        answers=answers,
        label=None if label is None else str(label),
        sources=sources,
        unanswerable=unanswerable,
    )


def _string_list(value: Any, where: str, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidInput(f'{where}: "{key}" is {value!r}; use a string or a list of strings')


# --- metrics --------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1, the best over the gold answers."""
    return max(
        (_f1(normalize_answer(prediction).split(), normalize_answer(g).split()) for g in golds),
        default=0.0,
    )


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def label_correct(prediction: str, gold: str, labels: Sequence[str]) -> bool:
    """The normalised answer equals the gold label, or the gold label is the only one of the
    known label names that occurs in it (as whole words)."""
    pred = normalize_answer(prediction)
    if pred == normalize_answer(gold):
        return True
    present = {
        normalize_answer(lab) for lab in labels if _contains_words(pred, normalize_answer(lab))
    }
    return present == {normalize_answer(gold)}


def _contains_words(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def source_matches(cited: str, gold: str, root: str | None = None) -> bool:
    """A cited source matches a gold one if equal, or if the cited path ends with the gold
    path at a path boundary ("docs/a.md" matches "/data/docs/a.md", not "/data/docs/xa.md").

    With `root`, the folder the gold paths are relative to (the folder that was ingested), a
    source matches only by its path relative to it, so "backup.html" is not
    "c3ref/backup.html"; a relative source is taken as relative to the root already.
    """
    cited, gold = cited.replace("\\", "/"), gold.replace("\\", "/").lstrip("/")
    if "#" in cited and "#" not in gold:
        cited = cited.split("#", 1)[0]  # "table.csv#3" cites table.csv
    if root is None:
        return cited == gold or cited.endswith("/" + gold)
    return relative_source(cited, root) == gold


def relative_source(source: str, root: str) -> str:
    """`source` relative to `root` when it lies under it; otherwise as it is."""
    source = source.replace("\\", "/")
    prefix = root.replace("\\", "/").rstrip("/") + "/"
    return source[len(prefix) :] if source.startswith(prefix) else source


def citation_scores(
    cited: Sequence[str], gold: Sequence[str], root: str | None = None
) -> tuple[float | None, float | None]:
    """(precision, recall) of the distinct cited sources against the gold ones; precision is
    None when nothing was cited and both are None without gold sources."""
    if not gold:
        return None, None
    distinct = list(dict.fromkeys(cited))
    recall = sum(any(source_matches(c, g, root) for c in distinct) for g in gold) / len(gold)
    if not distinct:
        return None, recall
    precision = sum(any(source_matches(c, g, root) for g in gold) for c in distinct) / len(distinct)
    return precision, recall


_CITATION_MARK = re.compile(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")


def answer_words(text: str) -> int:
    """Words in an answer; citation marks like [1] or [2, 3] are not words."""
    return len(_CITATION_MARK.sub(" ", text).split())


def contains_gold(answer: str, golds: Sequence[str], max_words: int = MAX_ANSWER_WORDS) -> bool:
    """Any gold string occurs in the answer (case-insensitive, whitespace-normalised), and the
    answer has at most `max_words` words."""
    if answer_words(answer) > max_words:
        return False
    flat = " ".join(answer.lower().split())
    return any(g.strip() and " ".join(g.lower().split()) in flat for g in golds)


def says_not_covered(outcome: AnswerOutcome) -> bool:
    """The answer is the not-covered one: flagged by the core, or the model said the sentence."""
    if outcome.not_covered:
        return True
    sentence = " ".join(not_covered_answer().lower().split()).rstrip(".")
    return sentence in " ".join(outcome.text.lower().split())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def score_outcome(
    question: Question,
    outcome: AnswerOutcome,
    labels: Sequence[str],
    root: str | None = None,
) -> dict[str, Any]:
    """The per-question scores of one mode's answer (None where the gold data is missing)."""
    precision, recall = citation_scores(outcome.cited_sources, question.sources, root)
    not_covered = says_not_covered(outcome)
    return {
        "answer": outcome.text,
        "cited_sources": list(outcome.cited_sources),
        "not_covered": not_covered,
        "latency_s": outcome.latency_s,
        "model": outcome.model,
        "answer_words": answer_words(outcome.text),
        "exact_match": exact_match(outcome.text, question.answers) if question.answers else None,
        "f1": token_f1(outcome.text, question.answers) if question.answers else None,
        "gold_answer": contains_gold(outcome.text, question.answers) if question.answers else None,
        "label_correct": (
            label_correct(outcome.text, question.label, labels)
            if question.label is not None
            else None
        ),
        "citation_precision": precision,
        "citation_recall": recall,
        "gold_citation": (
            any(source_matches(c, g, root) for c in outcome.cited_sources for g in question.sources)
            if question.sources
            else None
        ),
        "supported_share": outcome.supported_share,
        "support_action": outcome.support_action,
        "stray_citations": list(outcome.stray_citations),
        "unanswerable": question.unanswerable,
        "grounded": bool(outcome.cited_sources) and not not_covered,
    }


def aggregate_mode(scored: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per-mode metrics over the questions the mode answered (rows with an "error" are left out)."""
    answered = [s for s in scored if "error" not in s]
    latencies = [s["latency_s"] for s in answered]
    labels = [None if s["label_correct"] is None else float(s["label_correct"]) for s in answered]
    answerable = [s for s in answered if not s.get("unanswerable")]
    unanswerable = [s for s in answered if s.get("unanswerable")]
    return {
        "label_accuracy": _mean(labels),
        "exact_match": _mean([s["exact_match"] for s in answered]),
        "f1": _mean([s["f1"] for s in answered]),
        "gold_answer_rate": _mean([_float(s.get("gold_answer")) for s in answered]),
        "answer_words_p50": percentile([s["answer_words"] for s in answerable], 50),
        "citation_precision": _mean([s["citation_precision"] for s in answered]),
        "citation_recall": _mean([s["citation_recall"] for s in answered]),
        "gold_citation_rate": _mean([_float(s.get("gold_citation")) for s in answered]),
        "supported_share": _mean([s.get("supported_share") for s in answered]),
        "grounded_rate": _mean([float(s["grounded"]) for s in answered]),
        "not_covered_rate": _mean([float(s["not_covered"]) for s in answerable]),
        "unanswerable_not_covered_rate": _mean([float(s["not_covered"]) for s in unanswerable]),
        "stray_citation_rate": _mean([float(bool(s["stray_citations"])) for s in answered]),
        "latency_mean_s": _mean(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "answered": float(len(answered)),
    }


def _float(value: bool | None) -> float | None:
    return None if value is None else float(value)


# --- runner ---------------------------------------------------------------------------------

Progress = Callable[[str, int, int], None]


def run_answer_eval(
    answer_fn: AnswerFn,
    spec: AnswerEvalSpec,
    *,
    context: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> EvalRecord:
    """Send every question through every mode and score the answers; returns an unsaved record
    (save it with `kb.eval.records.save_eval`). A mode that raises ModeUnavailable is reported
    in `record.errors` and skipped; another KBError is recorded on its question."""
    spec.validate()
    questions = spec.loaded_questions()
    labels = sorted({q.label for q in questions if q.label is not None})
    seed_everything(spec.seed)
    started = time.perf_counter()

    per_mode: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    for mode in spec.modes:  # mode by mode, so each mode's model is loaded once
        scored: list[dict[str, Any]] = []
        for done, question in enumerate(questions):
            if progress:
                progress(mode, done, len(questions))
            try:
                outcome = answer_fn(question.question, mode)
            except ModeUnavailable as exc:
                errors[mode] = str(exc)
                scored = []
                break
            except KBError as exc:
                scored.append({"error": str(exc)})
                continue
            scored.append(score_outcome(question, outcome, labels, spec.source_root))
        if progress:
            progress(mode, len(questions), len(questions))
        if mode not in errors:
            per_mode[mode] = scored

    rows = [
        {
            "id": q.id,
            "question": q.question,
            "gold": {
                "answers": q.answers,
                "label": q.label,
                "sources": q.sources,
                "unanswerable": q.unanswerable,
            },
            "modes": {mode: scored[i] for mode, scored in per_mode.items()},
        }
        for i, q in enumerate(questions)
    ]
    ran_context = {"collection": spec.collection, "model": spec.model, **(context or {})}
    models = {
        mode: sorted({s["model"] for s in scored if s.get("model")})
        for mode, scored in per_mode.items()
    }
    ran_context.setdefault("models_by_mode", models)
    return EvalRecord(
        eval_id=new_eval_id("answers"),
        kind="answers",
        created_at=utc_now(),
        seed=spec.seed,
        spec={**spec.to_dict(), "question_count": len(questions)},
        context=ran_context,
        metrics={mode: aggregate_mode(scored) for mode, scored in per_mode.items()},
        rows=rows,
        errors=errors,
        duration_s=time.perf_counter() - started,
        name=spec.name,
    )


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and (if already loaded) torch's generators for a reproducible run."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


# --- the answering core as an AnswerFn ------------------------------------------------------


def outcome_from_result(result: Any, latency_s: float) -> AnswerOutcome:
    """An AnswerOutcome from a kb.answering.AnswerResult."""
    info = result.model
    model = None
    if info is not None:
        model = info.name if info.model_id in (info.name, "") else f"{info.name} ({info.model_id})"
    support = result.to_dict().get("support") or {}
    given = range(1, len(result.passages) + 1)
    return AnswerOutcome(
        text=result.answer,
        # result.citations lists every passage the model was given; `cited` marks those the
        # answer refers to as [n]
        cited_sources=[c.source for c in result.citations if c.cited],
        not_covered=result.not_covered,
        latency_s=result.timings.get("total", latency_s),
        model=model,
        supported_share=support.get("supported_share"),
        support_action=support.get("action"),
        stray_citations=sorted(n for n in cited_numbers(result.answer) if n not in given),
    )


def answerer_fn(
    answerer: Any,
    *,
    collection: str | None = None,
    k: int = 5,
    model: str | None = None,
    support: str | None = None,
) -> tuple[AnswerFn, dict[str, Any]]:
    """A kb.answering.Answerer as an AnswerFn, and the context to record with the run.

    A requested model goes to the modes of its kind (a fine-tuned one to finetuned and
    rag+finetuned, a base one to base and rag); the other modes use their defaults, as the
    answering core's compare mode does. Modes that cannot run raise ModeUnavailable.
    `support` is the support-check policy of the grounded modes (None: the core's default).
    """
    kinds = {spec.name: spec.kind for spec in answerer.generators.specs()}
    if model is not None and model not in kinds:
        raise ModelNotFound(f"no model {model!r}: use one of {', '.join(kinds) or 'none'}")
    requested_finetuned = model is not None and kinds.get(model) == "finetuned"
    unavailable = answerer.modes(model)
    options = {} if support is None else {"support": support}

    def answer_fn(question: str, mode: str) -> AnswerOutcome:
        if unavailable.get(mode):
            raise ModeUnavailable(unavailable[mode])
        wants_finetuned = mode in ("finetuned", "rag+finetuned")
        mode_model = model if requested_finetuned == wants_finetuned else None
        started = time.perf_counter()
        result = answerer.answer(
            question, mode=mode, collection=collection, k=k, model=mode_model, **options
        )
        return outcome_from_result(result, time.perf_counter() - started)

    settings = answerer.settings
    name = collection or settings.default_collection
    context: dict[str, Any] = {
        "collection": name,
        "model": model,
        "support": support,
        "default_generator": settings.default_generator,
        "finetuned_models": answerer.finetuned_models(),
        "retrieval_method": settings.retrieval_method,
        "min_score": settings.min_score,
    }
    if answerer.kb.has_collection(name):
        info = answerer.kb.collection(name).info()
        context["embedder"] = info.get("embedder")
        context["collection_generation"] = info.get("generation")
    return answer_fn, context
