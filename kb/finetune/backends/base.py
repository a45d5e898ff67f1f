"""The fine-tuning backend interface: one `run` method that trains and reports through a job."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from kb.errors import InvalidInput
from kb.finetune.options import FineTuneOptions
from kb.jobs import JobContext
from kb.settings import Settings


class FineTuneSpec(FineTuneOptions):
    """What to train: the command's options, the resolved data files, and settings the edges
    leave at their defaults. Fields a backend does not use are ignored by it (e.g. `r`
    remotely)."""

    train_file: str
    validation_file: str | None = None
    max_eval_examples: int | None = Field(200, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    base_url: str | None = None  # openai: overrides the generator's base_url
    poll_interval: float = 5.0  # openai: seconds between status polls
    checkpoints: bool = True

    def check(self) -> None:
        """Refuse missing data files before any work starts (the bounds hold by construction)."""
        if not Path(self.train_file).is_file():
            raise InvalidInput(
                f"no training file at {self.train_file!r}: run `kb finetune prepare SOURCE "
                "--out OUT_DIR` and pass OUT_DIR or OUT_DIR/train.jsonl"
            )
        if self.validation_file and not Path(self.validation_file).is_file():
            raise InvalidInput(
                f"no validation file at {self.validation_file!r}: fix the path or leave it out"
            )


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
