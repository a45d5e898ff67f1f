"""Training files -> token ids with labels on the assistant's words only (-100 elsewhere)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput

IGNORE = -100
KEEP_PROMPT_TAIL = 16  # tokens kept before the first completion when a long prompt is cut


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def label_count(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def read_examples(
    path: str | Path, *, limit: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Records of a chat (`messages`) or completion (`prompt`/`completion`) JSONL file.

    With `limit`, a seeded random sample of that many records is kept, in file order.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(
                    f"{path}:{number} is not valid JSON ({exc.msg}): check the file with "
                    "`kb finetune validate`"
                ) from exc
            if not _usable(record):
                raise InvalidInput(
                    f"{path}:{number} has neither a 'messages' list with an assistant turn nor "
                    "'prompt' and 'completion': check the file with `kb finetune validate`"
                )
            records.append(record)
    if not records:
        raise InvalidInput(f"{path} holds no examples: prepare data with `kb finetune prepare`")
    if limit is not None and len(records) > limit:
        keep = sorted(random.Random(seed).sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    return records


def _usable(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    messages = record.get("messages")
    if isinstance(messages, list):
        return any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
    return isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str)


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The turns before the last assistant turn: what the model sees when asked."""
    messages = _messages(record)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def completion_text(record: dict[str, Any]) -> str:
    """The last assistant turn's text (the expected answer)."""
    messages = _messages(record)
    return next(m["content"] for m in reversed(messages) if m["role"] == "assistant")


def _messages(record: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in record:
        return [
            {"role": str(m.get("role")), "content": str(m.get("content") or "")}
            for m in record["messages"]
        ]
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["completion"]},
    ]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat template applied to `messages`, ending where the assistant starts writing."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_record(tokenizer: Any, record: dict[str, Any], max_seq_len: int) -> EncodedExample:
    """Token ids and labels for one record; only assistant turns (and their end token) are
    learned. Chat records use the tokenizer's chat template, exactly as generation renders
    them; completion records are `prompt + completion + eos`."""
    if "messages" in record:
        segments = _chat_segments(tokenizer, _messages(record))
    else:
        eos = tokenizer.eos_token or ""
        segments = [(record["prompt"], False), (record["completion"] + eos, True)]
    ids: list[int] = []
    labels: list[int] = []
    for text, learned in segments:
        if not text:
            continue
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if learned else [IGNORE] * len(part)
    return _fit(EncodedExample(ids, labels), max_seq_len)


def _chat_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, learned) pieces, one learned piece per
    assistant turn. Each piece is tokenized on its own, as generation sees the prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template: use "
            "a chat model, or prepare the data with `--format completion`"
        )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    segments: list[tuple[str, bool]] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_prompt(tokenizer, messages[:i])
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(through) and done <= len(before)):
            # a template that rewrites earlier turns: learn the last answer, found by its text
            start = (
                full.rfind(messages[-1]["content"]) if messages[-1]["role"] == "assistant" else -1
            )
            if start < 0:
                raise InvalidInput(
                    "the tokenizer's chat template does not render this conversation "
                    "turn by turn: prepare the data with `--format completion`"
                )
            return [(full[:start], False), (full[start:], True)]
        segments.append((full[done : len(before)], False))
        segments.append((full[len(before) : len(through)], True))
        done = len(through)
    segments.append((full[done:], False))
    return segments


def _fit(example: EncodedExample, max_seq_len: int) -> EncodedExample:
    """Cut an example to `max_seq_len` tokens: the middle of the prompt goes first (its start
    and the last tokens before the answer stay); past that, the end is cut."""
    excess = len(example.input_ids) - max_seq_len
    if excess <= 0:
        return example
    first = next((i for i, t in enumerate(example.labels) if t != IGNORE), len(example.labels))
    tail = min(KEEP_PROMPT_TAIL, first)
    cut_end = first - tail
    cut_start = cut_end - excess
    ids, labels = example.input_ids, example.labels
    if cut_start >= 8:
        ids = ids[:cut_start] + ids[cut_end:]
        labels = labels[:cut_start] + labels[cut_end:]
    else:
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    return EncodedExample(ids, labels, truncated=True)
