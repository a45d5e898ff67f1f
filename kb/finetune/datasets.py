"""Turn tables, labelled folders and collections into train/validation JSONL files + a manifest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput
from kb.finetune.builders import (
    examples_from_collection,
    examples_from_folder,
    examples_from_table,
)
from kb.finetune.examples import Example
from kb.finetune.options import PrepareOptions
from kb.finetune.sources import Skipped
from kb.finetune.tokens import TokenCounter, load_tokenizer
from kb.finetune.validate import ValidationReport, infer_task_type, validate_file
from kb.settings import Settings

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
MANIFEST_FILE = "manifest.json"
KEPT_SKIPPED = 100
NEIGHBOUR_SEARCH = "whole"  # what finds a labelled example's neighbours: its whole text

Progress = Callable[[int, int], None]


@dataclass
class PrepareResult:
    out_dir: Path
    train_path: Path
    validation_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    report: ValidationReport  # the training file, checked for leakage into the validation file
    validation_report: ValidationReport
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and self.validation_report.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "out_dir": str(self.out_dir),
            "files": {
                "train": str(self.train_path),
                "validation": str(self.validation_path),
                "manifest": str(self.manifest_path),
            },
            "counts": self.manifest["counts"],
            "label_counts": self.manifest.get("label_counts", {}),
            "skipped": [s.to_dict() for s in self.skipped[:KEPT_SKIPPED]],
            "report": self.report.to_dict(),
            "validation_report": self.validation_report.to_dict(),
        }


def prepare_dataset(
    source: str | Path | None,
    out_dir: str | Path,
    *,
    options: PrepareOptions | None = None,
    settings: Settings | None = None,
    kb: Any = None,
    generators: Any = None,
    tokenizer: Any = None,
    progress: Progress | None = None,
) -> PrepareResult:
    """Build `train.jsonl`, `validation.jsonl` and `manifest.json` in `out_dir`, then validate.

    `source` is a table file, a labelled folder, or None with `options.from_collection`;
    `kb` (a KnowledgeBase), `generators` (a GeneratorRegistry) and `tokenizer` (a loaded
    tokenizer) are built from `settings` when not given.
    """
    options = options or PrepareOptions()
    settings = settings or Settings()
    counter: TokenCounter | None = None  # loaded only once the source has been read
    source_path = Path(source) if source is not None else None
    if options.from_collection:
        if source_path is not None:
            raise InvalidInput(
                f"got both a source {str(source_path)!r} and --from-collection "
                f"{options.from_collection!r}: pass one of them"
            )
        if options.recipe == "raft":  # its prompts are fitted to the model's context
            counter = _token_counter(tokenizer or options.tokenizer, settings)
        examples, skipped, origin = examples_from_collection(
            options, settings, kb, generators, progress, counter
        )
    elif source_path is None:
        raise InvalidInput("nothing to prepare: pass a SOURCE file or folder, or --from-collection")
    elif source_path.is_dir():
        counter = _token_counter(tokenizer or options.tokenizer, settings)
        examples, skipped, origin = examples_from_folder(source_path, options, counter, settings)
    else:
        examples, skipped, origin = examples_from_table(
            source_path, options, settings, generators, progress
        )
    if not examples:
        reasons = "; ".join(f"{s.item}: {s.reason}" for s in skipped[:3]) or "the source is empty"
        raise InvalidInput(f"no training examples could be made ({reasons}): fix the source")

    if any(e.split is not None for e in examples):
        train, validation = _recipe_split(examples, options.seed)
    else:
        train, validation = split_examples(examples, options.val_fraction, options.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path, validation_path = out / TRAIN_FILE, out / VALIDATION_FILE
    files = {
        TRAIN_FILE: _write_jsonl(train_path, train, options),
        VALIDATION_FILE: _write_jsonl(validation_path, validation, options),
    }
    counter = counter or _token_counter(tokenizer or options.tokenizer, settings)
    check = {"max_tokens": options.max_tokens, "tokenizer": counter, "settings": settings}
    report = validate_file(train_path, eval_file=validation_path if validation else None, **check)
    validation_report = validate_file(validation_path, check_size=False, **check)

    manifest = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": origin,
        "format": options.format,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "options": {
            k: v
            for k, v in options.model_dump().items()
            if v is not None and (options.format == "completion" or k not in ("separator", "stop"))
        },
        "counts": {
            "examples": len(examples),
            "train": len(train),
            "validation": len(validation),
            "skipped": len(skipped),
        },
        "files": files,
        "valid": report.ok and validation_report.ok,
        "task_type": report.task_type,
        "skipped": [s.to_dict() for s in skipped[:KEPT_SKIPPED]],
    }
    if options.neighbours:
        # data prepared before the whole text was the only key searched by the part shown, and
        # recorded no key: the classifier refuses to replay it (`classify.recipe`)
        manifest["neighbour_search"] = NEIGHBOUR_SEARCH
    if _is_classification(examples):
        manifest["label_counts"] = {
            "all": _label_counts(examples),
            "train": _label_counts(train),
            "validation": _label_counts(validation),
        }
    manifest_path = out / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return PrepareResult(
        out,
        train_path,
        validation_path,
        manifest_path,
        manifest,
        report,
        validation_report,
        skipped,
    )


def _token_counter(tokenizer: Any, settings: Settings) -> TokenCounter:
    if isinstance(tokenizer, TokenCounter):
        return tokenizer
    if tokenizer is None or isinstance(tokenizer, str | Path):
        return TokenCounter(load_tokenizer(tokenizer, cache_dir=settings.cache_dir))
    return TokenCounter(tokenizer)


def _write_jsonl(path: Path, examples: list[Example], options: PrepareOptions) -> dict[str, Any]:
    lines = [
        json.dumps(
            e.to_record(options.format, separator=options.separator, stop=options.stop),
            ensure_ascii=False,
        )
        for e in examples
    ]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "examples": len(lines), "bytes": len(data)}


# --- splitting ---------------------------------------------------------------------------------


def _is_classification(examples: list[Example]) -> bool:
    if any(e.label is not None for e in examples):
        return True
    completions = [e.completion for e in examples if e.messages is None]
    prompts = [e.prompt for e in examples if e.messages is None]
    return bool(completions) and infer_task_type(prompts, completions) == "classification"


def _stratum(example: Example, classification: bool) -> str | None:
    if example.label is not None:
        return example.label
    return example.completion.strip() if classification and example.messages is None else None


def _label_counts(examples: list[Example]) -> dict[str, int]:
    counts = Counter(_stratum(e, True) for e in examples)
    return {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def _recipe_split(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """The split a recipe chose (RAFT: by document), each side shuffled."""
    rng = random.Random(seed)
    train = [e for e in examples if e.split != "validation"]
    validation = [e for e in examples if e.split == "validation"]
    rng.shuffle(train)
    rng.shuffle(validation)
    return train, validation


def split_examples(
    examples: list[Example], val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Seeded train/validation split: stratified by label for classification, and examples with
    the same prompt kept on one side so validation never repeats a training prompt."""
    rng = random.Random(seed)
    classification = _is_classification(examples)
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.split_key(), []).append(i)
    strata: dict[str, list[str]] = {}
    for key, members in groups.items():
        strata.setdefault(str(_stratum(examples[members[0]], classification)), []).append(key)

    held_out: set[str] = set()
    for stratum in sorted(strata):
        keys = strata[stratum]
        rng.shuffle(keys)
        want = int(sum(len(groups[k]) for k in keys) * val_fraction + 0.5)
        taken = 0
        for key in keys:
            if taken >= want:
                break
            if taken and taken + len(groups[key]) > want:
                continue  # a large group would overshoot; a smaller one may fit
            held_out.add(key)
            taken += len(groups[key])
    if val_fraction > 0 and not held_out and len(groups) > 1:
        held_out.add(rng.choice(sorted(groups)))

    train = [examples[i] for k, m in groups.items() if k not in held_out for i in m]
    validation = [examples[i] for k, m in groups.items() if k in held_out for i in m]
    rng.shuffle(train)
    rng.shuffle(validation)
    return train, validation
