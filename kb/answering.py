"""Answer modes: base, rag, extract, finetuned, rag+finetuned, and compare (side by side).

`Answerer.stream` yields events in a fixed order: one `passages` event (the retrieved
passages numbered as the prompt shows them, the model chosen), then `delta` events with the
answer text, then `done` with the full `AnswerResult`. In `compare` mode each mode's deltas
carry its name and each mode ends with a `result` event before the final `done`.

Grounded modes (rag, extract, rag+finetuned) answer only from their passages:
- passages that all score below `settings.min_score` (dense cosine), or that do not cover the
  question's terms (`kb.grounding.extract`), give the not-covered sentence; no model runs;
- `extract` quotes the passages' best sentences; no model runs at all;
- a generated answer is checked sentence by sentence (`kb.grounding.check`), and the support
  policy decides what goes out: `flag` marks unsupported sentences, `drop` removes them,
  `fallback` answers with the extractive answer instead. Under `drop` and `fallback` a stream
  holds the text back until it is checked, so no unsupported sentence is ever sent; under
  `fallback` the model stops at its first sentence the check is sure to refute.
`base` and `finetuned` answers have no passages: they are marked ungrounded.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kb.errors import (
    CollectionNotFound,
    InvalidInput,
    KBError,
    ModelNotFound,
    ModeUnavailable,
)
from kb.generators import GeneratorRegistry
from kb.generators.base import Generation, Generator, Message
from kb.grounding import POLICIES, Extract, Extractor, SupportChecker, SupportReport, load_scorer
from kb.grounding.check import (
    CitationFilter,
    is_not_covered,
    join_sentences,
    remove_foreign_citations,
)
from kb.grounding.evidence import terms
from kb.grounding.extract import Quote
from kb.grounding.scorers import EmbeddingScorer
from kb.grounding.sentences import split_sentences
from kb.prompting import (
    Citation,
    build_base_messages,
    build_rag_messages,
    extract_citations,
    load_prompt,
    not_covered_answer,
)
from kb.types import Passage

EXTRACT = "extract"
#: a character after which a sentence of a streamed answer may have ended
_SENTENCE_END = re.compile(r"[.!?\n\u3002\uff01\uff1f]")
MODES = ("base", "rag", EXTRACT, "finetuned", "rag+finetuned")
COMPARE = "compare"
ANSWER_MODES = (*MODES, COMPARE)
MAX_K = 100
FINETUNE_HINT = (
    "train and register one with `kb finetune run ...` (see `kb finetune --help`), or add a "
    'generator with kind "finetuned" to KB_GENERATORS'
)


def uses_retrieval(mode: str) -> bool:
    return mode in ("rag", EXTRACT, "rag+finetuned")


def uses_finetuned(mode: str) -> bool:
    return mode in ("finetuned", "rag+finetuned")


@dataclass
class AnswerRequest:
    """One question and how to answer it: the single object the CLI, HTTP and tests build."""

    question: str
    mode: str = "rag"
    collection: str | None = None
    k: int = 5
    model: str | None = None
    method: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    #: False: retrieve and build the prompt, skip the model
    generate: bool = True
    #: flag | drop | fallback; None: KB_SUPPORT_POLICY
    support: str | None = None

    def check(self) -> None:
        if not (self.question or "").strip():
            raise InvalidInput("the question is empty: send the text of a question")
        if self.mode not in ANSWER_MODES:
            raise InvalidInput(f"unknown mode {self.mode!r}: use one of {', '.join(ANSWER_MODES)}")
        if not 1 <= self.k <= MAX_K:
            raise InvalidInput(
                f"k={self.k} is out of range: ask for between 1 and {MAX_K} passages"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.support is not None and self.support not in POLICIES:
            raise InvalidInput(
                f"unknown support policy {self.support!r}: use one of {', '.join(POLICIES)}"
            )


@dataclass
class ModelInfo:
    """The generator that answered: its registry name and the model it actually runs."""

    name: str
    model_id: str
    kind: str
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: what answers in extract mode: no generator, the passages' own sentences
EXTRACTIVE = ModelInfo(name=EXTRACT, model_id="kb-extract", kind=EXTRACT, backend="kb")


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
    # seconds: retrieve, prompt, generate, check, total; first_token (streams) from the start
    timings: dict[str, float] = field(default_factory=dict)
    answers: list[AnswerResult] = field(default_factory=list)
    unavailable: list[UnavailableMode] = field(default_factory=list)
    #: answered from passages (rag, extract, rag+finetuned); base and finetuned are not
    grounded: bool = False
    support: SupportReport | None = None
    #: the passages' sentences an extractive answer quotes, with offsets into their sources
    quotes: list[Quote] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "mode": self.mode,
            "answer": self.answer,
            "model": self.model.to_dict() if self.model else None,
            "collection": self.collection,
            "grounded": self.grounded,
            "not_covered": self.not_covered,
            "finish_reason": self.finish_reason,
            "citations": [c.to_dict() for c in self.citations],
            "passages": [p.to_dict() for p in self.passages],
            "support": self.support.to_dict() if self.support else None,
            "quotes": [q.to_dict() for q in self.quotes],
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
    """What one mode will run: the generator (none for extract) and whether it sees passages."""

    mode: str
    generator: str | None
    grounded: bool


@dataclass
class _Context:
    """What a request's modes share: the retrieval, the extractive answer, the clock."""

    request: AnswerRequest
    collection: str
    policy: str
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    relevant: list[Passage] = field(default_factory=list)
    extract: Extract | None = None


