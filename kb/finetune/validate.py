"""Checks for fine-tuning JSONL files: format, size, duplicates, token limits, task type, leakage.

Chat files hold `{"messages": [...], "metadata": {...}}` per line, legacy files
`{"prompt": ..., "completion": ...}`. The checks follow OpenAI's chat-format data checks and
its legacy `prepare_data` tool; every issue names the problem, the lines and the fix.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput
from kb.finetune.builders import examples_from_table
from kb.finetune.examples import normalize_prompt
from kb.finetune.issues import (
    ERRORS,
    FORMAT_CODES,
    SHOWN_LINES,
    WARNINGS,
    Issue,
    ValidationReport,
)
from kb.finetune.options import PrepareOptions, ValidateOptions
from kb.finetune.sources import TABLE_SUFFIXES, Skipped
from kb.finetune.tokens import TokenCounter, load_tokenizer
from kb.settings import Settings

ROLES = ("system", "user", "assistant", "tool")
CHAT_KEYS = {"messages", "metadata", "tools"}
COMPLETION_KEYS = {"prompt", "completion", "metadata"}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "weight"}
MIN_EXAMPLES = 10  # OpenAI refuses fewer
RECOMMENDED_EXAMPLES = 100
CLASSIFICATION_RATIO = 3  # classification when there are fewer than n/3 distinct completions
IMBALANCE_RATIO = 3  # warn when the biggest class is this many times the smallest
MAX_PROMPT_PREFIX = 12
MAX_COMPLETION_PREFIX = 5


@dataclass
class _Example:
    line: int
    kind: str
    prompt: str
    completion: str
    messages: list[dict[str, Any]] | None
    key: str
    #: a recipe's record of the documents behind the example (RAFT): the one it asks about and
    #: every one its prompt shows
    asks: str | None = None
    shows: frozenset[str] = frozenset()


class _Findings:
    """Issues as the checks find them: lines per code, details, and file-wide codes."""

    def __init__(self) -> None:
        self.lines: dict[str, list[int]] = defaultdict(list)
        self.details: dict[str, set[str]] = defaultdict(set)
        self.order: dict[str, None] = {}

    def at(self, code: str, lines: int | Iterable[int], detail: str | None = None) -> None:
        new = [lines] if isinstance(lines, int) else list(lines)
        if new:
            self.order.setdefault(code)
            self.lines[code] += new
            if detail is not None:
                self.details[code].add(detail)

    def whole(self, code: str, detail: str | None = None) -> None:
        self.order.setdefault(code)
        if detail is not None:
            self.details[code].add(detail)

    def issues(self, source: str, unit: str) -> tuple[list[Issue], list[Issue]]:
        errors, warnings = [], []
        for code in self.order:
            problem, fix = ERRORS[code] if code in ERRORS else WARNINGS[code]
            problem = problem.format(detail=", ".join(sorted(self.details[code])))
            lines = sorted(set(self.lines[code]))
            where = f"{source}, {_where(lines, unit)}" if lines else source
            issue = Issue(code, f"{where}: {problem}; fix: {fix}", lines)
            (errors if code in ERRORS else warnings).append(issue)
        return errors, warnings


@dataclass
class _Source:
    """Examples as JSONL text, numbered as their file numbers them: a JSONL file's lines, or a
    table's rows (the header is row 1) or a JSON list's items."""

    name: str
    records: list[tuple[int, str]]
    unit: str = "line"
    size: int = 0  # lines, rows or items read
    skipped: list[Skipped] = field(default_factory=list)  # rows prepare would skip


def _jsonl(lines: Iterable[str], name: str) -> _Source:
    records = list(enumerate(lines, start=1))
    return _Source(name, [(n, t) for n, t in records if t.strip()], size=len(records))


def _read_source(
    path: Path, what: str, columns: ValidateOptions, settings: Settings | None
) -> _Source:
    """A JSONL file as it is, or a table as the chat examples `kb finetune prepare` makes of
    it, each numbered by its row."""
    if path.is_dir():
        raise InvalidInput(
            f"{str(path)!r} is a folder: validate a file, e.g. the train.jsonl that `kb finetune "
            "prepare FOLDER --out DIR` writes"
        )
    if not path.is_file():
        raise InvalidInput(f"no {what} at {str(path)!r}: check the path")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES or suffix == ".jsonl":
        return _jsonl(path.read_text(encoding="utf-8", errors="replace").splitlines(), str(path))
    options = PrepareOptions(
        prompt_column=columns.prompt_column, completion_column=columns.completion_column
    )
    examples, skipped, origin = examples_from_table(
        path, options, settings or Settings(), None, None
    )
    unit = "item" if suffix == ".json" else "row"
    sheet = f" (sheet {origin['sheet']})" if origin.get("sheet") else ""
    records = [
        (e.metadata[unit], json.dumps(e.to_record("chat"), ensure_ascii=False)) for e in examples
    ]
    return _Source(f"{path}{sheet}", records, unit, len(examples) + len(skipped), skipped)


def validate_file(
    path: str | Path,
    *,
    eval_file: str | Path | None = None,
    max_tokens: int = 2048,
    tokenizer: Any = None,
    settings: Settings | None = None,
    check_size: bool = True,
    prompt_column: str | None = None,
    completion_column: str | None = None,
) -> ValidationReport:
    """Validate a JSONL training file, or a table (CSV, TSV, XLSX, JSON) as `kb finetune
    prepare` would read it, its findings numbered by the table's rows. `tokenizer` is a loaded
    tokenizer, a path, or None for the bundled SmolLM2 one; `check_size=False` suits a small
    held-out split (no count/class checks); the columns name a table's prompt and completion."""
    columns = ValidateOptions(prompt_column=prompt_column, completion_column=completion_column)
    source = _read_source(Path(path), "file", columns, settings)
    held = None
    if eval_file is not None:
        held = _read_source(Path(eval_file), "evaluation file", columns, settings)
    return _validate(source, held, max_tokens, tokenizer, settings, check_size)


