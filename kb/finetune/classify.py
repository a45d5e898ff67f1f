"""Classify new texts with a model fine-tuned on a labelled folder.

Each text's prompt is built the way the model's training prompts were (the recipe is in the
training data's `manifest.json`: template, labels, headers kept, token budget, and with
`--neighbours` the labelled examples most like the text, drawn from the same pool), and the
label is read by constrained scoring: the log-likelihood of each label as the whole answer,
turned into probabilities over the labels.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kb.errors import Conflict, InvalidInput
from kb.finetune.builders import folder_template, neighbour_pool
from kb.finetune.datasets import NEIGHBOUR_SEARCH
from kb.finetune.mail import clean_message, message_headers
from kb.finetune.options import PrepareOptions
from kb.finetune.templates import fill_template
from kb.finetune.tokens import TokenCounter
from kb.models import ModelRecord
from kb.settings import Settings

MAX_TEXTS = 256  # texts in one request


class NotAClassifier(Conflict):
    """The model was not trained as a classifier on a labelled folder (HTTP 409)."""


@dataclass
class Classification:
    label: str
    probabilities: dict[str, float]
    neighbours: list[dict[str, str]]  # the labelled examples shown in the prompt
    # with header_labels: per header, the labels of the pool's messages with the text's value
    header_labels: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe(record: ModelRecord) -> tuple[list[str], PrepareOptions, Path]:
    """(labels, prepare options, training folder) of a model trained on a labelled folder."""
    train = (record.dataset or {}).get("path")
    manifest_path = Path(train).parent / "manifest.json" if train else None
    if manifest_path is None or not manifest_path.is_file():
        raise NotAClassifier(
            f"model {record.name!r} has no record of how its training data was prepared (no "
            "manifest.json beside its training file): classification needs a model trained on "
            "data from `kb finetune prepare FOLDER`, where sub-folder names are labels"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise NotAClassifier(
            f"{str(manifest_path)!r} of model {record.name!r} is not valid JSON ({exc}): prepare "
            "the training data again with `kb finetune prepare`"
        ) from exc
    source = manifest.get("source") or {}
    if source.get("kind") != "folder" or len(source.get("labels") or []) < 2:
        raise NotAClassifier(
            f"model {record.name!r} was trained on {source.get('kind', 'unknown')} data, not a "
            "labelled folder: classify with a model trained on `kb finetune prepare FOLDER`, "
            "or ask it through /query"
        )
    recorded = manifest.get("options") or {}
    search = manifest.get("neighbour_search") or recorded.get("neighbour_search", "shown")
    if recorded.get("neighbours") and search != NEIGHBOUR_SEARCH:
        raise NotAClassifier(
            f"model {record.name!r} was trained on data whose neighbours were found by the part "
            "of each text its prompt shows (--neighbour-search shown), which kb no longer "
            f"builds: prepare the data again with `kb finetune prepare` (as {str(manifest_path)!r} "
            "records) and train the model again"
        )
    stored = {k: v for k, v in recorded.items() if k in PrepareOptions.model_fields}
    options = PrepareOptions(**stored)
    return list(source["labels"]), options, Path(source["path"])


class Classifier:
    """One model's classification recipe, its neighbour pool (built once) and its weights."""

    def __init__(self, record: ModelRecord, generator: Any, settings: Settings):
        local = getattr(generator, "local_model", None)
        if local is None:
            raise NotAClassifier(
                f"model {record.name!r} runs on a remote endpoint, which does not return label "
                "scores: classification runs local models (backend 'local')"
            )
        self.name = record.name
        self.labels, self.options, folder = recipe(record)
        self.template = folder_template(self.options)
        self._local = local
        self._counter = TokenCounter(local.tokenizer)
        self._pool = None
        if self.options.neighbours:
            pool_folder = Path(self.options.neighbours_from or folder)
            if not pool_folder.is_dir():
                raise InvalidInput(
                    f"the neighbour pool {str(pool_folder)!r} of model {record.name!r} is gone: "
                    "restore the training folder, or train the model again"
                )
            self._pool = neighbour_pool(
                pool_folder, self.labels, self.options, self._counter, settings
            )

    def clean(self, text: str) -> str:
        """The text as the prompt shows it: mail headers other than the kept ones dropped."""
        return clean_message(text, self.options.keep_headers)

    def prompts(self, texts: list[str]) -> tuple[list[str], list[list[int]]]:
        """Each text's prompt as in training, and the pool rows of the neighbours it shows."""
        prompts, rows, _ = self._prompts(texts)
        return prompts, rows

    def _prompts(
        self, texts: list[str]
    ) -> tuple[list[str], list[list[int]], dict[str, list[Counter]]]:
        """The prompts, the pool rows each shows, and per `header_labels` name each text's
        label counts (empty without neighbours)."""
        cleaned = [self.clean(t) for t in texts]
        empty = [i for i, t in enumerate(cleaned) if not t]
        if empty:
            raise InvalidInput(
                f"texts {empty[:10]} are empty once mail headers are dropped: send only texts "
                "with something to classify"
            )
        cut = self._counter.truncate(cleaned, self.options.text_budget)
        rows: list[list[int]] = [[] for _ in cut]
        blocks = [""] * len(cut)
        counts: dict[str, list[Counter]] = {}
        if self._pool is not None:
            rows = self._pool.nearest(cleaned, [None] * len(cut), self.options.neighbours)
            named = self.options.header_labels
            headers = [message_headers(t) for t in texts] if named else []
            counts = self._pool.label_counts(named, headers, texts, [None] * len(texts))
            blocks = self._pool.blocks(rows, counts)
        labels = ", ".join(self.labels)
        prompts = [
            fill_template(self.template, {"labels": labels, "text": t, "neighbours": b})
            for t, b in zip(cut, blocks, strict=True)
        ]
        return prompts, rows, counts

    def _scores(self, prompt: str) -> list[float]:
        from kb.finetune.scoring import label_logprobs

        messages = [{"role": "user", "content": prompt}]
        if self.options.system:
            messages.insert(0, {"role": "system", "content": self.options.system})
        with self._local.lock:
            return label_logprobs(self._local.weights, self._local.tokenizer, messages, self.labels)

    def _probabilities(self, scores: list[float]) -> dict[str, float]:
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        return {label: round(w / total, 6) for label, w in zip(self.labels, weights, strict=True)}

    def classify(
        self, texts: list[str], progress: Callable[[int, int], None] | None = None
    ) -> list[Classification]:
        """Label each text; `progress(done, total)` is called after each one."""
        if not texts:
            raise InvalidInput("no texts to classify: send at least one")
        if len(texts) > MAX_TEXTS:
            raise InvalidInput(f"{len(texts)} texts in one request: send at most {MAX_TEXTS}")
        prompts, rows, counts = self._prompts(texts)
        out = []
        for n, (prompt, shown) in enumerate(zip(prompts, rows, strict=True)):
            scores = self._scores(prompt)
            out.append(
                Classification(
                    label=self.labels[scores.index(max(scores))],
                    probabilities=self._probabilities(scores),
                    header_labels={h: dict(c[n]) for h, c in counts.items()} if counts else None,
                    neighbours=[  # `shown` is empty without a pool
                        {
                            "label": self._pool.items[i].label,
                            "source": str(self._pool.items[i].path),
                        }
                        for i in shown
                    ],
                )
            )
            if progress:
                progress(len(out), len(texts))
        return out


class ClassifierCache:
    """Built classifiers by model name, rebuilt when the model is registered again."""

    def __init__(self):
        self._lock = threading.Lock()
        self._built: dict[str, tuple[float, Classifier]] = {}

    def get(self, record: ModelRecord, generators: Any, settings: Settings) -> Classifier:
        if record.kind != "finetuned":
            raise NotAClassifier(
                f"model {record.name!r} is an embedding model: classify with a fine-tuned "
                "generation model (`kb models list`)"
            )
        with self._lock:
            entry = self._built.get(record.name)
            if entry is not None and entry[0] == record.created_at:
                return entry[1]
        classifier = Classifier(record, generators.get(record.name), settings)
        with self._lock:
            self._built[record.name] = (record.created_at, classifier)
        return classifier
