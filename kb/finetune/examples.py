"""The training example record and its two on-disk shapes: chat messages and prompt/completion."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from kb.errors import InvalidInput

Format = Literal["chat", "completion"]


def normalize_prompt(text: str) -> str:
    """Case, whitespace and punctuation folded away, for comparing prompts across files."""
    return " ".join(re.findall(r"\w+", text.casefold()))


@dataclass
class Example:
    """One training example; `messages` is set when a chat source is passed through as is."""

    prompt: str = ""
    completion: str = ""
    system: str | None = None
    messages: list[Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # the stratification key of a classification example
    #: the side of the split its recipe chose ("train" or "validation"); None: split later
    split: str | None = None

    def chat(self) -> list[Any]:
        if self.messages is not None:
            first = self.messages[0] if self.messages else None
            has_system = isinstance(first, dict) and first.get("role") == "system"
            if self.system and not has_system:
                return [{"role": "system", "content": self.system}, *self.messages]
            return list(self.messages)
        turns = [{"role": "user", "content": self.prompt}]
        turns.append({"role": "assistant", "content": self.completion})
        return [{"role": "system", "content": self.system}, *turns] if self.system else turns

    def split_key(self) -> str:
        """Examples with the same prompt (as validation compares them) share a split side."""
        if self.messages is None:
            prompt = self.prompt
        else:
            users = [m for m in self.messages if isinstance(m, dict) and m.get("role") == "user"]
            prompt = "\n".join(str(m.get("content", "")) for m in users)
        key = normalize_prompt(prompt)
        return key or json.dumps(self.to_record("chat"), sort_keys=True, ensure_ascii=False)

    def to_record(self, fmt: Format, *, separator: str = "", stop: str = "") -> dict[str, Any]:
        if fmt == "chat":
            return {"messages": self.chat(), "metadata": self.metadata}
        prompt, completion, system = self.prompt, self.completion, self.system
        if self.messages is not None:
            system, prompt, completion = self._single_turn()
        if system:
            prompt = f"{system}\n\n{prompt}"
        if separator and not prompt.endswith(separator):
            prompt += separator
        completion = " " + completion.strip()
        if stop and not completion.endswith(stop):
            completion += stop
        return {"prompt": prompt, "completion": completion, "metadata": self.metadata}

    def _single_turn(self) -> tuple[str | None, str, str]:
        messages = self.messages or []
        roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
        if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
            where = self.metadata.get("row") or self.metadata.get("line") or "?"
            raise InvalidInput(
                f"example {where} of {self.metadata.get('source', 'the source')} has the turns "
                f"{roles}, which `--format completion` cannot hold: use the chat format"
            )
        system = messages[0].get("content") if roles[0] == "system" else self.system
        return system, str(messages[-2].get("content", "")), str(messages[-1].get("content", ""))
