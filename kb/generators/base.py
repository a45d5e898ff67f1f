"""The generator interface: chat messages in, a `Generation` (or a stream of events) out.

A backend implements `generate` and `count_tokens`. Streaming has a default that yields the
whole answer at once; backends that can stream token by token override `stream`.

The stream protocol::

    for event in generator.stream(messages):
        if event.generation is None:
            print(event.delta, end="")      # a non-empty piece of answer text
        else:
            usage = event.generation        # always last, exactly once

Joining every `delta` gives `event.generation.text` of the final event.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kb.errors import InvalidInput

if TYPE_CHECKING:
    from kb.settings import GeneratorSpec

#: a chat message as the OpenAI API shapes it: {"role": "system"|"user"|"assistant", "content": str}
Message = dict[str, str]


@dataclass
class Generation:
    """One finished answer with its token usage and timings in seconds."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    #: "stop" (end of answer or a stop string), "length" (token limit), or "unsupported" (the
    #: answering core stopped it at a sentence its passages refute)
    finish_reason: str
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # "first_token", "total"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token; None when there is too little to measure."""
        first, total = self.timings.get("first_token"), self.timings.get("total")
        if first is None or total is None or self.completion_tokens < 2 or total <= first:
            return None
        return (self.completion_tokens - 1) / (total - first)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
            },
            "timings": dict(self.timings),
        }


@dataclass
class StreamEvent:
    """A piece of a streamed answer: a text `delta`, or (last) the finished `generation`."""

    delta: str = ""
    generation: Generation | None = None

    @property
    def is_final(self) -> bool:
        return self.generation is not None


class Generator(ABC):
    """A chat model behind one name. Subclasses implement `generate` and `count_tokens`."""

    name: str
    #: what answered, e.g. "local:smollm2" or "openai:gpt-4o-mini"; recorded with answers
    model_id: str
    context_window: int
    max_new_tokens: int = 256
    temperature: float = 0.0

    def _take_spec(self, spec: GeneratorSpec, backend: str) -> None:
        """Check that `spec` is for this class's backend, and take its name and limits."""
        if spec.backend != backend:
            raise InvalidInput(
                f"generator {spec.name!r} has backend {spec.backend!r}: "
                f"{type(self).__name__} needs {backend!r}"
            )
        self.spec = spec
        self.name = spec.name
        self.context_window = spec.context_window
        self.max_new_tokens = spec.max_new_tokens
        self.temperature = spec.temperature

    @abstractmethod
    def generate(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        """Answer the conversation; None arguments fall back to the generator's own settings."""

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Iterator[StreamEvent]:
        """Yield text deltas, then one final event carrying the Generation (see module docs)."""
        generation = self.generate(
            messages, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop
        )
        if generation.text:
            yield StreamEvent(delta=generation.text)
        yield StreamEvent(generation=generation)

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's prompt."""

    def count_message_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens of a whole conversation, chat-format overhead included."""
        # ChatML-style framing costs about four tokens a message plus the assistant header.
        return sum(self.count_tokens(m.get("content") or "") + 4 for m in messages) + 3

    @property
    def loaded(self) -> bool:
        """Whether the model is ready in memory (remote backends always are)."""
        return True

    def load(self) -> None:  # noqa: B027 - optional hook, nothing to do for remote backends
        """Load weights and warm up now rather than on the first request."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model_id={self.model_id!r})"


def check_messages(messages: list[Message]) -> None:
    """Reject malformed conversations before they reach a backend."""
    if not messages:
        raise InvalidInput("messages is empty: pass at least one {'role': 'user', 'content': ...}")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise InvalidInput(
                f"messages[{i}] has role {role!r}: use 'system', 'user' or 'assistant'"
            )
        if not isinstance(message.get("content"), str):
            raise InvalidInput(f"messages[{i}] has no string 'content': give its text as a string")


class StopFilter:
    """Cuts a streamed text at the first stop string, holding back a possible partial match.

    Feed deltas in order; each call returns the text that is safe to emit now.
    """

    def __init__(self, stop: Sequence[str] | None):
        self.stops = [s for s in (stop or []) if s]
        self.stopped = False
        self._pending = ""
        self._hold = max((len(s) - 1 for s in self.stops), default=0)

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self._pending += delta
        if not self.stops:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        held = next(
            (
                k
                for k in range(min(self._hold, len(self._pending)), 0, -1)
                if any(s.startswith(self._pending[-k:]) for s in self.stops)
            ),
            0,
        )
        keep = len(self._pending) - held
        out, self._pending = self._pending[:keep], self._pending[keep:]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    stop_filter = StopFilter(stop)
    out = stop_filter.feed(text) + stop_filter.flush()
    return out, stop_filter.stopped


class Stopwatch:
    """Times a generation: seconds to the first token and in total."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token: float | None = None

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started

    def timings(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {
            "first_token": self.first_token if self.first_token is not None else total,
            "total": total,
        }
