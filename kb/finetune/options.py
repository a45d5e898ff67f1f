"""Options for preparing fine-tuning data; the HTTP and CLI edges fill the same dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kb.errors import InvalidInput
from kb.finetune.examples import Format
from kb.finetune.sources import DEFAULT_KEPT_HEADERS

_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
MAX_NEIGHBOURS = 32  # labelled neighbours per prompt
NEIGHBOUR_SEARCHES = ("whole", "shown")


@dataclass
class PrepareOptions:
    """How to turn a source into training data; the defaults suit a first run."""

    format: Format = "chat"
    prompt_column: str | None = None
    completion_column: str | None = None
    system: str | None = None
    template: str | None = None  # e.g. "Describe {name}, mention {type}"; folder: {labels}, {text}
    generate_with: str | None = None  # a configured generator writes the completions
    from_collection: str | None = None  # synthetic Q/A pairs from this collection's chunks
    max_examples: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    text_budget: int = 512  # tokens of a folder example's text kept in its prompt
    keep_headers: tuple[str, ...] = DEFAULT_KEPT_HEADERS  # a mail/news example's, in this order
    separator: str = "\n\n###\n\n"  # completion format: ends every prompt
    stop: str = " END"  # completion format: ends every completion
    max_new_tokens: int = 256
    max_tokens: int = 2048  # validation's per-example token limit
    tokenizer: str | None = None  # tokenizer folder or .gguf; default: bundled SmolLM2
    neighbours: int = 0  # labelled folder: show the K most similar labelled examples per prompt
    neighbours_from: str | None = None  # their pool: this labelled folder (default: the source)
    neighbour_tokens: int = 16  # opening tokens of each neighbour shown
    neighbour_dropout: float = 0.0  # share of prompts shown no neighbours (1: all of them)
    # what finds the neighbours: the whole text, or only the part its prompt shows (text_budget)
    neighbour_search: str = "whole"
    # message headers (e.g. from, subject) by whose values the pool's labelled messages are
    # counted: the neighbours end with how the pool's messages sharing each value are labelled
    header_labels: tuple[str, ...] = ()

    def check(self) -> None:
        if self.format not in ("chat", "completion"):
            raise InvalidInput(f"format {self.format!r} is unknown: use chat or completion")
        if not 0 <= self.val_fraction < 1:
            raise InvalidInput(
                f"val_fraction {self.val_fraction} is out of range: use a fraction in [0, 1), "
                "e.g. 0.1"
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise InvalidInput(f"max_examples {self.max_examples} must be at least 1")
        if self.text_budget < 1:
            raise InvalidInput(f"text_budget {self.text_budget} must be at least 1 token")
        if not 0 <= self.neighbours <= MAX_NEIGHBOURS:
            raise InvalidInput(
                f"neighbours {self.neighbours} is out of range: use 0 (none) to {MAX_NEIGHBOURS}, "
                "e.g. 8"
            )
        if self.neighbour_tokens < 1:
            raise InvalidInput(
                f"neighbour_tokens {self.neighbour_tokens} must be at least 1 token, e.g. 16"
            )
        if not 0 <= self.neighbour_dropout <= 1:
            raise InvalidInput(
                f"neighbour_dropout {self.neighbour_dropout} is out of range: use a share in "
                "[0, 1], e.g. 0.3 (1 hides them from every prompt)"
            )
        if self.neighbour_search not in NEIGHBOUR_SEARCHES:
            raise InvalidInput(
                f"neighbour_search {self.neighbour_search!r} is unknown: use whole (search with "
                "the whole text) or shown (only the part the prompt shows)"
            )
        if self.neighbour_dropout and not self.neighbours:
            raise InvalidInput(
                f"neighbour_dropout {self.neighbour_dropout} hides neighbours but neighbours is 0: "
                "pass --neighbours K as well"
            )
        if self.neighbours_from and not self.neighbours:
            raise InvalidInput(
                "neighbours_from names a pool but neighbours is 0: pass --neighbours K as well"
            )
        if self.header_labels:
            bad = [h for h in self.header_labels if not _HEADER_NAME.fullmatch(h)]
            if bad:
                raise InvalidInput(
                    f"header_labels {bad} are not header names: name headers like from, subject"
                )
            if not self.neighbours:
                raise InvalidInput(
                    f"header_labels {list(self.header_labels)} add lines to the neighbours but "
                    "neighbours is 0: pass --neighbours K as well"
                )
            self.header_labels = tuple(h.lower() for h in self.header_labels)
        bad = [h for h in self.keep_headers if not _HEADER_NAME.fullmatch(h)]
        if bad:
            raise InvalidInput(
                f"keep_headers {bad} are not header names: name headers like subject, from, "
                "organization"
            )
        self.keep_headers = tuple(h.lower() for h in self.keep_headers)