def validate_lines(
    lines: Iterable[str],
    *,
    source: str = "<data>",
    eval_lines: Iterable[str] | None = None,
    eval_source: str | None = None,
    max_tokens: int = 2048,
    tokenizer: Any = None,
    settings: Settings | None = None,
    check_size: bool = True,
) -> ValidationReport:
    """Validate JSONL content already in memory (e.g. an upload); see `validate_file`."""
    held = None
    if eval_lines is not None:
        held = _jsonl(eval_lines, eval_source or "the evaluation file")
    return _validate(_jsonl(lines, source), held, max_tokens, tokenizer, settings, check_size)


def _validate(
    source: _Source,
    held: _Source | None,
    max_tokens: int,
    tokenizer: Any,
    settings: Settings | None,
    check_size: bool,
) -> ValidationReport:
    report = ValidationReport(path=source.name, unit=source.unit)
    found = _Findings()
    examples: list[_Example] = []
    for number, text in source.records:
        example = _parse(number, text, found)
        if example is not None:
            examples.append(example)
    for item in source.skipped:
        found.at("skipped", item.number, item.reason)
    if source.unit != "line":
        report.notes.append(
            f"read as the chat examples `kb finetune prepare` makes of its {source.unit}s"
        )
    if examples:
        report.format = examples[0].kind
        found.at("mixed_formats", [e.line for e in examples if e.kind != report.format])
        examples = [e for e in examples if e.kind == report.format]

    n = len(examples)
    if check_size and n < MIN_EXAMPLES:
        found.whole("too_few_examples", str(n))
    elif check_size and n < RECOMMENDED_EXAMPLES:
        found.whole("few_examples", str(n))
    _check_duplicates(examples, found)
    prompts, completions = [e.prompt for e in examples], [e.completion for e in examples]
    report.task_type = infer_task_type(prompts, completions)
    if report.task_type == "classification":
        report.label_counts = dict(Counter(c.strip() for c in completions).most_common())
    if report.task_type != "open-ended generation":
        no_user = set(found.lines["no_user_message"])
        found.at(
            "empty_prompt",
            [e.line for e in examples if not e.prompt.strip() and e.line not in no_user],
        )
    if check_size and n >= 2:
        _check_whole_set(report, examples, found)
    if report.format == "completion" and len(examples) >= 2:
        _check_completion_format(report, examples, found)
    if held is not None:
        _check_leakage(examples, held, found)
        _check_document_split(report, examples, held, found)
    over = _count_tokens(report, examples, max_tokens, tokenizer, settings)
    found.at("too_long", over, f"{max_tokens} tokens")

    report.errors, report.warnings = found.issues(source.name, source.unit)
    report.counts = {
        "lines": source.size,
        "examples": n,
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "invalid_lines": len({ln for c in FORMAT_CODES for ln in found.lines.get(c, ())}),
        "duplicates": len(found.lines.get("duplicate_examples", ())),
        "over_token_limit": len(over),
        "missing_system": sum(
            1 for e in examples if e.messages and e.messages[0].get("role") != "system"
        ),
        "leaked": len(found.lines.get("eval_leakage", ())),
    }
    return report


def _where(lines: list[int], unit: str) -> str:
    shown = ", ".join(str(n) for n in lines[:SHOWN_LINES])
    more = f" and {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else ""
    return f"{unit}{'s' if len(lines) > 1 else ''} {shown}{more}"


