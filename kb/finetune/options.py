"""The options of each fine-tuning command, declared once: name, type, bounds, default, help.

`kb finetune validate|prepare|run|embeddings`, their HTTP bodies and the library all build from
these pydantic specs: the HTTP request models extend them with the endpoint's own fields, the
CLI generates its flags from their fields (`kb.cli.specs`), and `build` turns a pydantic
validation error into the `InvalidInput` every edge reports. A field's `description` is its help
text on both edges; its bounds show as OpenAPI's minimum/maximum and in the CLI help.

Two markers in a field's `Annotated` metadata tell the edges what the type cannot: `ServerPath`
(the HTTP edge resolves it inside KB_INGEST_ROOTS) and `Escapes` (the CLI turns `\\n` into a
newline); `Short` gives a CLI flag a short form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kb.errors import InvalidInput
from kb.finetune.mail import DEFAULT_KEPT_HEADERS, QUOTED

MAX_NEIGHBOURS = 32  # labelled neighbours per prompt
MAX_DISTRACTORS = 16  # retrieved passages per RAFT prompt besides the oracle
RAFT_OPTIONS = ("distractors", "no_oracle_share", "exclude_sources")
_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ServerPath:
    """A file or folder on the machine that runs kb: over HTTP, inside KB_INGEST_ROOTS."""


@dataclass(frozen=True)
class Escapes:
    """Text a shell cannot type inline: the CLI reads `\\n` and `\\t` as newline and tab."""


@dataclass(frozen=True)
class Short:
    """A CLI flag's short form, e.g. `-c`."""

    flag: str


class Spec(BaseModel):
    """A command's options; a misspelt or unknown option is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


S = TypeVar("S", bound=Spec)


def build(spec: type[S], values: Mapping[str, Any], name: Callable[[str], str] = str) -> S:
    """`spec` from `values`, or InvalidInput naming each bad option (`name`: how the edge
    spells a field, e.g. as a `--flag`), its bound and the value given."""
    try:
        return spec.model_validate(dict(values))
    except ValidationError as exc:
        raise InvalidInput(describe(exc, name)) from None


def describe(exc: ValidationError, name: Callable[[str], str] = str) -> str:
    """One sentence per problem, as the HTTP edge words them: `neighbours: Input should be
    less than or equal to 32 (got 40)`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        got = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        head = f"{name(where)}: " if where else ""
        parts.append(f"{head}{error['msg']}{shown}")
    return "; ".join(parts)


def server_paths(spec: type[BaseModel]) -> list[str]:
    """The fields of `spec` that name a file or folder on the server."""
    return [
        name
        for name, field in spec.model_fields.items()
        if any(isinstance(m, ServerPath) for m in field.metadata)
    ]


def _invalid(message: str) -> PydanticCustomError:
    # a custom error keeps the message as written (no "Value error, " prefix) on every edge
    return PydanticCustomError("invalid_options", message)


def _header_names(names: tuple[str, ...], option: str, example: str) -> tuple[str, ...]:
    bad = [h for h in names if not _HEADER_NAME.fullmatch(h)]
    if bad:
        raise _invalid(f"{option} {bad} are not header names: name headers like {example}")
    return tuple(h.lower() for h in names)


Fraction = Annotated[float, Field(ge=0, lt=1)]
Dtype = Literal["float32", "bfloat16"]


# -- validate and prepare ------------------------------------------------------------------


class ValidateOptions(Spec):
    """How a training file or table is read and checked (`kb finetune validate`)."""

    prompt_column: str | None = Field(
        None,
        description="A table's column with the prompt (default: prompt, question, input, text "
        "or query, or instruction with input).",
    )
    completion_column: str | None = Field(
        None,
        description="A table's column with the completion (default: completion, response, "
        "answer, output or label).",
    )
    max_tokens: int = Field(
        2048, ge=1, description="Token limit per example, counted with the model's tokenizer."
    )
    tokenizer: Annotated[str | None, ServerPath()] = Field(
        None, description="Tokenizer folder or .gguf file (default: the bundled SmolLM2)."
    )


