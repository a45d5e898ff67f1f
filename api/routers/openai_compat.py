"""OpenAI-compatible endpoints: GET /v1/models and POST /v1/chat/completions.

The model id picks the collection and the answer mode:

    kb:{collection}:base                    default base model, no passages
    kb:{collection}:rag                     default base model + passages from {collection}
    kb:{collection}:extract                 the passages' own sentences, no model
    kb:{collection}:finetuned:{model}       fine-tuned generator {model}, no passages
    kb:{collection}:rag+finetuned:{model}   fine-tuned generator {model} + passages

`kb:{collection}:base:{model}` and `kb:{collection}:rag:{model}` pick another base generator.
The last user message is the question (earlier turns and system messages are ignored).
Citations come back in a `citations` field of the completion (of the last chunk when
streaming) and as a "Sources:" list appended to the answer text; the support check of a
grounded answer in its `kb.support` field. Under the drop and fallback policies a stream
sends the answer once checked, so an unsupported sentence never reaches the client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from itertools import chain
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import Caller
from api.deps import AnswererDep, KBDep
from api.errors import ERROR_RESPONSES, error_response
from api.schemas import ChatCompletion, ChatCompletionRequest, ModelCardList
from api.sse import (
    error_event_body,
    first_then_rest,
    sse,
    sse_response_doc,
    stream_response,
)
from kb.answering import MODES, AnswerResult
from kb.errors import CollectionNotFound, InvalidInput, ModelNotFound

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)

SCHEME = (
    "kb:{collection}:base, kb:{collection}:rag, kb:{collection}:extract, "
    "kb:{collection}:finetuned:{model} or "
    "kb:{collection}:rag+finetuned:{model}"
)


def model_ids(collections: list[str], finetuned: list[str]) -> list[str]:
    ids = []
    for c in collections:
        ids += [f"kb:{c}:rag", f"kb:{c}:extract", f"kb:{c}:base"]
        for m in finetuned:
            ids += [f"kb:{c}:finetuned:{m}", f"kb:{c}:rag+finetuned:{m}"]
    return ids


def parse_model_id(model_id: str) -> tuple[str, str, str | None]:
    """'kb:docs:rag+finetuned:ft1' -> ('docs', 'rag+finetuned', 'ft1')."""
    parts = model_id.split(":", 3)
    if len(parts) < 3 or parts[0] != "kb" or parts[2] not in MODES or not parts[1]:
        raise ModelNotFound(
            f"no model {model_id!r}: model ids read {SCHEME}; list them with GET /v1/models"
        )
    return parts[1], parts[2], parts[3] if len(parts) == 4 else None


@router.get("/models", response_model=ModelCardList, summary="List model ids (OpenAI format)")
def list_models(kb: KBDep, answerer: AnswererDep, caller: Caller) -> dict:
    names = [c["name"] for c in kb.list_collections() if caller.allows(c["name"])]
    default = kb.settings.default_collection
    if not names and caller.allows(default):
        names = [default]  # the base mode needs no documents
    created = int(time.time())
    ids = model_ids(names, answerer.finetuned_models())
    return {"object": "list", "data": [{"id": i, "created": created} for i in ids]}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion (OpenAI format)",
    description="Answers the last user message. " + __doc__.split("\n\n", 1)[1],
    responses={
        200: {
            "content": sse_response_doc(
                "With stream: true, chat.completion.chunk objects, then the data [DONE]."
            )
        }
    },
)
def chat_completions(body: ChatCompletionRequest, answerer: AnswererDep, caller: Caller):
    try:
        collection, mode, model = parse_model_id(body.model)
    except ModelNotFound as exc:
        return error_response(404, str(exc), "model_not_found", "model")
    caller.check(collection, "read")
    question = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
    if not question.strip():
        raise InvalidInput("no question: the last message with role 'user' has no text")
    args: dict[str, Any] = {
        "mode": mode,
        "collection": collection,
        "model": model,
        "max_new_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
    }
    if body.k:
        args["k"] = body.k
    if body.support:
        args["support"] = body.support
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    try:
        if not body.stream:
            result = answerer.answer(question, **args)
            return _completion(completion_id, created, body.model, result)
        first, rest = first_then_rest(answerer.stream(question, **args))
    except (ModelNotFound, CollectionNotFound) as exc:
        return _not_found(exc)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def lines() -> Iterator[str]:
        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [choice],
                    **extra,
                }
            )

        try:
            yield chunk({"role": "assistant", "content": ""})
            for event in chain([first], rest):
                if event.type == "delta" and event.text:
                    yield chunk({"content": event.text})
                elif event.type == "done" and event.result is not None:
                    result = event.result
                    sources = sources_text(result)
                    if sources:
                        yield chunk({"content": sources})
                    yield chunk(
                        {},
                        _finish_reason(result),
                        citations=[c.to_dict() for c in result.citations],
                        kb=_kb_info(result),
                    )
                    if include_usage:
                        yield sse(
                            {
                                "id": completion_id,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": body.model,
                                "choices": [],
                                "usage": result.usage.to_dict(),
                            }
                        )
        except Exception as exc:
            yield sse(error_event_body(exc))
        finally:
            rest.close()
        yield sse("[DONE]")

    return stream_response(lines)


def sources_text(result: AnswerResult) -> str:
    """'\\n\\nSources:\\n[1] path (chars 0-120)' for the cited passages (all used, if none cited)."""
    cited = [c for c in result.citations if c.cited] or result.citations
    if not cited:
        return ""
    lines = []
    for c in cited:
        where = f"page {c.page}" if c.page else f"chars {c.start}-{c.end}"
        lines.append(f"[{c.n}] {c.source} ({where})")
    return "\n\nSources:\n" + "\n".join(lines)


def _finish_reason(result: AnswerResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _kb_info(result: AnswerResult) -> dict:
    return {
        "mode": result.mode,
        "collection": result.collection,
        "model": result.model.to_dict() if result.model else None,
        "grounded": result.grounded,
        "not_covered": result.not_covered,
        "support": result.support.to_dict() if result.support else None,
        "quotes": [q.to_dict() for q in result.quotes],
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }


def _completion(completion_id: str, created: int, model: str, result: AnswerResult) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer + sources_text(result)},
                "finish_reason": _finish_reason(result),
            }
        ],
        "usage": result.usage.to_dict(),
        "citations": [c.to_dict() for c in result.citations],
        "kb": _kb_info(result),
    }


def _not_found(exc: Exception) -> JSONResponse:
    return error_response(404, f"{exc} (model ids read {SCHEME})", "model_not_found", "model")
