"""POST /query: an answer in one of the modes, as JSON or as server-sent events."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import ServicesDep
from api.errors import ERROR_RESPONSES
from api.offload import model_response
from api.routers.search import on_search_threads
from api.schemas import AnswerOut, QueryRequest
from api.sse import (
    error_event_body,
    first_then_rest,
    sse,
    sse_response_doc,
    stream_response,
)
from kb.answering import Answerer, AnswerEvent, AnswerRequest, uses_retrieval

router = APIRouter(tags=["query"], responses=ERROR_RESPONSES)

STREAM_DOC = (
    "With `stream: true`, a text/event-stream of events: `passages` (the numbered passages "
    "and the model chosen), `delta` ({mode, text}) pieces of the answer (a grounded answer "
    "under the drop or fallback policy comes in one piece, once checked; under flag the "
    "model's text streams live, citations of passages not given removed, and `done` carries "
    "the checked text), in compare mode a "
    "`result` per mode, then `done` (the same object as the JSON answer) or `error` "
    "({error: {message, type, code}})."
)


@router.post(
    "/query",
    response_model=AnswerOut,
    summary="Answer a question",
    description="Answer with the base model, RAG, a fine-tuned model, both, or compare them. "
    + STREAM_DOC,
    responses={
        200: {
            "content": sse_response_doc(
                STREAM_DOC, events=["passages", "delta", "result", "done", "error"]
            )
        }
    },
)
async def query(body: QueryRequest, services: ServicesDep, caller: Caller) -> Response:
    answerer = services.answerer
    collection = body.collection or answerer.settings.default_collection
    retrieves = body.mode == "compare" or uses_retrieval(body.mode)
    if body.collection is not None or retrieves:
        caller.check(collection, "read")
    args = {
        "mode": body.mode,
        "collection": body.collection,
        "k": body.k,
        "model": body.model,
        "method": body.method,
        "max_new_tokens": body.max_new_tokens,
        "temperature": body.temperature,
        "generate": body.generate,
        "support": body.support,
    }
    if not body.stream:
        if retrieves and not body.generate:
            # retrieval and a prompt, no generation: a search, so it queues with /search
            return await on_search_threads(
                services, collection, _answer, answerer, body.question, args
            )
        return await run_in_threadpool(_answer, answerer, body.question, args)

    first, rest = await run_in_threadpool(_first_event, answerer, body.question, args)

    def lines() -> Iterator[str]:
        try:
            yield _event(first)
            for event in rest:
                yield _event(event)
        except Exception as exc:  # the status line is sent: report the error as an event
            yield sse(error_event_body(exc), "error")
        finally:
            rest.close()

    return stream_response(lines)


def _answer(answerer: Answerer, question: str, args: dict) -> Response:
    return model_response(AnswerOut, answerer.answer(AnswerRequest(question, **args)).to_dict())


def _first_event(answerer: Answerer, question: str, args: dict) -> tuple[AnswerEvent, Iterator]:
    """The stream's first event (its errors raise here, before any status is sent) and the rest."""
    return first_then_rest(answerer.stream(AnswerRequest(question, **args)))


def _event(event: AnswerEvent) -> str:
    return sse(event.to_dict(), event.type)