class PrepareOptions(ValidateOptions):
    """How to turn a source into training data (`kb finetune prepare`); the defaults suit a
    first run."""

    format: Literal["chat", "completion"] = Field(
        "chat", description="'chat' (messages) or 'completion' (legacy prompt/completion)."
    )
    system: str | None = Field(None, description="System message added to every example.")
    template: str | None = Field(
        None,
        description="Prompt template filled from each row, e.g. 'Describe {name}, mention "
        "{type}'; for a labelled folder it may use {labels} (and {neighbours} with neighbours) "
        "and must use {text}.",
    )
    generate_with: str | None = Field(
        None, description="Configured generator that writes the completions."
    )
    from_collection: str | None = Field(
        None,
        description="Make question/answer pairs from this collection's chunks (the qa recipe "
        "needs generate_with).",
    )
    recipe: Literal["qa", "raft"] = Field(
        "qa",
        description="How from_collection makes examples: 'qa' (the generator writes a question "
        "and answer per chunk) or 'raft' (a question about a chunk shown in the rag prompt among "
        "retrieved distractors, answered by quoting and citing it; questions from generate_with "
        "or, without one, from the documents' headings, definitions and signatures).",
    )
    distractors: int = Field(
        4,
        ge=0,
        le=MAX_DISTRACTORS,
        description="raft: retrieved passages shown besides the question's own (its oracle).",
    )
    no_oracle_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="raft: share of the examples that show distractors only; their answer is "
        "the not-covered sentence.",
    )
    exclude_sources: tuple[str, ...] = Field(
        (),
        max_length=1000,
        description="raft: documents (globs on the shown source, e.g. limits.html) kept out of "
        "every prompt, as oracle or distractor: an evaluation set's pages.",
    )
    max_examples: int | None = Field(
        None, ge=1, description="Use at most this many rows, files or generated pairs."
    )
    val_fraction: Fraction = Field(
        0.1,
        description="Share of examples held out for validation (raft: of the documents asked "
        "about, so that no validation document appears in a training prompt).",
    )
    seed: int = Field(0, description="Random seed of sampling and the split.")
    text_budget: int = Field(
        512, ge=1, description="Tokens of a folder example's text kept in its prompt."
    )
    keep_headers: tuple[str, ...] = Field(
        DEFAULT_KEPT_HEADERS,
        max_length=32,
        description="Headers a mail or news example keeps, in this order, e.g. subject, from, "
        "organization.",
    )
    separator: Annotated[str, Escapes()] = Field(
        "\n\n###\n\n", description="Completion format: the separator ending every prompt."
    )
    stop: Annotated[str, Escapes()] = Field(
        " END", description="Completion format: the stop sequence ending every completion."
    )
    max_new_tokens: int = Field(256, ge=1, description="Token limit of each generated completion.")
    neighbours: int = Field(
        0,
        ge=0,
        le=MAX_NEIGHBOURS,
        description="Labelled folder: show the K labelled examples most like each text in its "
        "prompt (BM25 and dense retrieval fused, searching with the whole text); 0: none.",
    )
    neighbours_from: Annotated[str | None, ServerPath()] = Field(
        None,
        description="Labelled folder the neighbours come from (default: the source itself, each "
        "example leaving itself out); for an evaluation split, the training folder.",
    )
    neighbour_tokens: int = Field(16, ge=1, description="Opening tokens shown of each neighbour.")
    neighbour_dropout: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the prompts shown no neighbours, so that a model trained on them "
        "also learns to read the text alone; 1 hides them from every prompt (an evaluation "
        "split of the model's own reading).",
    )
    header_labels: tuple[str, ...] = Field(
        (),
        max_length=8,
        description="Message headers, e.g. from, subject: the neighbours end with a line per "
        "header counting the labels of the pool's messages with the same value (the sender's "
        "other messages; the rest of the thread, reply prefixes dropped); "
        f"'{QUOTED}' counts the labels of the messages sent by the authors the text quotes (its "
        "'a@b.c writes:' lines).",
    )

    @field_validator("keep_headers")
    @classmethod
    def _kept(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _header_names(names, "keep_headers", "subject, from, organization")

    @field_validator("header_labels")
    @classmethod
    def _labelled(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _header_names(names, "header_labels", "from, subject")

    @model_validator(mode="after")
    def _raft_options_need_raft(self) -> Self:
        # compared with the defaults, since the CLI passes every flag whether typed or not
        fields = type(self).model_fields
        given = [name for name in RAFT_OPTIONS if getattr(self, name) != fields[name].default]
        if given and self.recipe != "raft":
            raise _invalid(
                f"{', '.join(given)} shape RAFT examples but recipe is {self.recipe!r}: pass "
                "--recipe raft with --from-collection, or drop them"
            )
        if self.recipe == "raft" and not self.from_collection:
            raise _invalid(
                "recipe 'raft' makes examples from a collection: pass --from-collection NAME"
            )
        return self

    @model_validator(mode="after")
    def _needs_neighbours(self) -> Self:
        if self.neighbours:
            return self
        if self.neighbour_dropout:
            raise _invalid(
                f"neighbour_dropout {self.neighbour_dropout} hides neighbours but neighbours is "
                "0: pass --neighbours K as well"
            )
        if self.neighbours_from:
            raise _invalid(
                "neighbours_from names a pool but neighbours is 0: pass --neighbours K as well"
            )
        if self.header_labels:
            raise _invalid(
                f"header_labels {list(self.header_labels)} add lines to the neighbours but "
                "neighbours is 0: pass --neighbours K as well"
            )
        return self


# -- run -----------------------------------------------------------------------------------


class FineTuneOptions(Spec):
    """How to train a model on prepared data (`kb finetune run`)."""

    backend: Literal["local", "openai"] = Field(
        "local",
        description="'local' (LoRA on this machine) or 'openai' (an endpoint with OpenAI's "
        "fine-tuning API).",
    )
    name: str | None = Field(
        None, description="Name of the registered model (default: derived from the base model)."
    )
    base_model: str = Field(
        "smollm2", description="local: 'smollm2' or a model folder; openai: the remote model id."
    )
    epochs: int = Field(1, ge=1, le=100, description="Passes over the training data.")
    lr: float | None = Field(
        None, gt=0, lt=1, description="Learning rate (local: 2e-4; openai: the LR multiplier)."
    )
    batch_size: int = Field(4, ge=1, le=512, description="Examples per forward pass (local).")
    grad_accumulation: int = Field(
        1, ge=1, le=1024, description="Batches per optimizer step (local)."
    )
    max_seq_len: int = Field(
        512, ge=16, le=32768, description="Tokens per example; longer ones are cut (local)."
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="Train on a seeded sample of this many examples."
    )
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA alpha (scaling = alpha / r).")
    dropout: Fraction = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] | None = Field(
        None, description="Layer names to adapt, e.g. q_proj, v_proj (default: every linear one)."
    )
    lora_layers: int | None = Field(
        None, ge=1, description="Adapt only the last N decoder layers (faster)."
    )
    dtype: Dtype = Field(
        "float32", description="float32, or bfloat16 (autocast; faster on CPUs with bf16)."
    )
    seed: int = Field(0, description="Random seed (sampling, shuffling, initialisation).")
    generator: str | None = Field(
        None, description="openai: the configured generator whose base_url and api_key to use."
    )


# -- embeddings ----------------------------------------------------------------------------


class EmbeddingsOptions(Spec):
    """How to fine-tune a collection's embedding model (`kb finetune embeddings`)."""

    collection: Annotated[str, Short("-c")] = Field(
        description="Collection whose embedder is trained, then re-indexed with it."
    )
    beir: Annotated[str | None, ServerPath()] = Field(
        None, description="BEIR folder: queries.jsonl, corpus.jsonl, qrels/."
    )
    split: str = Field("train", description="BEIR qrels split to train on.")
    pairs: Annotated[str | None, ServerPath()] = Field(
        None,
        description="JSONL of {query, positive}, or prepare's question/answer data with chunk_ids.",
    )
    epochs: int = Field(1, ge=1, le=100, description="Passes over the pairs.")
    batch_size: int = Field(
        32, ge=2, le=4096, description="Pairs per batch (the others are in-batch negatives)."
    )
    lr: float = Field(3e-5, gt=0, lt=1, description="Learning rate.")
    hard_negatives: int = Field(
        1, ge=0, le=10, description="Hard negatives mined from the collection per pair."
    )
    mine_method: Literal["dense", "bm25", "hybrid"] = Field(
        "hybrid", description="Search that mines the hard negatives."
    )
    dtype: Dtype = Field(
        "bfloat16",
        description="bfloat16 (autocast; faster on CPUs with AVX512-BF16 or AMX) or float32.",
    )
    max_pairs: int | None = Field(None, ge=2, description="Train on a sample of this many pairs.")
    out: str | None = Field(
        None, description="Name of the saved model (default: <collection>-emb-<job id>)."
    )
    base: str | None = Field(
        None,
        description="Embedder to start from, e.g. minilm (default: the collection's own).",
    )
    reindex: bool = Field(True, description="Re-index the collection with the new model.")
    seed: int = Field(0, description="Random seed.")