def _text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return None


def _parse(number: int, text: str, found: _Findings) -> _Example | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        found.at("invalid_json", number)
        return None
    if not isinstance(obj, dict):
        found.at("not_an_object", number)
        return None
    example = _parse_record(number, obj, found)
    metadata = obj.get("metadata")
    if example is not None and isinstance(metadata, dict) and metadata.get("oracle_doc_id"):
        example.asks = str(metadata["oracle_doc_id"])
        shown = metadata.get("passage_doc_ids")
        example.shows = frozenset(map(str, shown if isinstance(shown, list) else []))
    return example


def _parse_record(number: int, obj: dict[str, Any], found: _Findings) -> _Example | None:
    if "messages" in obj:
        return _parse_chat(number, obj, found)
    if "prompt" in obj or "completion" in obj:
        unknown = set(obj) - COMPLETION_KEYS
        if unknown:
            found.at("unknown_key", number, ", ".join(sorted(map(repr, unknown))))
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            found.at("missing_field", number)
            return None
        if not completion.strip():
            found.at("empty_completion", number)
        key = json.dumps([prompt, completion], ensure_ascii=False)
        return _Example(number, "completion", prompt, completion, None, key)
    found.at("unknown_format", number)
    return None


def _parse_chat(number: int, obj: dict[str, Any], found: _Findings) -> _Example | None:
    unknown = set(obj) - CHAT_KEYS
    if unknown:
        found.at("unknown_key", number, ", ".join(sorted(map(repr, unknown))))
    messages = obj["messages"]
    if not isinstance(messages, list):
        found.at("messages_not_list", number)
        return None
    usable = True
    clean: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            found.at("message_not_object", number)
            usable = False
            continue
        extra = set(message) - MESSAGE_KEYS
        if extra:
            found.at("message_unknown_key", number, ", ".join(sorted(map(repr, extra))))
        role = message.get("role")
        if role not in ROLES:
            found.at("unknown_role", number, repr(role))
            usable = False
        content = _text(message.get("content"))
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            found.at("missing_content", number)
            usable = False
        clean.append({"role": role, "content": content or ""})
    replies = [m for m in clean if m["role"] == "assistant"]
    if not replies:
        found.at("no_assistant_message", number)
        usable = False
    if not usable:
        return None
    if not replies[-1]["content"].strip() and not any(
        isinstance(m, dict) and m.get("tool_calls") for m in messages[-1:]
    ):
        found.at("empty_completion", number)
    users = [m["content"] for m in clean if m["role"] == "user"]
    if not users:
        found.at("no_user_message", number)
    key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return _Example(number, "chat", "\n".join(users), replies[-1]["content"], clean, key)


def infer_task_type(prompts: list[str], completions: list[str]) -> str:
    """OpenAI's rule: classification when completions repeat (fewer than n/3 distinct ones)."""
    if not completions:
        return "unknown"
    if not any(p.strip() for p in prompts):
        return "open-ended generation"
    if len({c.strip() for c in completions}) < len(completions) / CLASSIFICATION_RATIO:
        return "classification"
    return "conditional generation"


def common_affix(texts: list[str], suffix: bool = False) -> str:
    """The longest prefix (or suffix) that every text shares."""
    if not texts:
        return ""
    items = [t[::-1] for t in texts] if suffix else texts
    shortest, longest = min(items), max(items)
    size = 0
    while size < len(shortest) and shortest[size] == longest[size]:
        size += 1
    common = shortest[:size]
    return common[::-1] if suffix else common


def _shown(text: str) -> str:
    return "`" + text.replace("\n", "\\n") + "`"


def _check_duplicates(examples: list[_Example], found: _Findings) -> None:
    seen: set[str] = set()
    completion_of: dict[str, str] = {}
    for e in examples:
        if e.key in seen:
            found.at("duplicate_examples", e.line)
            continue
        seen.add(e.key)
        prompt = normalize_prompt(e.prompt)
        if (
            prompt
            and completion_of.setdefault(prompt, e.completion.strip()) != e.completion.strip()
        ):
            found.at("conflicting_completions", e.line)


def _check_whole_set(report: ValidationReport, examples: list[_Example], found: _Findings) -> None:
    prompts = {e.prompt for e in examples}
    if len(prompts) == 1 and next(iter(prompts)).strip():
        found.whole("identical_prompts")
    if len({e.completion.strip() for e in examples}) == 1:
        found.whole("identical_completions")
    counts = report.label_counts
    if len(counts) >= 2 and max(counts.values()) >= IMBALANCE_RATIO * min(counts.values()):
        largest = max(counts, key=counts.__getitem__)
        smallest = min(counts, key=counts.__getitem__)
        found.whole(
            "class_imbalance",
            f"{largest!r} has {counts[largest]} examples, {smallest!r} only {counts[smallest]}",
        )


