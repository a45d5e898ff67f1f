"""Examples from each kind of source: labelled folders, tables, and a collection's chunks."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput, Unavailable
from kb.finetune.examples import Example
from kb.finetune.options import PrepareOptions
from kb.finetune.sources import LabelledText, Skipped, Table, read_labelled_folder, read_table
from kb.finetune.synthetic import generate_completions, qa_examples_from_chunks
from kb.finetune.templates import fill_template, match_columns, package_prompt, template_fields
from kb.finetune.tokens import TokenCounter
from kb.settings import Settings

CLASSIFY_PROMPT_FILE = "finetune_classify.txt"
NEIGHBOURS_PROMPT_FILE = "finetune_classify_neighbours.txt"
NO_NEIGHBOURS = "(none shown)"  # the `{neighbours}` text of a prompt whose neighbours are hidden
DEFAULT_COLLECTION_EXAMPLES = 50
PROMPT_ALIASES = ("prompt", "question", "input", "text", "query")
COMPLETION_ALIASES = ("completion", "response", "answer", "output", "label")

Progress = Callable[[int, int], None]
Built = tuple[list[Example], list[Skipped], dict[str, Any]]


def examples_from_folder(
    folder: Path, options: PrepareOptions, counter: TokenCounter, settings: Settings
) -> Built:
    if options.generate_with:
        raise InvalidInput(
            f"--generate-with does not apply to the labelled folder {str(folder)!r}: its labels "
            "are the completions; drop --generate-with"
        )
    labels, items, skipped = read_labelled_folder(folder, options.keep_headers)
    if options.max_examples and len(items) > options.max_examples:
        keep = sorted(random.Random(options.seed).sample(range(len(items)), options.max_examples))
        items = [items[i] for i in keep]
    template = folder_template(options)
    texts = counter.truncate([item.text for item in items], options.text_budget)
    blocks = _neighbour_blocks(items, labels, options, counter, settings)
    label_list = ", ".join(labels)
    examples = [
        Example(
            prompt=fill_template(
                template, {"labels": label_list, "text": text, "neighbours": block}
            ),
            completion=item.label,
            system=options.system,
            metadata={"source": str(item.path), "label": item.label},
            label=item.label,
        )
        for item, text, block in zip(items, texts, blocks, strict=True)
    ]
    origin = {"kind": "folder", "path": str(folder), "labels": labels}
    return examples, skipped, origin


def folder_template(options: PrepareOptions) -> str:
    """The prompt template of a labelled folder's examples, checked against the options."""
    default = NEIGHBOURS_PROMPT_FILE if options.neighbours else CLASSIFY_PROMPT_FILE
    template = options.template or package_prompt(default)
    fields = template_fields(template)
    allowed = ("text", "labels", "neighbours") if options.neighbours else ("text", "labels")
    unknown = [f for f in fields if f not in allowed]
    if "text" not in fields or unknown:
        raise InvalidInput(
            f"template {template!r} for a labelled folder must use {{text}} and may use "
            f"{', '.join('{' + f + '}' for f in allowed[1:])}; it uses {fields}: rewrite "
            "--template"
        )
    if options.neighbours and "neighbours" not in fields:
        raise InvalidInput(
            f"template {template!r} has no {{neighbours}} field for the --neighbours "
            f"{options.neighbours} labelled examples: add {{neighbours}} or drop --neighbours"
        )
    return template


def _neighbour_blocks(
    items: list[LabelledText],
    labels: list[str],
    options: PrepareOptions,
    counter: TokenCounter,
    settings: Settings,
) -> list[str]:
    """Each example's `{neighbours}` text: its nearest labelled examples, found by its whole
    text (none: empty). The whole text is the better key: on the Newsgroups test split the 8
    neighbours' majority label is right on 768 of 794 messages searched whole against 761
    searched by the first 256 tokens a prompt shows (`benchmarks/newsgroups_neighbours.py`).

    With `header_labels` each block ends with a line per header: the labels of the pool's
    messages sharing the example's value of it (for `quoted`, sent by the authors it quotes).
    With `neighbour_dropout` a seeded share of the examples shows none, so a model trained on
    them must also learn to read the text alone rather than copy its neighbours' labels; at 1
    every example shows none (an evaluation split of the model's own reading).
    """
    if not options.neighbours:
        return [""] * len(items)
    if options.neighbour_dropout >= 1:
        return [NO_NEIGHBOURS] * len(items)
    from kb.finetune.neighbours import NeighbourPool

    texts = [item.text for item in items]
    if options.neighbours_from:
        pool = neighbour_pool(Path(options.neighbours_from), labels, options, counter, settings)
    else:
        pool = NeighbourPool(items, texts, counter, options.neighbour_tokens, settings)
    paths = [item.path for item in items]
    found = pool.nearest(texts, paths, options.neighbours)
    counts = pool.label_counts(options.header_labels, [i.headers for i in items], texts, paths)
    blocks = pool.blocks(found, counts)
    hidden = random.Random(f"{options.seed}:neighbour-dropout").sample(
        range(len(blocks)), round(options.neighbour_dropout * len(blocks))
    )
    for i in hidden:
        blocks[i] = NO_NEIGHBOURS
    return blocks


