"""Chat messages from prompt templates (package data in kb/prompts/) and answer citations.

`build_rag_messages` packs numbered passages into the model's context window, each fenced as
`<passage id="n" source="...">` data so that instructions inside a document stay inert text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

import yaml

from kb.errors import InvalidInput
from kb.types import Passage

#: tokens kept free for chat framing and for tokenizer disagreement between the parts and the whole
SAFETY_MARGIN = 32
#: chat-format tokens per message (role header and end marker)
MESSAGE_OVERHEAD = 6
#: a passage is cut to fit only when at least this many tokens of it would remain
MIN_TRUNCATED_TOKENS = 32
SNIPPET_CHARS = 200

_FENCE_TAG = re.compile(r"<(\s*/?\s*passage)", re.IGNORECASE)
_CITATION = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt file: `system` and `user` text with {placeholders}; RAG files add `passage`."""

    name: str
    system: str
    user: str
    passage: str | None = None
    not_covered: str | None = None
    #: stop strings to pass to the generator with these messages
    stop: tuple[str, ...] = ()

    def render_system(self) -> str:
        return self.system.format(not_covered=self.not_covered or "").strip()

    def render_user(self, question: str, passages: str = "") -> str:
        return self.user.format(
            question=question, passages=passages, not_covered=self.not_covered or ""
        ).strip()


@dataclass
class Citation:
    """A passage the answer was given, numbered as in the prompt; `cited` if the answer says [n]."""

    n: int
    chunk_id: int
    doc_id: str
    source: str
    start: int
    end: int
    page: int | None
    snippet: str
    cited: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source": self.source,
            "start": self.start,
            "end": self.end,
            "page": self.page,
            "snippet": self.snippet,
            "cited": self.cited,
        }


def prompt_names() -> list[str]:
    folder = resources.files("kb").joinpath("prompts")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


@cache
def load_prompt(name: str) -> PromptTemplate:
    """Read kb/prompts/<name>.yaml; an unknown name lists the prompts that exist."""
    resource = resources.files("kb").joinpath("prompts", f"{name}.yaml")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not resource.is_file():
        raise InvalidInput(f"no prompt named {name!r}: use one of {', '.join(prompt_names())}")
    data = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    missing = [key for key in ("system", "user") if not data.get(key)]
    if missing:
        raise InvalidInput(
            f"prompt {name!r} lacks {', '.join(missing)}: add them to kb/prompts/{name}.yaml"
        )
    return PromptTemplate(
        name=name,
        system=data["system"],
        user=data["user"],
        passage=data.get("passage"),
        not_covered=data.get("not_covered"),
        stop=tuple(data.get("stop") or ()),
    )


def _template(template: str | PromptTemplate) -> PromptTemplate:
    return template if isinstance(template, PromptTemplate) else load_prompt(template)


def not_covered_answer(template: str | PromptTemplate = "rag") -> str:
    """The fixed answer for a question no retrieved passage covers (no model call needed)."""
    prompt = _template(template)
    if not prompt.not_covered:
        raise InvalidInput(
            f"prompt {prompt.name!r} has no not_covered sentence: add one to its YAML file"
        )
    return prompt.not_covered.strip()


def build_base_messages(question: str, *, template: str | PromptTemplate = "base") -> list[dict]:
    """A plain assistant conversation: the question without any passages."""
    prompt = _template(template)
    return [
        {"role": "system", "content": prompt.render_system()},
        {"role": "user", "content": prompt.render_user(question.strip())},
    ]


def fence_passage(prompt: PromptTemplate, n: int, passage: Passage, text: str | None = None) -> str:
    """One passage as a fenced, numbered data block; fence tags inside its text are defused."""
    if not prompt.passage:
        raise InvalidInput(
            f"prompt {prompt.name!r} has no passage block: add `passage:` to its YAML file"
        )
    body = _FENCE_TAG.sub(r"&lt;\1", passage.text if text is None else text).strip()
    return prompt.passage.format(n=n, source=_attribute(passage.source), text=body).strip()


def _attribute(value: str) -> str:
    value = " ".join(str(value).split())
    return (
        value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


def build_rag_messages(
    question: str,
    passages: Sequence[Passage],
    *,
    count_tokens: Callable[[str], int],
    context_window: int,
    max_new_tokens: int,
    template: str | PromptTemplate = "rag",
) -> tuple[list[dict], list[Passage]]:
    """Messages asking `question` over as many passages as fit, and the passages used.

    Passages go in the order given (best first). The budget is the context window less the
    answer's tokens, the instructions, the question and a safety margin; the first passage
    that does not fit is cut to fit (if enough of it remains) and later ones are dropped.
    The returned passages are numbered 1..n in the prompt, with text and `end` as sent.
    """
    prompt = _template(template)
    question = question.strip()
    system = prompt.render_system()
    fixed = count_tokens(system) + count_tokens(prompt.render_user(question)) + 2 * MESSAGE_OVERHEAD
    budget = context_window - max_new_tokens - fixed - SAFETY_MARGIN
    if budget < 0:
        raise InvalidInput(
            f"the question and instructions take {fixed} tokens, which with max_new_tokens="
            f"{max_new_tokens} leaves no room in the {context_window}-token context window: "
            "shorten the question or lower max_new_tokens"
        )
    blocks: list[str] = []
    used: list[Passage] = []
    for passage in passages:
        n = len(used) + 1
        block = fence_passage(prompt, n, passage)
        cost = count_tokens(block) + 2  # the blank line between blocks
        if cost <= budget:
            blocks.append(block)
            used.append(replace(passage))
            budget -= cost
            continue
        frame = count_tokens(fence_passage(prompt, n, passage, text="")) + 2
        if budget - frame >= MIN_TRUNCATED_TOKENS:
            text = _truncate(passage.text, budget - frame, count_tokens)
            blocks.append(fence_passage(prompt, n, passage, text=text))
            used.append(replace(passage, text=text, end=passage.start + len(text)))
        break
    user = prompt.render_user(question, "\n\n".join(blocks))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], used


def _truncate(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of `text` within `max_tokens`, cut at a word boundary when possible."""
    lo, hi = 0, len(text)
    while lo < hi:  # binary search on characters: O(log n) tokenizer calls
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    space = cut.rfind(" ")
    if lo < len(text) and space > len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip()


def cited_numbers(answer: str) -> set[int]:
    """Every n the answer cites as [n], [n, m] or [n][m]."""
    return {int(n) for group in _CITATION.findall(answer) for n in re.split(r"\s*[,;]\s*", group)}


def extract_citations(answer: str, used: Sequence[Passage]) -> list[Citation]:
    """One Citation per passage given to the model; numbers outside 1..len(used) are ignored."""
    cited = cited_numbers(answer)
    return [
        Citation(
            n=n,
            chunk_id=passage.chunk_id,
            doc_id=passage.doc_id,
            source=passage.source,
            start=passage.start,
            end=passage.end,
            page=passage.page,
            snippet=_snippet(passage.text),
            cited=n in cited,
        )
        for n, passage in enumerate(used, start=1)
    ]


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= SNIPPET_CHARS:
        return flat
    cut = flat[:SNIPPET_CHARS]
    space = cut.rfind(" ")
    return (cut[:space] if space > SNIPPET_CHARS // 2 else cut) + "…"
