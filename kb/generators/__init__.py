"""Generators by name: the specs in settings plus those registered at run time (fine-tuned models).

registry = GeneratorRegistry(settings)
answer = registry.get("smollm2").generate([{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kb.errors import BackendError, InvalidInput, ModelNotFound
from kb.generators.base import Generation, Generator, Message, StreamEvent
from kb.settings import GeneratorSpec, Settings

__all__ = [
    "BACKENDS",
    "Generation",
    "Generator",
    "GeneratorRegistry",
    "Message",
    "StreamEvent",
    "build_generator",
]

BACKENDS = ("local", "openai")

log = logging.getLogger(__name__)


def build_generator(spec: GeneratorSpec, cache_dir: Path, *, pool=None) -> Generator:
    """The generator for one spec; transformers ones share weights through `pool` when given."""
    if spec.backend == "local":
        return _build_local(spec, cache_dir, pool)
    if spec.backend == "openai":
        from kb.generators.openai_compat import OpenAIGenerator

        return OpenAIGenerator(spec)
    raise InvalidInput(
        f"generator {spec.name!r} has backend {spec.backend!r}: use one of {', '.join(BACKENDS)}"
    )


def _build_local(spec: GeneratorSpec, cache_dir: Path, pool) -> Generator:
    """llama.cpp where the spec's runtime allows and it can run the model, else transformers."""
    from kb.generators.local import LocalGenerator

    if spec.runtime != "transformers":
        from kb.generators.llamacpp import LlamaCppGenerator, llamacpp_unavailable

        reason = llamacpp_unavailable(spec)
        if reason is None or spec.runtime == "llamacpp":
            try:
                return LlamaCppGenerator(
                    spec, cache_dir
                )  # names the reason when runtime is "llamacpp"
            except BackendError as exc:
                if spec.runtime == "llamacpp":
                    raise
                log.warning("generator %r runs on transformers: %s", spec.name, exc)
        else:
            log.info("generator %r runs on transformers: %s", spec.name, reason)
    return LocalGenerator(spec, cache_dir, pool=pool)


class GeneratorRegistry:
    """Named generator specs, built lazily and cached; thread-safe.

    Local specs on transformers with the same model, adapter and dtype share one copy of the
    weights; each llama.cpp generator maps its GGUF file (the pages are shared) with its own cache.
    """

    def __init__(self, settings: Settings):
        self.cache_dir = settings.cache_dir
        self.default_name = settings.default_generator
        self._specs: dict[str, GeneratorSpec] = {s.name: s for s in settings.generators}
        self._built: dict[str, Generator] = {}
        self._pool = None
        self._lock = threading.Lock()

    def specs(self) -> list[GeneratorSpec]:
        with self._lock:
            return list(self._specs.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._specs)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._specs

    def spec(self, name: str) -> GeneratorSpec:
        with self._lock:
            return self._spec(name)

    def register(self, spec: GeneratorSpec) -> None:
        """Add a spec, or replace the one with the same name (its built generator is dropped)."""
        if not spec.name.strip():
            raise InvalidInput("a generator spec needs a non-empty name")
        if spec.backend == "local" and spec.adapter and not Path(spec.adapter).is_dir():
            raise InvalidInput(
                f"adapter folder {spec.adapter!r} of generator {spec.name!r} does not exist: "
                "register it after its training run has saved the adapter"
            )
        with self._lock:
            self._specs[spec.name] = spec
            self._built.pop(spec.name, None)

    def unregister(self, name: str) -> GeneratorSpec:
        """Remove a spec and its generator; weights no other generator uses are freed."""
        with self._lock:
            spec = self._spec(name)
            del self._specs[name]
            self._built.pop(name, None)
            return spec

    def get(self, name: str | None = None) -> Generator:
        """The generator for `name` (default: settings.default_generator), built on first use."""
        name = name or self.default_name
        with self._lock:
            generator = self._built.get(name)
            if generator is None:
                spec = self._spec(name)
                if spec.backend == "local" and self._pool is None:
                    from kb.generators.local import LocalModelPool

                    self._pool = LocalModelPool(self.cache_dir)
                generator = build_generator(spec, self.cache_dir, pool=self._pool)
                self._built[name] = generator
            return generator

    def is_loaded(self, name: str) -> bool:
        """Whether `name` is built and its weights (if local) are in memory."""
        with self._lock:
            generator = self._built.get(name)
        return generator is not None and generator.loaded

    def _spec(self, name: str) -> GeneratorSpec:
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(sorted(self._specs)) or "none"
            raise ModelNotFound(
                f"no generator named {name!r}: known generators are {known}; add it to "
                "KB_GENERATORS or register a fine-tuned model"
            )
        return spec
