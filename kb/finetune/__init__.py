"""Fine-tuning data: prepare training files from tables, folders and collections; validate them."""

from kb.finetune.datasets import PrepareResult, prepare_dataset, split_examples
from kb.finetune.examples import Example
from kb.finetune.issues import Issue, ValidationReport
from kb.finetune.options import PrepareOptions
from kb.finetune.sources import Skipped
from kb.finetune.tokens import TokenCounter, load_tokenizer
from kb.finetune.validate import validate_file, validate_lines

__all__ = [
    "Example",
    "Issue",
    "PrepareOptions",
    "PrepareResult",
    "Skipped",
    "TokenCounter",
    "ValidationReport",
    "load_tokenizer",
    "prepare_dataset",
    "split_examples",
    "validate_file",
    "validate_lines",
]