class Answerer:
    """Answers questions in any mode over a KnowledgeBase and a GeneratorRegistry."""

    def __init__(self, kb, generators: GeneratorRegistry):
        self.kb = kb
        self.generators = generators
        self.settings = kb.settings
        self._checkers: dict[str, SupportChecker] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> Answerer:
        """An Answerer over the data folder, with every stored fine-tuned model registered."""
        from kb.models import build_generators
        from kb.service import KnowledgeBase

        generators, _ = build_generators(settings)
        return cls(KnowledgeBase(settings), generators)

    # -- public ----------------------------------------------------------------------------

    def answer(self, request: AnswerRequest | str, **fields: Any) -> AnswerResult:
        """Answer one question and return the whole result (no deltas)."""
        result = None
        for event in self._events(_request(request, fields), stream=False):
            if event.type == "done":
                result = event.result
        assert result is not None
        return result

    def stream(self, request: AnswerRequest | str, **fields: Any) -> Iterator[AnswerEvent]:
        """Answer one question as events: passages, then deltas, then done (see module doc)."""
        return self._events(_request(request, fields), stream=True)

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
        if mode == EXTRACT:
            return _Plan(mode, None, True)
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

    # -- grounding -------------------------------------------------------------------------

    def _checker(self, collection: str) -> SupportChecker:
        """The support checker for a collection (its embedder scores, unless a model is set)."""
        spec = self.settings.support_scorer
        key = collection if spec == "embedder" else spec
        with self._lock:
            checker = self._checkers.get(key)
        if checker is None:
            scorer = load_scorer(spec, lambda: self._embedder(collection))
            checker = SupportChecker(scorer, self.settings.support_threshold)
            with self._lock:
                checker = self._checkers.setdefault(key, checker)
        return checker

    def _embedder(self, collection: str):
        return self.kb.embedder_for(self.kb.collection(collection).snapshot().embedder)

    def _extract(self, ctx: _Context) -> Extract:
        """The extractive answer over the relevant passages, made once per request."""
        if ctx.extract is None:
            t = time.perf_counter()
            bm25 = self.kb.collection(ctx.collection).snapshot().bm25
            embedder = self._embedder(ctx.collection)
            rerank = self.kb.retriever.reranker
            extractor = Extractor(
                EmbeddingScorer(embedder),
                rerank=rerank.score_pairs if rerank is not None else None,
                min_score=self.settings.extract_min_score,
                # only a real tokenizer knows ordinary words: a remote embedder's word count
                # says 1 for every word, which would turn the unknown-term veto off
                ordinary=(
                    (lambda word: embedder.count_tokens(word) <= 1)
                    if getattr(embedder, "tokenizer", None) is not None
                    else None
                ),
            )
            passage_terms: set[str] | None = None

            def respell(term: str, word: str) -> str | None:
                """The term a misspelt word meant ("vaccum": the extractor asks only for words
                the embedder's tokenizer must piece together), and only a term that the
                passages found for this question use."""
                nonlocal passage_terms
                fixed = bm25.respelled(term)
                if fixed is None:
                    return None
                if passage_terms is None:
                    passage_terms = set().union(*(terms(p.text) for p in ctx.relevant))
                return fixed if fixed in passage_terms else None

            ctx.extract = extractor.answer(
                ctx.request.question,
                ctx.relevant,
                lambda terms: (bm25.size, bm25.document_frequencies(terms)),
                respell,
            )
            ctx.timings["extract"] = time.perf_counter() - t
        return ctx.extract

    # -- running ---------------------------------------------------------------------------

    def _events(self, request: AnswerRequest, *, stream: bool) -> Iterator[AnswerEvent]:
        started = time.perf_counter()
        request.check()
        request = replace(request, question=request.question.strip())
        mode = request.mode
        name = request.collection or self.settings.default_collection
        if request.model:
            self._spec(request.model)  # an unknown model is an error in every mode

        plans: list[_Plan] = []
        unavailable: list[UnavailableMode] = []
        if mode == COMPARE:
            for m in MODES:
                try:
                    plans.append(self._plan(m, request.model, in_compare=True))
                except (ModeUnavailable, ModelNotFound) as exc:
                    unavailable.append(UnavailableMode(m, str(exc)))
        else:
            plans.append(self._plan(mode, request.model))

        if request.collection is not None or any(p.grounded for p in plans):
            try:
                self.kb.collection(name)
            except CollectionNotFound as exc:
                if request.collection is not None or mode != COMPARE:
                    raise
                # compare without a collection still shows the ungrounded modes
                unavailable += [UnavailableMode(p.mode, str(exc)) for p in plans if p.grounded]
                plans = [p for p in plans if not p.grounded]

        ctx = _Context(
            request, name, request.support or self.settings.support_policy, started=started
        )
        if any(p.grounded for p in plans):
            t = time.perf_counter()
            retrieved = self.kb.search(
                request.question, collection=name, k=request.k, method=request.method
            )
            ctx.timings["retrieve"] = time.perf_counter() - t
            ctx.relevant = [
                p for p in retrieved if p.scores.get("dense", 0.0) >= self.settings.min_score
            ]

        if mode == COMPARE:
            yield from self._compare(ctx, plans, unavailable, stream)
            return
        runner = self._run(ctx, plans[0], dict(ctx.timings), started, stream)
        try:
            for event in runner:
                if event.type == "result":
                    event = AnswerEvent("done", plans[0].mode, result=event.result)
                yield event
        finally:
            runner.close()

    def _compare(
        self,
        ctx: _Context,
        plans: list[_Plan],
        unavailable: list[UnavailableMode],
        stream: bool,
    ) -> Iterator[AnswerEvent]:
        relevant = ctx.relevant
        numbered = [_citation_stub(i, p) for i, p in enumerate(relevant, 1)]
        yield AnswerEvent(
            "passages",
            COMPARE,
            data={
                "collection": ctx.collection,
                "modes": [p.mode for p in plans],
                "unavailable": [u.to_dict() for u in unavailable],
                "passages": [p.to_dict() for p in relevant],
                "citations": numbered,
                "not_covered": not relevant and any(p.grounded for p in plans),
            },
        )
        answers: list[AnswerResult] = []
        for plan in plans:
            runner = self._run(
                ctx, plan, dict(ctx.timings), time.perf_counter(), stream, announce=False
            )
            try:
                for event in runner:
                    if event.type == "result" and event.result is not None:
                        answers.append(event.result)
                    yield event
            finally:
                runner.close()
        result = AnswerResult(
            question=ctx.request.question,
            mode=COMPARE,
            collection=ctx.collection,
            passages=relevant,
            not_covered=not relevant and any(p.grounded for p in plans),
            usage=Usage(
                sum(a.usage.prompt_tokens for a in answers),
                sum(a.usage.completion_tokens for a in answers),
            ),
            timings={**ctx.timings, "total": time.perf_counter() - ctx.started},
            answers=answers,
            unavailable=unavailable,
        )
        yield AnswerEvent("done", COMPARE, result=result)

    def _run(
        self,
        ctx: _Context,
        plan: _Plan,
        timings: dict[str, float],
        started: float,
        stream: bool,
        *,
        announce: bool = True,
    ) -> Iterator[AnswerEvent]:
        """One mode: passages event (unless announced by compare), deltas, then a result event."""
        request = ctx.request
        generator = self.generators.get(plan.generator) if plan.generator else None
        if generator is not None:
            spec = self._spec(plan.generator)
            info = ModelInfo(
                name=plan.generator,
                model_id=str(getattr(generator, "model_id", spec.model)),
                kind=spec.kind,
                backend=spec.backend,
            )
            budget = request.max_new_tokens or spec.max_new_tokens
            temp = spec.temperature if request.temperature is None else request.temperature
        else:
            info, budget, temp = EXTRACTIVE, 0, 0.0
        result = AnswerResult(
            question=request.question,
            mode=plan.mode,
            model=info,
            collection=ctx.collection if plan.grounded else None,
            grounded=plan.grounded,
        )

        t = time.perf_counter()
        used: list[Passage] = []
        messages = None
        covered = bool(ctx.relevant)
        # the coverage gate; a request that only builds the prompt (generate=False) skips it
        if plan.grounded and covered and (request.generate or plan.mode == EXTRACT):
            first = ctx.extract is None
            covered = self._extract(ctx).covered
            if first:  # compare: the mode that paid for it
                timings["extract"] = ctx.timings["extract"]
        if plan.grounded and not covered:
            result.not_covered = True
            result.answer = not_covered_answer()
            result.finish_reason = "not_covered"
        elif plan.mode == EXTRACT:
            used = list(ctx.relevant)
            extract = self._extract(ctx)
            result.answer, result.quotes = extract.text, extract.quotes
            result.finish_reason = "extract"
        elif plan.grounded:
            assert generator is not None
            messages, used = build_rag_messages(
                request.question,
                ctx.relevant,
                count_tokens=generator.count_tokens,
                context_window=generator.context_window,
                max_new_tokens=budget,
            )
        else:
            messages = build_base_messages(request.question)
        timings["prompt"] = time.perf_counter() - t
        result.passages = used

        if announce:
            yield AnswerEvent(
                "passages",
                plan.mode,
                data={
                    "collection": result.collection,
                    "model": info.to_dict(),
                    "grounded": plan.grounded,
                    "passages": [p.to_dict() for p in used],
                    "citations": [_citation_stub(i, p) for i, p in enumerate(used, 1)],
                    "not_covered": result.not_covered,
                },
            )

        t = time.perf_counter()
        # a checked answer is held back under drop and fallback: nothing unsupported goes out
        live = stream and (not plan.grounded or ctx.policy == "flag")
        if messages is not None and not request.generate:
            result.finish_reason = "skipped"  # generate=False: retrieval and prompt only
        elif messages is not None:
            assert generator is not None
            stop = load_prompt("rag" if plan.grounded else "base").stop or None
            generation = None
            if live:
                # a live grounded stream still never shows a citation of a passage not given
                cites = CitationFilter(len(used)) if plan.grounded else None
                events = generator.stream(
                    messages, max_new_tokens=budget, temperature=temp, stop=stop
                )
                try:
                    for event in events:
                        delta = cites.feed(event.delta) if cites and event.delta else event.delta
                        if delta:
                            timings.setdefault("first_token", time.perf_counter() - started)
                            yield AnswerEvent("delta", plan.mode, text=delta)
                        if event.generation is not None:
                            generation = event.generation
                    if cites and (rest := cites.flush()):
                        yield AnswerEvent("delta", plan.mode, text=rest)
                finally:  # a closed stream (client gone) stops the model now, not at GC
                    if hasattr(events, "close"):
                        events.close()
                if generation is None:
                    raise KBError(f"model {plan.generator!r} ended its stream without a result")
            elif plan.grounded and used and ctx.policy == "fallback":
                generation = self._generate_until_refuted(
                    ctx,
                    generator,
                    messages,
                    used,
                    max_new_tokens=budget,
                    temperature=temp,
                    stop=stop,
                )
            else:
                generation = generator.generate(
                    messages, max_new_tokens=budget, temperature=temp, stop=stop
                )
            result.answer = generation.text.strip()
            result.finish_reason = generation.finish_reason
            result.usage = Usage(generation.prompt_tokens, generation.completion_tokens)
        timings["generate"] = time.perf_counter() - t

        if plan.grounded and used and generator is not None and request.generate:
            t = time.perf_counter()
            self._apply_support(ctx, result, used)
            timings["check"] = time.perf_counter() - t
        if stream and not live or (live and messages is None):
            timings.setdefault("first_token", time.perf_counter() - started)
            yield AnswerEvent("delta", plan.mode, text=result.answer)
        if used:
            result.citations = extract_citations(result.answer, used)
        timings["total"] = time.perf_counter() - started
        result.timings = timings
        yield AnswerEvent("result", plan.mode, result=result)

    def _generate_until_refuted(
        self,
        ctx: _Context,
        generator: Generator,
        messages: list[Message],
        used: list[Passage],
        **options: Any,
    ) -> Generation:
        """Generate, stopping at the first finished sentence the support check is sure to
        refute: under `fallback` that sentence already decides the answer, and a small model
        that has wandered off its passages would otherwise run to its token limit. The text
        returned is the text read, which `check` splits exactly as it was split here."""
        checker = self._checker(ctx.collection)
        not_covered = not_covered_answer()
        text, checked, pending, refuted = "", 0, False, False
        started = time.perf_counter()
        first_token = None
        events = generator.stream(messages, **options)
        try:
            for event in events:
                if event.generation is not None:
                    return event.generation
                text += event.delta
                first_token = first_token or time.perf_counter() - started
                # a sentence can only have ended after one of these; split again only then
                pending = pending or bool(_SENTENCE_END.search(event.delta))
                if not pending:
                    continue
                spans = split_sentences(remove_foreign_citations(text, len(used))[0])
                # finished once another sentence begins (and that is not its own citation)
                done = len(spans) - (2 if spans and spans[-1].text.startswith("[") else 1)
                if done <= checked:
                    continue
                refuted = any(
                    checker.refuted(s.text, used, not_covered) for s in spans[checked:done]
                )
                checked, pending = done, False
                if refuted:
                    break
        finally:  # stops the model now
            if hasattr(events, "close"):
                events.close()
        if not refuted:
            raise KBError("the model ended its stream without a result")
        return Generation(
            text=text,
            prompt_tokens=generator.count_message_tokens(messages),
            completion_tokens=generator.count_tokens(text),
            finish_reason="unsupported",
            model=str(getattr(generator, "model_id", "")),
            timings={"first_token": first_token or 0.0, "total": time.perf_counter() - started},
        )

    def _apply_support(self, ctx: _Context, result: AnswerResult, used: list[Passage]) -> None:
        """Check a generated answer against the passages it was given; apply the policy."""
        not_covered = not_covered_answer()
        generated = result.answer
        report = self._checker(ctx.collection).check(
            generated, used, policy=ctx.policy, not_covered=not_covered
        )
        result.support = report
        if not report.claims and any(
            is_not_covered(s.text, not_covered) for s in report.sentences
        ):  # the model itself said the passages do not cover the question
            self._not_covered(result, report)
        elif report.claims and report.all_supported:
            report.action, report.answer_share = "kept", 1.0
            result.answer = report.checked
        elif ctx.policy == "flag":
            report.action, report.answer_share = "flagged", report.generated_share
            result.answer = report.checked
        elif ctx.policy == "drop":
            kept = [s for s in report.sentences if s.claim and s.supported]
            if kept:
                report.action, report.answer_share = "dropped", 1.0
                result.answer = join_sentences(kept)
            else:
                self._not_covered(result, report)
        else:  # fallback; an empty or content-free answer falls back too
            self._fall_back(ctx, result, used)
        if result.answer != generated:
            report.generated = generated

    @staticmethod
    def _not_covered(result: AnswerResult, report: SupportReport) -> None:
        report.action, report.answer_share = "not_covered", None
        result.answer = not_covered_answer()
        result.not_covered = True
        result.finish_reason = "not_covered"

    def _fall_back(self, ctx: _Context, result: AnswerResult, used: list[Passage]) -> None:
        report = result.support
        assert report is not None
        extract = self._extract(ctx)
        if not extract.quotes:
            self._not_covered(report=report, result=result)
            return
        report.action, report.answer_share = "fallback", 1.0
        result.answer = extract.text
        result.quotes = extract.quotes
        result.finish_reason = "fallback"
        # the quotes number and quote the relevant passages whole; the prompt may have cut the
        # last passage it used, and used fewer
        used[:] = ctx.relevant[: max(len(used), *(q.n for q in extract.quotes))]
        result.passages = used


def _request(request: AnswerRequest | str, fields: dict[str, Any]) -> AnswerRequest:
    if isinstance(request, AnswerRequest):
        return replace(request, **fields) if fields else request
    return AnswerRequest(request, **fields)


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
