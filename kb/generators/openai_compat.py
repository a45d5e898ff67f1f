"""Generation through any OpenAI-compatible /v1/chat/completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server), with the official `openai` client."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from kb.errors import BackendError, InvalidInput
from kb.generators.base import (
    Generation,
    Generator,
    Message,
    Stopwatch,
    StreamEvent,
    check_messages,
)
from kb.settings import GeneratorSpec

#: characters per token for English text with BPE tokenizers; good to about ±20%
CHARS_PER_TOKEN = 4


class OpenAIGenerator(Generator):
    """A `GeneratorSpec` with backend "openai": `spec.model` is the remote model id.

    Token counts are approximate (characters / 4): tiktoken would have to download its
    vocabulary files, which kb never does at run time. Usage reported by the endpoint is exact
    and is what `Generation` carries whenever the endpoint sends it.
    """

    def __init__(self, spec: GeneratorSpec, client=None):
        self._take_spec(spec, "openai")
        self.model_id = f"openai:{spec.model}"
        self.endpoint = spec.base_url or "https://api.openai.com/v1"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            # local servers ignore the key, but the client insists on one
            self._client = OpenAI(
                base_url=self.spec.base_url, api_key=self.spec.api_key or "unused"
            )
        return self._client

    def count_tokens(self, text: str) -> int:
        """Approximate: characters / 4 (see the class docstring)."""
        return max(1, -(-len(text) // CHARS_PER_TOKEN)) if text else 0

    def generate(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        stopwatch = Stopwatch()
        try:
            response = self.client.chat.completions.create(
                **self._params(messages, max_new_tokens, temperature, stop)
            )
        except Exception as exc:  # the client raises many types; report one
            raise self._error(exc) from exc
        stopwatch.mark_first_token()  # without streaming the whole answer arrives at once
        if not response.choices:
            raise BackendError(
                f"endpoint {self.endpoint} returned no choices for model {self.spec.model!r}: "
                "check that the server serves this model"
            )
        choice = response.choices[0]
        text = choice.message.content or ""
        return self._generation(messages, text, choice.finish_reason, response.usage, stopwatch)

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream deltas; usage comes from the endpoint's last chunk (stream_options.include_usage)."""
        stopwatch = Stopwatch()
        params = self._params(messages, max_new_tokens, temperature, stop)
        parts: list[str] = []
        finish_reason, usage = None, None
        try:
            chunks = self.client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
            with chunks:
                for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices[:1]:
                        delta = choice.delta.content if choice.delta else None
                        if delta:
                            stopwatch.mark_first_token()
                            parts.append(delta)
                            yield StreamEvent(delta=delta)
                        finish_reason = choice.finish_reason or finish_reason
        except BackendError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        yield StreamEvent(
            generation=self._generation(messages, "".join(parts), finish_reason, usage, stopwatch)
        )

    def _params(
        self,
        messages: list[Message],
        max_new_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
    ) -> dict[str, Any]:
        check_messages(messages)
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = self.temperature if temperature is None else temperature
        if limit < 1:
            raise InvalidInput(f"max_new_tokens={limit}: ask for at least 1 token")
        if temp < 0:
            raise InvalidInput(f"temperature={temp}: use 0 (greedy) or a positive value")
        params: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            "max_tokens": limit,
            "temperature": temp,
        }
        if stop:
            params["stop"] = list(stop)
        return params

    def _generation(self, messages, text, finish_reason, usage, stopwatch: Stopwatch) -> Generation:
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens
            if prompt_tokens is not None
            else self.count_message_tokens(messages),
            completion_tokens=completion_tokens
            if completion_tokens is not None
            else self.count_tokens(text),
            finish_reason="length" if finish_reason == "length" else "stop",
            model=self.model_id,
            timings=stopwatch.timings(),
        )

    def _error(self, exc: Exception) -> BackendError:
        return BackendError(
            f"generation endpoint {self.endpoint} failed for model {self.spec.model!r}: {exc}; "
            "check the generator's base_url, api_key and model id"
        )
