"""Evaluations over HTTP: run one as a background job, list saved records, read reports."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from api.auth import Caller
from api.deps import ServicesDep, SettingsDep
from api.schemas import JobOut
from kb.errors import NotFound

router = APIRouter(tags=["evaluation"])


class EvalRequest(BaseModel):
    """Either a retrieval evaluation (`beir` folder or `questions` with sources) or an answer
    evaluation (`questions` with gold answers, labels or sources, across `modes`)."""

    model_config = {"extra": "forbid"}

    kind: Literal["retrieval", "answers"]
    beir: str | None = Field(None, description="Server-side BEIR folder (retrieval).")
    split: str = "test"
    questions: str | None = Field(None, description="Server-side JSONL question file.")
    collection: str | None = None
    methods: list[Literal["dense", "bm25", "hybrid"]] = Field(
        default_factory=lambda: ["dense", "bm25", "hybrid"]
    )
    modes: list[Literal["base", "rag", "finetuned", "rag+finetuned"]] = Field(
        default_factory=lambda: ["base", "rag"]
    )
    model: str | None = None
    k: int = Field(5, ge=1, le=100)
    max_queries: int | None = Field(None, ge=1)
    seed: int = 0
    name: str | None = Field(None, max_length=128)


class EvalSummaryOut(BaseModel):
    id: str
    kind: str
    created_at: str
    name: str | None = None
    collection: str | None = None
    metrics: dict[str, dict[str, float | None]] = Field(default_factory=dict)


class EvalListOut(BaseModel):
    evals: list[EvalSummaryOut]


def _run(services, body: EvalRequest):
    from kb.eval.records import save_eval

    def work(ctx) -> dict[str, Any]:
        def progress(stage: str, done: int, total: int) -> None:
            ctx.progress(stage=stage, done=done, total=total)
            ctx.check_cancelled()

        if body.kind == "retrieval":
            from kb.eval.retrieval import RetrievalEvalSpec, run_retrieval_eval

            spec = RetrievalEvalSpec(
                beir=body.beir, split=body.split, questions=body.questions,
                collection=body.collection, methods=list(body.methods),
                k=max(body.k, 100) if body.beir else body.k, max_queries=body.max_queries,
                seed=body.seed, name=body.name,
            )  # fmt: skip
            spec.validate()
            record = run_retrieval_eval(services.kb, spec, progress=progress)
        else:
            from kb.eval.answers import AnswerEvalSpec, answerer_fn, run_answer_eval

            spec = AnswerEvalSpec(
                questions=body.questions or "", modes=list(body.modes), collection=body.collection,
                model=body.model, k=body.k, seed=body.seed, name=body.name,
            )  # fmt: skip
            spec.validate()
            answer_fn, context = answerer_fn(
                services.answerer, collection=body.collection, k=body.k, model=body.model
            )
            record = run_answer_eval(answer_fn, spec, context=context, progress=progress)
        save_eval(services.settings, record)
        return {"eval_id": record.eval_id, "metrics": record.metrics, "errors": record.errors}

    return work


@router.post("/eval", response_model=JobOut, status_code=202, summary="Run an evaluation")
def start_eval(body: EvalRequest, services: ServicesDep, caller: Caller) -> dict[str, Any]:
    """Runs in the background; poll `GET /eval/{job_id}` (or `/jobs/{id}`) for the result."""
    caller.check(body.collection, "write" if body.beir else "read")
    if body.kind == "answers" and not body.questions:
        from kb.errors import InvalidInput

        raise InvalidInput("an answers evaluation needs `questions`: a JSONL file on the server")
    record = services.jobs.submit("eval", body.model_dump(), _run(services, body))
    return record.to_dict()


@router.get("/eval/{job_id}", response_model=JobOut, summary="An evaluation job and its result")
def get_eval_job(job_id: str, services: ServicesDep, caller: Caller) -> dict[str, Any]:
    record = services.jobs.get(job_id)
    if record.kind != "eval":
        raise NotFound(
            f"job {job_id!r} is a {record.kind} job, not an evaluation: see /jobs/{job_id}"
        )
    return record.to_dict()


@router.get("/evals", response_model=EvalListOut, summary="Saved evaluation records")
def list_saved(settings: SettingsDep, caller: Caller) -> dict[str, Any]:
    from kb.eval.records import list_evals

    return {
        "evals": [
            {
                "id": s.eval_id,
                "kind": s.kind,
                "created_at": s.created_at,
                "name": s.name,
                "collection": s.collection,
                "metrics": s.metrics,
            }  # fmt: skip
            for s in list_evals(settings)
        ]
    }


@router.get("/evals/{eval_id}", summary="One saved evaluation record")
def get_saved(eval_id: str, settings: SettingsDep, caller: Caller) -> dict[str, Any]:
    from kb.eval.records import load_eval

    return load_eval(settings, eval_id).to_dict()


@router.get(
    "/evals/{eval_id}/report.html", response_class=HTMLResponse, summary="An evaluation's report"
)
def get_report(eval_id: str, settings: SettingsDep, caller: Caller) -> HTMLResponse:
    from kb.eval.records import eval_dir

    path = eval_dir(settings, eval_id) / "report.html"
    if not path.is_file():
        raise NotFound(f"no report for evaluation {eval_id!r}: list them at GET /evals")
    return HTMLResponse(path.read_text(encoding="utf-8"))


@router.get(
    "/evals/{eval_id}/chart.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="An evaluation's chart",
)
def get_chart(eval_id: str, settings: SettingsDep, caller: Caller) -> Response:
    from kb.eval.records import eval_dir

    path = eval_dir(settings, eval_id) / "chart.png"
    if not path.is_file():
        raise NotFound(f"no chart for evaluation {eval_id!r}: list them at GET /evals")
    return Response(path.read_bytes(), media_type="image/png")
