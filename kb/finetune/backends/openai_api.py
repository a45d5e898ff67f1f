"""Fine-tuning through an OpenAI-compatible API (OpenAI itself, or any server with the same
`/files` and `/fine_tuning/jobs` endpoints), with the official `openai` client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kb.errors import BackendError, InvalidInput, Unavailable
from kb.finetune.backends.base import FineTuneBackend, FineTuneResult, FineTuneSpec
from kb.jobs import Cancelled, JobContext
from kb.settings import GeneratorSpec

TERMINAL = ("succeeded", "failed", "cancelled")
METRIC_KEYS = ("step", "train_loss", "valid_loss", "train_mean_token_accuracy", "full_valid_loss")


class OpenAIFineTuneBackend(FineTuneBackend):
    """Uploads the files, creates a remote job, relays its status and events into the kb job,
    and cancels the remote job when the kb job is cancelled. `spec.base_model` is the remote
    base model id (e.g. gpt-4o-mini-2024-07-18); `spec.lr` is the provider's learning-rate
    multiplier."""

    name = "openai"

    def check(self, spec: FineTuneSpec) -> None:
        super().check(spec)
        if spec.base_model == "smollm2":
            raise InvalidInput(
                "base model 'smollm2' is the bundled local model: pass the remote model id with "
                "--base-model (e.g. gpt-4o-mini-2024-07-18), or use --backend local"
            )
        self._endpoint(spec)  # an unknown --generator fails now, not in the job

    def _endpoint(self, spec: FineTuneSpec) -> tuple[str | None, str | None]:
        source: GeneratorSpec | None = None
        if spec.generator:
            source = next((g for g in self.settings.generators if g.name == spec.generator), None)
            if source is None or source.backend != "openai":
                known = [g.name for g in self.settings.generators if g.backend == "openai"]
                raise InvalidInput(
                    f"generator {spec.generator!r} is not a configured openai-backend generator "
                    f"(configured: {', '.join(known) or 'none'}): add it to KB_GENERATORS or "
                    "leave --generator out to use OPENAI_BASE_URL / OPENAI_API_KEY"
                )
        base_url = spec.base_url or (source.base_url if source else None)
        return base_url, source.api_key if source else None

    def client(self, spec: FineTuneSpec):
        import openai

        base_url, api_key = self._endpoint(spec)
        try:
            return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=120)
        except openai.OpenAIError as exc:
            raise Unavailable(
                f"no API key for the fine-tuning endpoint ({exc}): set OPENAI_API_KEY, or name a "
                "configured generator with an api_key via --generator"
            ) from exc

    def run(self, ctx: JobContext, spec: FineTuneSpec) -> FineTuneResult:
        import openai

        client = self.client(spec)
        work = self.work_dir(ctx)
        where = str(client.base_url)
        try:
            training = self._upload(client, ctx, spec.train_file, work / "upload-train.jsonl")
            validation = (
                self._upload(client, ctx, spec.validation_file, work / "upload-validation.jsonl")
                if spec.validation_file
                else None
            )
            hyper: dict[str, Any] = {"n_epochs": spec.epochs}
            if spec.lr is not None:
                hyper["learning_rate_multiplier"] = spec.lr
            optional: dict[str, Any] = {}
            if validation:
                optional["validation_file"] = validation
            if spec.name:
                optional["suffix"] = spec.name[:18]  # OpenAI's limit; shows in the model id
            job = client.fine_tuning.jobs.create(
                model=spec.base_model,
                training_file=training,
                method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
                seed=spec.seed,
                **optional,
            )
            ctx.progress(remote_job=job.id, remote_status=job.status)
            ctx.event(f"remote job {job.id} created at {where}", remote_job=job.id)
            job, metrics = self._follow(client, ctx, spec, job)
        except openai.APIConnectionError as exc:
            raise BackendError(
                f"cannot reach the fine-tuning endpoint {where} ({exc}): check --base-url or "
                "the generator's base_url, and that the server is up"
            ) from exc
        except openai.APIStatusError as exc:
            raise BackendError(
                f"the fine-tuning endpoint {where} refused the request (HTTP {exc.status_code}: "
                f"{_message(exc)}): check the model id, the data and the API key"
            ) from exc
        return FineTuneResult(
            backend=self.name,
            base_model=spec.base_model,
            remote_model=job.fine_tuned_model,
            remote_job=job.id,
            base_url=str(client.base_url).rstrip("/"),
            metrics={**metrics, "trained_tokens": job.trained_tokens},
        )

    def _upload(self, client, ctx: JobContext, path: str, staged: Path) -> str:
        """Upload a copy holding only what the API accepts (no kb `metadata`)."""
        with open(path, encoding="utf-8") as src, staged.open("w", encoding="utf-8") as dst:
            for line in src:
                if not line.strip():
                    continue
                record = json.loads(line)
                keep = ("messages",) if "messages" in record else ("prompt", "completion")
                dst.write(json.dumps({k: record[k] for k in keep if k in record}) + "\n")
        with staged.open("rb") as f:
            uploaded = client.files.create(file=(Path(path).name, f), purpose="fine-tune")
        ctx.event(f"uploaded {Path(path).name} as file {uploaded.id}")
        return uploaded.id

    def _follow(self, client, ctx: JobContext, spec: FineTuneSpec, job) -> tuple[Any, dict]:
        """Poll the remote job until it ends; relay new events; cancel it on a kb cancel."""
        seen: set[str] = set()
        metrics: dict[str, Any] = {}
        started = time.monotonic()
        while True:
            if ctx.cancel_requested.is_set():
                client.fine_tuning.jobs.cancel(job.id)
                ctx.event(f"remote job {job.id} cancelled")
                raise Cancelled()
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
            for event in reversed(events):  # the API lists newest first
                if event.id in seen:
                    continue
                seen.add(event.id)
                data = event.data if isinstance(event.data, dict) else {}
                metrics.update({k: data[k] for k in METRIC_KEYS if k in data})
                ctx.event(event.message, level=event.level or "info", remote_event=event.id)
            ctx.progress(
                remote_job=job.id,
                remote_status=job.status,
                trained_tokens=job.trained_tokens,
                step=metrics.get("step"),
                loss=metrics.get("train_loss"),
                eval_loss=metrics.get("valid_loss"),
                elapsed_s=round(time.monotonic() - started, 1),
                estimated_finish=job.estimated_finish,
            )
            if job.status == "succeeded":
                if not job.fine_tuned_model:
                    raise BackendError(
                        f"remote job {job.id} succeeded but named no fine-tuned model: check the "
                        "provider's dashboard"
                    )
                return job, metrics
            if job.status == "failed":
                error = getattr(job.error, "message", None) or "no reason given"
                raise BackendError(
                    f"remote fine-tuning job {job.id} failed: {error}; fix the data or options "
                    "and submit again"
                )
            if job.status == "cancelled":
                ctx.event(f"remote job {job.id} was cancelled at the provider")
                raise Cancelled()
            ctx.cancel_requested.wait(spec.poll_interval)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("detail"):
            return str(body["detail"])[:500]
    return str(getattr(exc, "message", exc))
