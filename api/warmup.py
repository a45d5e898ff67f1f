"""The start-up warm-up: what the first request would otherwise wait for, loaded in advance.

In a background thread, one step at a time: the default embedder, then each collection (its
FAISS and BM25 snapshot, its query encoder, one search through them), then the default
generator if it is local: its weights, one tiny generation, and one rag answer over the
default collection, asked in the words of its first chunk so that it is covered, which walks
every step a first question takes (retrieval, prompt, generation, the support check with its
own models). /health lists the steps still to run; /ready answers 503 until none are left.

A process that exits while a thread is inside torch's model loading aborts (SIGABRT,
"terminate called without an active exception"), so `stop` lets the step in progress finish:
it skips the steps not yet started and waits for the current one (up to `timeout`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kb.answering import Answerer

log = logging.getLogger("kb.api")

WARM_MESSAGES = [{"role": "user", "content": "Say hello."}]
WARM_QUESTION_WORDS = 12  # of the default collection's first chunk
WARM_ANSWER_TOKENS = 8  # enough for a sentence for the support check to read


class Warmup:
    """Loads the service's models and indexes in a background thread and says what is left."""

    def __init__(self, answerer: Answerer):
        self.answerer = answerer
        self.settings = answerer.settings
        self.kb = answerer.kb
        self.generators = answerer.generators
        self._loading: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Plan the steps (which collections exist now) and run them in a background thread."""
        steps = self._steps()
        with self._lock:
            self._loading = [name for name, _ in steps]
        self._thread = threading.Thread(
            target=self._run, args=(steps,), name="kb-warm", daemon=True
        )
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Whether nothing is left to load (true at once when no warm-up was started)."""
        with self._lock:
            return not self._loading

    def loading(self) -> list[str]:
        """The steps not finished yet, in the order they run."""
        with self._lock:
            return list(self._loading)

    def stop(self, timeout: float) -> None:
        """Skip the steps not started and wait up to `timeout` s for the one running."""
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            log.info("waiting for the warm-up step in progress to finish before shutting down")
            self._thread.join(timeout)

    def _steps(self) -> list[tuple[str, Callable[[], object]]]:
        steps: list[tuple[str, Callable[[], object]]] = [
            (f"embedder {self.settings.embedder}", lambda: self.kb.embedder)
        ]
        for name in self.kb.collection_names():
            steps.append((f"collection {name}", lambda name=name: self.kb.warm(name)))
        default = self.settings.default_generator
        spec = next((s for s in self.generators.specs() if s.name == default), None)
        if spec is not None and spec.backend == "local":  # a remote one would cost a request
            steps.append((f"generator {default}", lambda: self._generate(default)))
        return steps

    def _generate(self, name: str) -> None:
        generator = self.generators.get(name)
        generator.load()
        generator.generate(WARM_MESSAGES, max_new_tokens=1, temperature=0.0)
        collection = self.settings.default_collection
        if not self.kb.has_collection(collection):
            return
        first = next(self.kb.collection(collection).iter_chunks(batch=1), None)
        if first is not None:
            question = " ".join(first.text.split()[:WARM_QUESTION_WORDS])
            self.answerer.answer(
                question, mode="rag", collection=collection, max_new_tokens=WARM_ANSWER_TOKENS
            )

    def _run(self, steps: list[tuple[str, Callable[[], object]]]) -> None:
        for name, step in steps:
            if self._stopping.is_set():
                break
            try:
                step()
            except Exception:  # warming is an optimisation; the first request reports real errors
                log.warning("warm-up of %s failed; it loads on first use", name, exc_info=True)
            with self._lock:
                self._loading.remove(name)