def _check_completion_format(
    report: ValidationReport, examples: list[_Example], found: _Findings
) -> None:
    """The legacy prompt/completion advice: separator, stop sequence, whitespace, prefixes."""
    prompts = [e.prompt for e in examples]
    completions = [e.completion for e in examples]
    if report.task_type != "open-ended generation":
        separator = common_affix(prompts, suffix=True)
        if not separator.strip() and "\n" not in separator:
            found.whole("no_prompt_separator")
        else:
            report.notes.append(f"all prompts end with the separator {_shown(separator)}")
            inside = [e.line for e in examples if separator in e.prompt[: -len(separator)]]
            found.at("separator_in_prompt", inside, _shown(separator))
        prefix = common_affix(prompts)
        if len(prefix) > MAX_PROMPT_PREFIX and len(set(prompts)) > 1:
            found.whole("common_prompt_prefix", _shown(prefix[:40]))
    found.at(
        "completion_no_leading_space",
        [e.line for e in examples if e.completion and not e.completion[:1].isspace()],
    )
    prefix = common_affix([c.lstrip() for c in completions])
    if len(prefix) >= MAX_COMPLETION_PREFIX and len(set(completions)) > 1:
        found.whole("common_completion_prefix", _shown(prefix[:40]))
    if report.task_type == "conditional generation":
        stop = common_affix(completions, suffix=True)
        if not stop.strip() and "\n" not in stop:
            found.whole("no_stop_sequence")
        else:
            report.notes.append(f"all completions end with the stop sequence {_shown(stop)}")
            inside = [e.line for e in examples if stop in e.completion[: -len(stop)]]
            found.at("stop_in_completion", inside, _shown(stop))


def _check_leakage(examples: list[_Example], held: _Source, found: _Findings) -> None:
    held_out: set[str] = set()
    scratch = _Findings()  # the evaluation file's own problems are not this report's
    for number, text in held.records:
        example = _parse(number, text, scratch)
        if example is not None and normalize_prompt(example.prompt):
            held_out.add(normalize_prompt(example.prompt))
    leaked = [e.line for e in examples if normalize_prompt(e.prompt) in held_out]
    found.at("eval_leakage", leaked, held.name)


def _check_document_split(
    report: ValidationReport, examples: list[_Example], held: _Source, found: _Findings
) -> None:
    """For data whose examples name their documents (RAFT): how many documents each side asks
    about, and the training examples whose prompt shows a document the evaluation asks about."""
    scratch = _Findings()
    parsed = (_parse(number, text, scratch) for number, text in held.records)
    evaluated = {e.asks for e in parsed if e is not None and e.asks}
    trained = {e.asks for e in examples if e.asks}
    if not evaluated and not trained:
        return
    leaked = [e.line for e in examples if (e.shows | {e.asks}) & evaluated]
    report.split = {
        "by": "document",
        "train_documents": len(trained),
        "evaluation_documents": len(evaluated),
        "shared_documents": len({d for e in examples for d in e.shows | {e.asks}} & evaluated),
    }
    report.notes.append(
        f"split by document: {len(trained)} documents asked about in training, "
        f"{len(evaluated)} in evaluation; {len(leaked)} training examples show an evaluation "
        "document"
    )
    found.at("eval_document_leakage", leaked, held.name)


def _count_tokens(
    report: ValidationReport,
    examples: list[_Example],
    max_tokens: int,
    tokenizer: Any,
    settings: Settings | None,
) -> list[int]:
    if not examples:
        return []
    if tokenizer is None or isinstance(tokenizer, str | Path):
        settings = settings or Settings()
        tokenizer = load_tokenizer(tokenizer, cache_dir=settings.cache_dir)
    counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    if report.format == "chat":
        sizes = counter.count_chats([e.messages or [] for e in examples])
    else:
        sizes = counter.count_texts([e.prompt + e.completion for e in examples])
    ordered = sorted(sizes)
    over = [e.line for e, size in zip(examples, sizes, strict=True) if size > max_tokens]
    report.token_stats = {
        "tokenizer": counter.name,
        "limit": max_tokens,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": round(statistics.fmean(sizes), 1),
        "median": statistics.median(sizes),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "total": sum(sizes),
        "over_limit": len(over),
    }
    if report.format == "chat":
        report.token_stats["completion_total"] = sum(
            counter.count_texts([e.completion for e in examples])
        )
    return over
