"""What validation reports: issue codes with their problem and fix texts, and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SHOWN_LINES = 5
KEPT_LINES = 100

# code -> (problem, fix). A per-line problem follows "FILE, lines 3, 9:" and describes one
# offending line; a file-wide problem follows "FILE:". {detail} is filled in by the check.
ERRORS = {
    "invalid_json": ("not valid JSON", "write one JSON object per line"),
    "not_an_object": ("a JSON value that is not an object", "write one JSON object per line"),
    "unknown_format": (
        "neither `messages` nor `prompt`/`completion`",
        'use {"messages": [...]} or {"prompt": ..., "completion": ...}',
    ),
    "mixed_formats": (
        "a different format from the first example",
        "use either chat `messages` or `prompt`/`completion` throughout the file",
    ),
    "unknown_key": ("unknown keys {detail}", "remove them or move them under `metadata`"),
    "messages_not_list": ("`messages` that is not a list", "make `messages` a list of objects"),
    "message_not_object": (
        "a message that is not an object",
        'write each message as {"role": ..., "content": ...}',
    ),
    "message_unknown_key": (
        "message keys other than role/content/name/tool_calls/tool_call_id/weight: {detail}",
        "remove those keys",
    ),
    "unknown_role": (
        "a message role that is missing or not one of system, user, assistant, tool: {detail}",
        "set each message's `role` to system, user, assistant or tool",
    ),
    "missing_content": (
        "a message without text `content`",
        "give every message a string `content` (an assistant message may carry tool_calls)",
    ),
    "no_assistant_message": (
        "no assistant message",
        "end each conversation with the assistant reply the model should learn",
    ),
    "missing_field": (
        "a missing or non-string `prompt` or `completion`",
        "give every example string `prompt` and `completion` fields",
    ),
    "empty_completion": (
        "an empty completion (assistant reply)",
        "fill in the completion or remove the example",
    ),
    "too_long": (
        "more tokens than the limit of {detail}",
        "shorten or drop these examples, or raise --max-tokens if the model takes longer inputs",
    ),
    "eval_leakage": (
        "a prompt that also appears in the evaluation file {detail}",
        "remove these examples from the training file so the evaluation stays honest",
    ),
    "eval_document_leakage": (
        "a prompt that shows a document the evaluation file {detail} asks about",
        "prepare the data again: its split keeps every document on one side",
    ),
    "too_few_examples": (
        "only {detail} usable examples, under the minimum of 10",
        "add examples; a few hundred work best",
    ),
    "identical_prompts": (
        "every example has the same prompt",
        "make the prompts carry the input that differs between examples",
    ),
    "identical_completions": (
        "every example has the same completion",
        "vary the completions, or the model learns to repeat one answer",
    ),
}
WARNINGS = {
    "skipped": (
        "an entry `kb finetune prepare` would skip ({detail})",
        "fix the entry or remove it",
    ),
    "few_examples": (
        "{detail} examples; fine-tuning usually needs at least 100",
        "add examples: quality tends to grow with every doubling of the data",
    ),
    "duplicate_examples": (
        "an exact repeat of an earlier example",
        "remove the repeats so they do not outweigh the other examples",
    ),
    "conflicting_completions": (
        "the same prompt as an earlier example but a different completion",
        "keep one completion per prompt, or make the prompts tell the cases apart",
    ),
    "no_user_message": ("no user message", "add the user turn the reply answers"),
    "empty_prompt": (
        "an empty prompt (user message)",
        "fill in the input the completion answers, or remove the example",
    ),
    "class_imbalance": (
        "the classes are imbalanced ({detail})",
        "add examples of the small classes or down-sample the large ones",
    ),
    "no_prompt_separator": (
        "the prompts do not end with a common separator",
        "end every prompt with one fixed separator such as `\\n\\n###\\n\\n` so the model "
        "knows where the completion starts",
    ),
    "separator_in_prompt": (
        "the prompt separator {detail} also inside the prompt",
        "pick a separator that appears nowhere else in the prompts",
    ),
    "common_prompt_prefix": (
        "every prompt starts with the same long prefix {detail}",
        "drop the prefix: fine-tuning needs the input data, not the instruction",
    ),
    "completion_no_leading_space": (
        "a completion that does not start with whitespace",
        "start every completion with a space; it tokenizes better after the separator",
    ),
    "no_stop_sequence": (
        "the completions do not end with a common stop sequence",
        "end every completion with one fixed stop sequence such as ` END`",
    ),
    "stop_in_completion": (
        "the stop sequence {detail} also inside the completion",
        "pick a stop sequence that appears nowhere else in the completions",
    ),
    "common_completion_prefix": (
        "every completion starts with {detail}",
        "remove the prefix so completions hold only the output",
    ),
}


@dataclass
class Issue:
    """One problem found in a file, with the 1-based lines (a table's rows) it occurs on."""

    code: str
    message: str
    lines: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "lines": self.lines[:KEPT_LINES],
            "count": len(self.lines),
        }


@dataclass
class ValidationReport:
    """The outcome of validating one file; errors make it not `ok`."""

    path: str
    unit: str = "line"  # what issue lines count: a JSONL file's lines, a table's rows or items
    format: str = "unknown"  # "chat", "completion" or "unknown"
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    task_type: str = "unknown"
    label_counts: dict[str, int] = field(default_factory=dict)
    token_stats: dict[str, Any] = field(default_factory=dict)
    #: how the documents divide between this file and its evaluation file (RAFT data)
    split: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> set[str]:
        return {i.code for i in self.errors} | {i.code for i in self.warnings}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "unit": self.unit,
            "format": self.format,
            "errors": [i.to_dict() for i in self.errors],
            "warnings": [i.to_dict() for i in self.warnings],
            "notes": self.notes,
            "counts": self.counts,
            "task_type": self.task_type,
            "label_counts": self.label_counts,
            "token_stats": self.token_stats,
            "split": self.split,
        }


# the codes that make a line unusable as an example
FORMAT_CODES = {
    "invalid_json",
    "not_an_object",
    "unknown_format",
    "mixed_formats",
    "unknown_key",
    "messages_not_list",
    "message_not_object",
    "message_unknown_key",
    "unknown_role",
    "missing_content",
    "no_assistant_message",
    "missing_field",
}
