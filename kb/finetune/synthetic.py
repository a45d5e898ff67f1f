"""Examples written by a generator model: completions for prompts, and Q/A pairs from chunks."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kb.finetune.examples import Example
from kb.finetune.sources import Skipped
from kb.finetune.templates import fill_template, package_prompt

Progress = Callable[[int, int], None]

QA_PROMPT_FILE = "finetune_qa.txt"
MIN_CHUNK_WORDS = 12
MIN_QUESTION_CHARS = 8
MAX_ANSWER_CHARS = 2000
ATTEMPTS_PER_EXAMPLE = 2  # chunks tried per wanted example, since a small model often misfires

_LABEL = r"^[\s>*#\-\d.)]*\**\s*{name}\s*\**\s*[:.)\-]\s*\**\s*(.*)$"
_QUESTION = re.compile(_LABEL.format(name=r"(?:question|q)"), re.IGNORECASE)
_ANSWER = re.compile(_LABEL.format(name=r"(?:answer|a)"), re.IGNORECASE)
_REPEATED_LABEL = re.compile(r"^(?:\s*(?:question|q)\s*:\s*)+", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"<\s*(?:the\s+)?(?:question|answer)\s*>", re.IGNORECASE)


@dataclass
class QAPair:
    question: str
    answer: str


def parse_qa(text: str) -> tuple[QAPair | None, str]:
    """Find one question and its answer in a model's reply; on failure say why."""
    pair = _parse_json_qa(text) or _parse_labelled_qa(text) or _parse_bare_qa(text)
    if pair is None:
        return None, "no question and answer found in the model output"
    question = _REPEATED_LABEL.sub("", pair.question.strip().strip("\"'*").strip())
    answer = pair.answer.strip().strip("\"'*").strip()[:MAX_ANSWER_CHARS]
    if _PLACEHOLDER.search(question) or _PLACEHOLDER.search(answer):
        return None, "the model copied the reply template instead of filling it"
    if "?" in question:
        question = question[: question.index("?") + 1]
    else:
        return None, "the question has no question mark"
    if len(question) < MIN_QUESTION_CHARS:
        return None, "the question is too short"
    if not answer:
        return None, "the answer is empty"
    if answer.endswith(":"):
        return None, "the answer is only a lead-in"
    if answer.casefold() == question.casefold():
        return None, "the answer repeats the question"
    return QAPair(question, answer), ""


def _parse_json_qa(text: str) -> QAPair | None:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    folded = {str(k).casefold(): v for k, v in data.items()}
    question, answer = folded.get("question"), folded.get("answer")
    if isinstance(question, str) and isinstance(answer, str):
        return QAPair(question, answer)
    return None


def _parse_labelled_qa(text: str) -> QAPair | None:
    question: list[str] | None = None
    answer: list[str] | None = None
    for line in text.splitlines():
        if answer is None and (m := _QUESTION.match(line)):
            question = [m.group(1)]
        elif question is not None and answer is None and (m := _ANSWER.match(line)):
            answer = [m.group(1)]
        elif answer is not None:
            if _QUESTION.match(line):
                break  # a second pair: keep the first
            answer.append(line)
        elif question is not None:
            question.append(line)
    if question is None or answer is None:
        return None
    return QAPair(" ".join(s.strip() for s in question if s.strip()), "\n".join(answer).strip())


def _parse_bare_qa(text: str) -> QAPair | None:
    """A reply without labels: a first line ending in '?', then the answer."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) >= 2 and lines[0].endswith("?"):
        return QAPair(lines[0], "\n".join(lines[1:]))
    return None


def _chat(system: str | None, user: str) -> list[dict[str, str]]:
    turns = [{"role": "user", "content": user}]
    return [{"role": "system", "content": system}, *turns] if system else turns


def generate_completions(
    examples: list[Example],
    generator: Any,
    *,
    model_name: str,
    max_new_tokens: int,
    progress: Progress | None = None,
) -> tuple[list[Example], list[Skipped]]:
    """Fill each example's completion with the model's reply; empty replies are skipped."""
    kept, skipped = [], []
    for done, example in enumerate(examples, start=1):
        reply = generator.generate(
            _chat(example.system, example.prompt), max_new_tokens=max_new_tokens
        )
        text = (getattr(reply, "text", None) or "").strip()
        if text:
            example.completion = text
            example.metadata["generated_by"] = model_name
            kept.append(example)
        else:
            where = example.metadata.get("row", "?")
            source = example.metadata.get("source", "")
            skipped.append(Skipped(f"row {where} of {source}", "the model returned an empty reply"))
        if progress:
            progress(done, len(examples))
    return kept, skipped


def _field(chunk: Any, name: str) -> Any:
    return chunk.get(name) if isinstance(chunk, dict) else getattr(chunk, name, None)


def sample_chunks(chunks: Iterable[Any], k: int, seed: int) -> list[Any]:
    """A seeded uniform sample of k chunks in one pass, without holding the whole collection."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, Any]] = []
    for i, chunk in enumerate(chunks):
        if len(reservoir) < k:
            reservoir.append((i, chunk))
        else:
            j = rng.randint(0, i)
            if j < k:
                reservoir[j] = (i, chunk)
    reservoir.sort(key=lambda item: item[0])
    picked = [chunk for _, chunk in reservoir]
    rng.shuffle(picked)
    return picked


def qa_examples_from_chunks(
    chunks: Iterable[Any],
    generator: Any,
    *,
    model_name: str,
    max_examples: int,
    seed: int,
    system: str | None,
    max_new_tokens: int,
    progress: Progress | None = None,
) -> tuple[list[Example], list[Skipped]]:
    """Ask the model for a question each sampled chunk answers, and the answer, up to
    `max_examples` usable pairs; chunks too short to ask about and unusable replies are counted
    as skipped."""
    template = package_prompt(QA_PROMPT_FILE)
    candidates = sample_chunks(chunks, max_examples * ATTEMPTS_PER_EXAMPLE, seed)
    examples, skipped = [], []
    for chunk in candidates:
        if len(examples) >= max_examples:
            break
        chunk_id, text, source = (_field(chunk, n) for n in ("chunk_id", "text", "source"))
        item = f"chunk {chunk_id} of {source}"
        if len(str(text or "").split()) < MIN_CHUNK_WORDS:
            skipped.append(Skipped(item, f"fewer than {MIN_CHUNK_WORDS} words to ask about"))
            continue
        reply = generator.generate(
            _chat(None, fill_template(template, {"text": text})), max_new_tokens=max_new_tokens
        )
        pair, why = parse_qa(getattr(reply, "text", None) or "")
        if pair is None:
            skipped.append(Skipped(item, f"unusable model output: {why}"))
        else:
            examples.append(
                Example(
                    prompt=pair.question,
                    completion=pair.answer,
                    system=system,
                    metadata={
                        "chunk_ids": [chunk_id],
                        "source": source,
                        "generated_by": model_name,
                    },
                )
            )
        if progress:
            progress(min(len(examples), max_examples), max_examples)
    return examples, skipped