def neighbour_pool(
    folder: Path,
    labels: list[str],
    options: PrepareOptions,
    counter: TokenCounter,
    settings: Settings,
):
    """A labelled folder read and indexed as a `NeighbourPool` for these options."""
    from kb.finetune.neighbours import NeighbourPool, check_pool_labels

    pool_labels, pool_items, _ = read_labelled_folder(folder, options.keep_headers)
    check_pool_labels(pool_labels, labels, str(folder))
    texts = [item.text for item in pool_items]
    return NeighbourPool(pool_items, texts, counter, options.neighbour_tokens, settings)


def _column(table: Table, wanted: str | None, aliases: tuple[str, ...], flag: str) -> str | None:
    by_folded = {c.strip().casefold(): c for c in table.columns}
    if wanted is not None:
        column = wanted if wanted in table.columns else by_folded.get(wanted.strip().casefold())
        if column is None:
            raise InvalidInput(
                f"column {wanted!r} is not in {table.path.name} (columns: "
                f"{', '.join(table.columns)}): pass an existing column to {flag}"
            )
        return column
    return next((by_folded[a] for a in aliases if a in by_folded), None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def examples_from_table(
    path: Path,
    options: PrepareOptions,
    settings: Settings,
    generators: Any,
    progress: Progress | None,
) -> Built:
    table = read_table(path)
    rows = table.rows[: options.max_examples] if options.max_examples else table.rows
    skipped = list(table.skipped)
    if options.generate_with and options.completion_column:
        raise InvalidInput(
            f"got both --completion-column {options.completion_column!r} and --generate-with "
            f"{options.generate_with!r}: completions come from one of them"
        )
    system_column = _column(table, None, ("system",), "--system")
    folded = {c.strip().casefold(): c for c in table.columns}
    chat_column = folded.get("messages")
    origin: dict[str, Any] = {"kind": "table", "path": str(path), "columns": table.columns}
    if table.sheet:
        origin["sheet"] = table.sheet

    if chat_column and not (options.template or options.prompt_column or options.generate_with):
        origin["kind"] = "chat"
        examples = []
        for row in rows:
            messages = row.values.get(chat_column)
            if isinstance(messages, str):
                try:
                    messages = json.loads(messages)
                except json.JSONDecodeError:
                    skipped.append(table.skip(row.number, "`messages` is not JSON"))
                    continue
            if not isinstance(messages, list) or not messages:
                skipped.append(table.skip(row.number, "`messages` is not a list"))
                continue
            extra = row.values.get("metadata")
            metadata = dict(extra) if isinstance(extra, dict) else {}
            metadata.update({"source": str(path), table.unit: row.number})
            examples.append(Example(messages=messages, system=options.system, metadata=metadata))
        return examples, skipped, origin

    if options.template:
        fields = template_fields(options.template)
        mapping = match_columns(fields, table.columns, table.path.name)
        for name, column in mapping.items():
            empty = [row.number for row in rows if _text(row.values.get(column, "")).strip() == ""]
            if empty:
                shown = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
                raise InvalidInput(
                    f"template field {{{name}}} (column {column!r}) is empty in {table.unit}"
                    f"{'s' if len(empty) > 1 else ''} {shown} of {path.name}: fill those cells "
                    "or remove the rows"
                )
        prompts = [
            fill_template(options.template, {f: _text(row.values[c]) for f, c in mapping.items()})
            for row in rows
        ]
        origin["template"] = options.template
    else:
        prompt_column = _column(table, options.prompt_column, PROMPT_ALIASES, "--prompt-column")
        instruction = folded.get("instruction") if options.prompt_column is None else None
        if instruction:
            inputs = folded.get("input")
            prompts = [
                "\n\n".join(
                    _text(row.values.get(c, "")).strip()
                    for c in (instruction, inputs)
                    if c and _text(row.values.get(c, "")).strip()
                )
                for row in rows
            ]
        elif prompt_column:
            prompts = [_text(row.values.get(prompt_column, "")) for row in rows]
        else:
            raise InvalidInput(
                f"{path.name} has no prompt column (columns: {', '.join(table.columns)}): name "
                f"one of {', '.join(PROMPT_ALIASES)} or instruction, or pass --prompt-column, "
                "or --template"
            )

    examples = []
    for row, prompt in zip(rows, prompts, strict=True):
        system = options.system or (
            _text(row.values.get(system_column, "")) if system_column else ""
        )
        examples.append(
            Example(
                prompt=prompt,
                system=system or None,
                metadata={"source": str(path), table.unit: row.number},
            )
        )
    if options.generate_with:
        generator = _generator(options.generate_with, settings, generators)
        examples, failed = generate_completions(
            examples,
            generator,
            model_name=options.generate_with,
            max_new_tokens=options.max_new_tokens,
            progress=progress,
        )
        origin["generated_by"] = options.generate_with
        return examples, skipped + failed, origin

    completion_column = _column(
        table, options.completion_column, COMPLETION_ALIASES, "--completion-column"
    )
    if completion_column is None:
        raise InvalidInput(
            f"{path.name} has no completion column (columns: {', '.join(table.columns)}): name one "
            f"of {', '.join(COMPLETION_ALIASES)}, or pass --completion-column COLUMN or "
            "--generate-with MODEL"
        )
    kept = []
    for row, example in zip(rows, examples, strict=True):
        example.completion = _text(row.values.get(completion_column, ""))
        if not example.prompt.strip() and not example.completion.strip():
            skipped.append(table.skip(row.number, "empty prompt and completion"))
            continue
        kept.append(example)
    return kept, skipped, origin


def _generator(name: str, settings: Settings, generators: Any) -> Any:
    if generators is None:
        try:
            from kb.generators import GeneratorRegistry
        except ImportError as exc:
            raise Unavailable(
                f"model generation is not available in this install ({exc}): prepare completions "
                "from a column with --completion-column instead"
            ) from exc
        generators = GeneratorRegistry(settings)
    return generators.get(name)


def examples_from_collection(
    options: PrepareOptions,
    settings: Settings,
    kb: Any,
    generators: Any,
    progress: Progress | None,
    counter: TokenCounter | None = None,
) -> Built:
    """Examples from a collection's chunks by `options.recipe`: generated question/answer
    pairs (qa), or RAFT examples in the rag prompt format (`kb.finetune.raft`), which need
    `counter` to fit their passages."""
    name = options.from_collection
    if options.recipe == "raft":
        return _raft_from_collection(options, settings, kb, generators, progress, counter)
    if not options.generate_with:
        raise InvalidInput(
            f"--from-collection {name!r} needs a model to write questions: add --generate-with "
            "MODEL (a configured generator name)"
        )
    if kb is None:
        from kb.service import KnowledgeBase

        kb = KnowledgeBase(settings)
    collection = kb.collection(name)
    origin = _collection_origin(name, collection)
    generator = _generator(options.generate_with, settings, generators)
    examples, skipped = qa_examples_from_chunks(
        collection.iter_chunks(),
        generator,
        model_name=options.generate_with,
        max_examples=options.max_examples or DEFAULT_COLLECTION_EXAMPLES,
        seed=options.seed,
        system=options.system,
        max_new_tokens=options.max_new_tokens,
        progress=progress,
    )
    origin["generated_by"] = options.generate_with
    return examples, skipped, origin


def _collection_origin(name: str, collection: Any) -> dict[str, Any]:
    origin: dict[str, Any] = {"kind": "collection", "collection": {"name": name}}
    for attribute in ("generation", "fingerprint"):
        value = getattr(collection, attribute, None)
        value = value() if callable(value) else value
        if value is not None:
            origin["collection"][attribute] = (
                value if isinstance(value, int | float) else str(value)
            )
    return origin


def _raft_from_collection(
    options: PrepareOptions,
    settings: Settings,
    kb: Any,
    generators: Any,
    progress: Progress | None,
    counter: TokenCounter | None,
) -> Built:
    from kb.finetune.raft import raft_examples

    if kb is None:
        from kb.service import KnowledgeBase

        kb = KnowledgeBase(settings)
    assert counter is not None, "RAFT examples are fitted to the context with a token counter"
    generator = (
        _generator(options.generate_with, settings, generators) if options.generate_with else None
    )
    examples, skipped, recipe = raft_examples(
        options,
        kb,
        counter,
        generator=generator,
        max_examples=options.max_examples or DEFAULT_COLLECTION_EXAMPLES,
        progress=progress,
    )
    origin = _collection_origin(
        options.from_collection or "", kb.collection(options.from_collection)
    )
    origin.update(recipe)
    if options.generate_with:
        origin["generated_by"] = options.generate_with
    return examples, skipped, origin
