"""Evaluation: retrieval quality (BEIR metrics per search method) and answer quality across
answering modes, saved as reproducible records with Markdown/HTML reports and a chart."""

from kb.eval.answers import AnswerEvalSpec, AnswerFn, AnswerOutcome, run_answer_eval
from kb.eval.metrics import evaluate
from kb.eval.records import (
    EvalComparison,
    EvalRecord,
    compare_evals,
    list_evals,
    load_eval,
    save_eval,
)
from kb.eval.retrieval import RetrievalEvalSpec, run_retrieval_eval

__all__ = [
    "AnswerEvalSpec",
    "AnswerFn",
    "AnswerOutcome",
    "EvalComparison",
    "EvalRecord",
    "RetrievalEvalSpec",
    "compare_evals",
    "evaluate",
    "list_evals",
    "load_eval",
    "run_answer_eval",
    "run_retrieval_eval",
    "save_eval",
]
