"""Answer modes: base, rag, finetuned, rag+finetuned, and compare (all of them side by side).

`Answerer.stream` yields events in a fixed order: one `passages` event (the retrieved
passages numbered as the prompt shows them, the model chosen), then `delta` events with the
answer text, then `done` with the full `AnswerResult`. In `compare` mode each mode's deltas
carry its name and each mode ends with a `result` event before the final `done`.

A grounded mode whose passages all score below `settings.min_score` (dense cosine) answers
with the not-covered sentence and never calls the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kb.errors import (
    CollectionNotFound,
    InvalidInput,
    KBError,
    ModelNotFound,
    ModeUnavailable,
)
from kb.generators import GeneratorRegistry
from kb.prompting import (
    Citation,
    build_base_messages,
    build_rag_messages,
    extract_citations,
    load_prompt,
    not_covered_answer,
)
from kb.types import Passage

MODES = ("base", "rag", "finetuned", "rag+finetuned")
COMPARE = "compare"
ANSWER_MODES = (*MODES, COMPARE)
MAX_K = 100
FINETUNE_HINT = (
    "train and register one with `kb finetune run ...` (see `kb finetune --help`), or add a "
    'generator with kind "finetuned" to KB_GENERATORS'
)


def uses_retrieval(mode: str) -> bool:
    return mode in ("rag", "rag+finetuned")


def uses_finetuned(mode: str) -> bool:
    return mode in ("finetuned", "rag+finetuned")


@dataclass
class ModelInfo:
    """The generator that answered: its registry name and the model it actually runs."""

    name: str
    model_id: str
    kind: str
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_id": self.model_id,
            "kind": self.kind,
            "backend": self.backend,
        }


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class UnavailableMode:
    mode: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "reason": self.reason}


@dataclass
class AnswerResult:
    """One answer; in compare mode a container whose `answers` hold one result per mode."""

    question: str
    mode: str
    answer: str = ""
    model: ModelInfo | None = None
    collection: str | None = None
    citations: list[Citation] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    not_covered: bool = False
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    # seconds: retrieve, prompt, generate, total; first_token (streams) counts from the start
    timings: dict[str, float] = field(default_factory=dict)
    answers: list[AnswerResult] = field(default_factory=list)
    unavailable: list[UnavailableMode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "mode": self.mode,
            "answer": self.answer,
            "model": self.model.to_dict() if self.model else None,
            "collection": self.collection,
            "not_covered": self.not_covered,
            "finish_reason": self.finish_reason,
            "citations": [c.to_dict() for c in self.citations],
            "passages": [p.to_dict() for p in self.passages],
            "usage": self.usage.to_dict(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "answers": [a.to_dict() for a in self.answers],
            "unavailable": [u.to_dict() for u in self.unavailable],
        }


@dataclass
class AnswerEvent:
    """One step of a streamed answer: `passages`, `delta`, `result` (compare) or `done`."""

    type: str
    mode: str
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    result: AnswerResult | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.type == "delta":
            return {"mode": self.mode, "text": self.text}
        if self.result is not None:
            return self.result.to_dict()
        return {"mode": self.mode, **self.data}


@dataclass
class _Plan:
    """What one mode will run: the generator and whether it sees passages."""

    mode: str
    generator: str
    grounded: bool


class Answerer:
    """Answers questions in any mode over a KnowledgeBase and a GeneratorRegistry."""

    def __init__(self, kb, generators: GeneratorRegistry):
        self.kb = kb
        self.generators = generators
        self.settings = kb.settings

    @classmethod
    def from_settings(cls, settings) -> Answerer:
        """An Answerer over the data folder, with every stored fine-tuned model registered."""
        from kb.models import ModelRegistry
        from kb.service import KnowledgeBase

        generators = GeneratorRegistry(settings)
        ModelRegistry(settings).load_into(generators)
        return cls(KnowledgeBase(settings), generators)

    # -- public ----------------------------------------------------------------------------

    def answer(
        self,
        question: str,
        *,
        mode: str = "rag",
        collection: str | None = None,
        k: int = 5,
        model: str | None = None,
        method: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        generate: bool = True,
    ) -> AnswerResult:
        """Answer one question and return the whole result (no deltas)."""
        events = self._events(
            question, mode, collection, k, model, method, max_new_tokens, temperature,
            stream=False, generate=generate,
        )  # fmt: skip
        result = None
        for event in events:
            if event.type == "done":
                result = event.result
        assert result is not None
        return result

    def stream(
        self,
        question: str,
        *,
        mode: str = "rag",
        collection: str | None = None,
        k: int = 5,
        model: str | None = None,
        method: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        generate: bool = True,
    ) -> Iterator[AnswerEvent]:
        """Answer one question as events: passages, then deltas, then done (see module doc)."""
        return self._events(
            question, mode, collection, k, model, method, max_new_tokens, temperature,
            stream=True, generate=generate,
        )  # fmt: skip

    def modes(self, model: str | None = None) -> dict[str, str | None]:
        """Every mode -> None if it can run now, else the reason it cannot."""
        out: dict[str, str | None] = {}
        for mode in MODES:
            try:
                self._plan(mode, model, in_compare=True)
                out[mode] = None
            except (ModeUnavailable, InvalidInput, ModelNotFound) as exc:
                out[mode] = str(exc)
        return out

    def finetuned_models(self) -> list[str]:
        """Names of the registered fine-tuned generators, oldest first."""
        return [s.name for s in self.generators.specs() if s.kind == "finetuned"]

    # -- planning --------------------------------------------------------------------------

    def _spec(self, name: str):
        for spec in self.generators.specs():
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.generators.specs()) or "none"
        raise ModelNotFound(f"no model {name!r}: use one of {known} (list them with GET /models)")

    def _plan(self, mode: str, model: str | None, *, in_compare: bool = False) -> _Plan:
        requested = self._spec(model) if model else None
        if uses_finetuned(mode):
            if requested is not None and requested.kind == "finetuned":
                return _Plan(mode, requested.name, uses_retrieval(mode))
            if requested is not None and not in_compare:
                finetuned = self.finetuned_models()
                options = (
                    f"use one of {', '.join(finetuned)}"
                    if finetuned
                    else f"none is registered yet ({FINETUNE_HINT})"
                )
                plain = "rag" if uses_retrieval(mode) else "base"
                raise InvalidInput(
                    f"model {requested.name!r} is a base model, but mode {mode!r} needs a "
                    f"fine-tuned one: {options}; or ask mode {plain!r} with this model"
                )
            finetuned = self.finetuned_models()
            if not finetuned:
                raise ModeUnavailable(
                    f"mode {mode!r} needs a fine-tuned model and none is registered: {FINETUNE_HINT}"
                )
            return _Plan(mode, finetuned[-1], uses_retrieval(mode))
        if requested is not None and requested.kind != "finetuned":
            return _Plan(mode, requested.name, uses_retrieval(mode))
        if requested is not None and not in_compare:
            raise InvalidInput(
                f"model {requested.name!r} is fine-tuned, but mode {mode!r} answers with a base "
                f"model: use mode {'rag+finetuned' if uses_retrieval(mode) else 'finetuned'!r} "
                "for this model, or leave the model out"
            )
        name = self.settings.default_generator
        self._spec(name)
        return _Plan(mode, name, uses_retrieval(mode))

    # -- running ---------------------------------------------------------------------------

    def _events(
        self,
        question: str,
        mode: str,
        collection: str | None,
        k: int,
        model: str | None,
        method: str | None,
        max_new_tokens: int | None,
        temperature: float | None,
        *,
        stream: bool,
        generate: bool = True,
    ) -> Iterator[AnswerEvent]:
        started = time.perf_counter()
        question = (question or "").strip()
        if not question:
            raise InvalidInput("the question is empty: send the text of a question")
        if mode not in ANSWER_MODES:
            raise InvalidInput(f"unknown mode {mode!r}: use one of {', '.join(ANSWER_MODES)}")
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k={k} is out of range: ask for between 1 and {MAX_K} passages")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens={max_new_tokens} must be at least 1")
        name = collection or self.settings.default_collection
        if model:
            self._spec(model)  # an unknown model is an error in every mode, compare included

        plans: list[_Plan] = []
        unavailable: list[UnavailableMode] = []
        if mode == COMPARE:
            for m in MODES:
                try:
                    plans.append(self._plan(m, model, in_compare=True))
                except (ModeUnavailable, ModelNotFound) as exc:
                    unavailable.append(UnavailableMode(m, str(exc)))
        else:
            plans.append(self._plan(mode, model))

        if collection is not None or any(p.grounded for p in plans):
            try:
                self.kb.collection(name)
            except CollectionNotFound as exc:
                if collection is not None or mode != COMPARE:
                    raise
                # compare without a collection still shows the ungrounded modes
                unavailable += [UnavailableMode(p.mode, str(exc)) for p in plans if p.grounded]
                plans = [p for p in plans if not p.grounded]

        timings: dict[str, float] = {}
        retrieved: list[Passage] = []
        if any(p.grounded for p in plans):
            t = time.perf_counter()
            retrieved = self.kb.search(question, collection=name, k=k, method=method)
            timings["retrieve"] = time.perf_counter() - t
        relevant = [p for p in retrieved if p.scores.get("dense", 0.0) >= self.settings.min_score]

        if mode == COMPARE:
            yield from self._compare(
                question, name, plans, unavailable, relevant, timings, started,
                max_new_tokens, temperature, stream, generate=generate,
            )  # fmt: skip
            return
        plan = plans[0]
        runner = self._run(
            question, name, plan, relevant, dict(timings), started, max_new_tokens, temperature,
            stream, generate=generate,
        )  # fmt: skip
        try:
            for event in runner:
                if event.type == "result":
                    event = AnswerEvent("done", plan.mode, result=event.result)
                yield event
        finally:
            runner.close()

    def _compare(
        self,
        question: str,
        collection: str,
        plans: list[_Plan],
        unavailable: list[UnavailableMode],
        relevant: list[Passage],
        timings: dict[str, float],
        started: float,
        max_new_tokens: int | None,
        temperature: float | None,
        stream: bool,
        *,
        generate: bool = True,
    ) -> Iterator[AnswerEvent]:
        numbered = [_citation_stub(i, p) for i, p in enumerate(relevant, 1)]
        yield AnswerEvent(
            "passages",
            COMPARE,
            data={
                "collection": collection,
                "modes": [p.mode for p in plans],
                "unavailable": [u.to_dict() for u in unavailable],
                "passages": [p.to_dict() for p in relevant],
                "citations": numbered,
                "not_covered": not relevant and any(p.grounded for p in plans),
            },
        )
        answers: list[AnswerResult] = []
        for plan in plans:
            mode_started = time.perf_counter()
            runner = self._run(
                question, collection, plan, relevant, dict(timings), mode_started,
                max_new_tokens, temperature, stream, announce=False, generate=generate,
            )  # fmt: skip
            try:
                for event in runner:
                    if event.type == "result" and event.result is not None:
                        answers.append(event.result)
                    yield event
            finally:
                runner.close()
        total = time.perf_counter() - started
        result = AnswerResult(
            question=question,
            mode=COMPARE,
            collection=collection,
            passages=relevant,
            not_covered=not relevant and any(p.grounded for p in plans),
            usage=Usage(
                sum(a.usage.prompt_tokens for a in answers),
                sum(a.usage.completion_tokens for a in answers),
            ),
            timings={**timings, "total": total},
            answers=answers,
            unavailable=unavailable,
        )
        yield AnswerEvent("done", COMPARE, result=result)

    def _run(
        self,
        question: str,
        collection: str,
        plan: _Plan,
        relevant: list[Passage],
        timings: dict[str, float],
        started: float,
        max_new_tokens: int | None,
        temperature: float | None,
        stream: bool,
        *,
        announce: bool = True,
        generate: bool = True,
    ) -> Iterator[AnswerEvent]:
        """One mode: passages event (unless announced by compare), deltas, then a result event."""
        generator = self.generators.get(plan.generator)
        spec = self._spec(plan.generator)
        info = ModelInfo(
            name=plan.generator,
            model_id=str(getattr(generator, "model_id", spec.model)),
            kind=spec.kind,
            backend=spec.backend,
        )
        budget = max_new_tokens or spec.max_new_tokens
        temp = spec.temperature if temperature is None else temperature
        result = AnswerResult(
            question=question,
            mode=plan.mode,
            model=info,
            collection=collection if plan.grounded else None,
        )

        t = time.perf_counter()
        used: list[Passage] = []
        if plan.grounded and not relevant:
            result.not_covered = True
            result.answer = not_covered_answer()
            result.finish_reason = "not_covered"
            messages = None
        elif plan.grounded:
            messages, used = build_rag_messages(
                question,
                relevant,
                count_tokens=generator.count_tokens,
                context_window=generator.context_window,
                max_new_tokens=budget,
            )
        else:
            messages = build_base_messages(question)
        timings["prompt"] = time.perf_counter() - t
        result.passages = used

        if announce:
            yield AnswerEvent(
                "passages",
                plan.mode,
                data={
                    "collection": result.collection,
                    "model": info.to_dict(),
                    "passages": [p.to_dict() for p in used],
                    "citations": [_citation_stub(i, p) for i, p in enumerate(used, 1)],
                    "not_covered": result.not_covered,
                },
            )

        t = time.perf_counter()
        stop = load_prompt("rag" if plan.grounded else "base").stop or None
        if messages is not None and not generate:
            result.finish_reason = "skipped"  # generate=False: retrieval and prompt only
        elif messages is not None:
            generation = None
            if stream:
                events = generator.stream(
                    messages, max_new_tokens=budget, temperature=temp, stop=stop
                )
                try:
                    for event in events:
                        if event.delta:
                            timings.setdefault("first_token", time.perf_counter() - started)
                            yield AnswerEvent("delta", plan.mode, text=event.delta)
                        if event.generation is not None:
                            generation = event.generation
                finally:  # a closed stream (client gone) stops the model now, not at GC
                    if hasattr(events, "close"):
                        events.close()
                if generation is None:
                    raise KBError(f"model {plan.generator!r} ended its stream without a result")
            else:
                generation = generator.generate(
                    messages, max_new_tokens=budget, temperature=temp, stop=stop
                )
            result.answer = generation.text.strip()
            result.finish_reason = generation.finish_reason
            result.usage = Usage(generation.prompt_tokens, generation.completion_tokens)
        elif stream:
            timings.setdefault("first_token", time.perf_counter() - started)
            yield AnswerEvent("delta", plan.mode, text=result.answer)
        timings["generate"] = time.perf_counter() - t
        if used:
            result.citations = extract_citations(result.answer, used)
        timings["total"] = time.perf_counter() - started
        result.timings = timings
        yield AnswerEvent("result", plan.mode, result=result)


def _citation_stub(n: int, p: Passage) -> dict[str, Any]:
    """How passage `n` is cited, before the answer says whether it was."""
    return {
        "n": n,
        "chunk_id": p.chunk_id,
        "doc_id": p.doc_id,
        "source": p.source,
        "start": p.start,
        "end": p.end,
        "page": p.page,
    }
