"""The fine-tuning backend interface: one `run` method that trains and reports through a job."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput
from kb.jobs import JobContext
from kb.settings import Settings

MAX_TOKEN_DROPOUT = 0.5


@dataclass
class FineTuneSpec:
    """What to train. Fields a backend does not use are ignored by it (e.g. `r` remotely)."""

    train_file: str
    validation_file: str | None = None
    name: str | None = None  # the registered model's name; default: derived from the job id
    backend: str = "local"
    base_model: str = "smollm2"  # local: "smollm2" or a model folder; openai: the remote model id
    epochs: int = 1
    lr: float | None = None  # local default 2e-4; openai: a multiplier left to the provider
    batch_size: int = 4
    grad_accumulation: int = 1
    max_seq_len: int = 512
    max_train_examples: int | None = None
    max_eval_examples: int | None = 200
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    token_dropout: float = 0.0  # local: share of prompt tokens left out of each training pass
    target_modules: list[str] | None = None  # None: every linear layer but the output head
    lora_layers: int | None = None  # adapt only the last N decoder layers (faster backward)
    warmup_ratio: float = 0.05
    seed: int = 0
    dtype: str = "float32"  # "bfloat16" trains under bf16 autocast (faster on CPUs with bf16)
    generator: str | None = None  # openai: the configured generator whose base_url/api_key to use
    base_url: str | None = None  # openai: overrides the generator's base_url
    poll_interval: float = 5.0  # openai: seconds between status polls
    checkpoints: bool = True

    def check(self) -> None:
        """Refuse out-of-range options before any work starts."""
        if not Path(self.train_file).is_file():
            raise InvalidInput(
                f"no training file at {self.train_file!r}: run `kb finetune prepare SOURCE OUT_DIR` "
                "and pass OUT_DIR or OUT_DIR/train.jsonl"
            )
        if self.validation_file and not Path(self.validation_file).is_file():
            raise InvalidInput(
                f"no validation file at {self.validation_file!r}: fix the path or leave it out"
            )
        limits = {
            "epochs": (self.epochs, 1, 100),
            "batch_size": (self.batch_size, 1, 512),
            "grad_accumulation": (self.grad_accumulation, 1, 1024),
            "max_seq_len": (self.max_seq_len, 16, 32768),
            "r": (self.r, 1, 1024),
            "alpha": (self.alpha, 1, 4096),
        }
        for key, (value, low, high) in limits.items():
            if not low <= value <= high:
                raise InvalidInput(f"{key}={value} is out of range: use {low}..{high}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise InvalidInput(f"lr={self.lr} is out of range: use e.g. 2e-4 (between 0 and 1)")
        if not 0 <= self.dropout < 1:
            raise InvalidInput(f"dropout={self.dropout} is out of range: use 0 <= dropout < 1")
        if not 0 <= self.token_dropout <= MAX_TOKEN_DROPOUT:
            raise InvalidInput(
                f"token_dropout={self.token_dropout} is out of range: use 0 (off) to "
                f"{MAX_TOKEN_DROPOUT}, e.g. 0.1"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise InvalidInput(f"warmup_ratio={self.warmup_ratio} is out of range: use 0..0.5")
        for key in ("max_train_examples", "max_eval_examples", "lora_layers"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise InvalidInput(f"{key}={value} must be at least 1, or unset for all")
        if self.dtype not in ("float32", "bfloat16"):
            raise InvalidInput(f"dtype {self.dtype!r} is unknown: use float32 or bfloat16")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FineTuneResult:
    """What a finished training run produced; the job stores `to_dict()` as its result."""

    backend: str
    base_model: str
    adapter: str | None = None  # local: the final adapter folder (in the job folder)
    remote_model: str | None = None  # openai: the fine-tuned model id
    remote_job: str | None = None
    base_url: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FineTuneBackend(ABC):
    """Trains a model from a chat/completion JSONL file inside a job.

    `run` reports progress and events through `ctx`, calls `ctx.check_cancelled()` between
    steps (raising `kb.jobs.Cancelled` ends the job as cancelled) and returns the result.
    """

    name: str

    def __init__(self, settings: Settings):
        self.settings = settings

    def work_dir(self, ctx: JobContext) -> Path:
        """The job's own folder for checkpoints, uploads and the final adapter."""
        folder = self.settings.jobs_dir / ctx.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def check(self, spec: FineTuneSpec) -> None:
        """Refuse a spec this backend cannot run, before a job is queued."""
        spec.check()

    @abstractmethod
    def run(self, ctx: JobContext, spec: FineTuneSpec) -> FineTuneResult:
        """Train; return what was produced."""
