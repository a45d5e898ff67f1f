"""Fine-tuning path: LoRA jobs end to end over HTTP, cancellation, persistence, the OpenAI
backend against a fake fine-tuning server (through the real openai client), and embedding
fine-tuning with an atomic re-index."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Form, UploadFile

from kb.errors import Conflict
from kb.finetune.backends import FineTuneSpec
from kb.finetune.jobs import request_cancel, submit_finetune
from kb.generators import GeneratorRegistry
from kb.jobs import JobManager
from kb.models import ModelRegistry
from kb.settings import GeneratorSpec, Settings
from tests.conftest import free_port, live_server

COLOURS = ["red", "blue", "green", "amber", "violet", "teal", "ochre", "pink", "grey", "gold"]


def _example(i: int) -> dict:
    colour = COLOURS[i % len(COLOURS)]
    return {
        "messages": [
            {"role": "user", "content": f"What colour is crate number {i}?"},
            {"role": "assistant", "content": f"Crate {i} is {colour}."},
        ],
        "metadata": {"source": "test", "row": i},
    }


def _write_dataset(folder: Path, train: int, validation: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("train.jsonl", range(train)),
        ("validation.jsonl", range(100, 100 + validation)),
    ):
        (folder / name).write_text("".join(json.dumps(_example(i)) + "\n" for i in rows))
    manifest = {"source": {"kind": "collection", "collection": {"name": "crates", "generation": 3}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory) -> Path:
    """The bundled GGUF converted once for this module; test data dirs link to it."""
    from kb.generators.local import bundled_smollm2_gguf, converted_model_dir, ensure_model_dir

    cache = tmp_path_factory.mktemp("smollm2-cache")
    ensure_model_dir("smollm2", cache)
    return converted_model_dir(bundled_smollm2_gguf(), cache)


def _settings(root: Path, smollm2_cache: Path, **extra) -> Settings:
    data = root / "data"
    from kb.finetune.tokens import _gguf_cache_folder, bundled_gguf_path

    # the converted model folder holds its tokenizer too: link it where each looks it up
    for link in (
        data / "cache" / "models" / smollm2_cache.name,
        _gguf_cache_folder(bundled_gguf_path(), data / "cache"),
    ):
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(smollm2_cache, target_is_directory=True)
    return Settings(
        data_dir=data,
        generators=[GeneratorSpec(name="smollm2", model="smollm2", max_new_tokens=16)],
        default_generator="smollm2",
        ingest_roots=[root / "roots"],
        **extra,
    )


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, smollm2_cache):
    root = tmp_path_factory.mktemp("ft-http")
    settings = _settings(root, smollm2_cache)
    _write_dataset(root / "roots" / "tiny", train=8, validation=2)
    _write_dataset(root / "roots" / "long", train=64, validation=2)
    with live_server(settings, warm=False) as live:
        yield live


def _wait(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/finetune/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


@pytest.mark.slow
def test_lora_job_over_http_registers_a_model_that_answers(lora_server):
    with httpx.Client(base_url=lora_server.url, timeout=120) as client:
        created = client.post(
            "/finetune/jobs",
            json={
                "train_file": "tiny/train.jsonl",
                "validation_file": "tiny/validation.jsonl",
                "name": "crates-lora",
                "r": 4,
                "alpha": 8,
                "max_seq_len": 128,
                "epochs": 1,
                "batch_size": 4,
            },
        )
        assert created.status_code == 202, created.text
        assert created.headers["Location"] == f"/finetune/jobs/{created.json()['id']}"
        job = _wait(client, created.json()["id"])
        assert job["state"] == "succeeded", job
        progress = job["progress"]
        assert progress["step"] == progress["total_steps"] == 2
        for key in ("epoch", "loss", "eval_loss", "examples_per_s", "eta_s"):
            assert key in progress
        assert any("epoch 1/1" in e["message"] for e in job["events"])

        adapter = Path(job["result"]["model_record"]["adapter"])
        assert (adapter / "adapter_config.json").is_file()
        assert (adapter / "adapter_model.safetensors").is_file()
        stored = json.loads((adapter.parent / "model.json").read_text())
        assert stored["kind"] == "finetuned" and stored["job_id"] == job["id"]
        assert len(stored["dataset"]["sha256"]) == 64
        assert stored["dataset"]["collection"] == {"name": "crates", "generation": 3}
        assert stored["metrics"]["eval_loss"] is not None

        events = client.get(f"/finetune/jobs/{job['id']}/events", params={"after": 2}).json()
        assert events["next_after"] == len(job["events"]) and events["state"] == "succeeded"

        # registered into the live registry at once: the fine-tuned mode uses it
        answer = client.post(
            "/query", json={"question": "What colour is crate number 3?", "mode": "finetuned"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["name"] == "crates-lora"
        assert body["answer"].strip()
        listed = client.get("/models/finetuned").json()["models"]
        assert [m["name"] for m in listed] == ["crates-lora"]

    # the job record survives a new JobManager (a restart)
    again = JobManager(lora_server.settings.jobs_dir).get(job["id"])
    assert again.state == "succeeded" and again.result["model"] == "crates-lora"


@pytest.mark.slow
def test_cancel_right_after_start_ends_cancelled(lora_server):
    with httpx.Client(base_url=lora_server.url, timeout=60) as client:
        created = client.post(
            "/finetune/jobs",
            json={"train_file": "long/train.jsonl", "name": "never", "epochs": 3, "r": 4},
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/finetune/jobs/{job_id}").json()["state"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled = client.post(f"/finetune/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        job = _wait(client, job_id)
        assert job["state"] == "cancelled", job
        assert "never" not in [m["name"] for m in client.get("/models/finetuned").json()["models"]]
        again = client.post(f"/finetune/jobs/{job_id}/cancel")
        assert again.status_code == 409
    assert JobManager(lora_server.settings.jobs_dir).get(job_id).state == "cancelled"


@pytest.mark.slow
def test_models_survive_restart_and_can_be_deleted(lora_server):
    """A second app over the same data dir (a restart) registers the stored model again."""
    with (
        live_server(lora_server.settings, warm=False) as second,
        httpx.Client(base_url=second.url, timeout=60) as client,
    ):
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        if "crates-lora" not in models:
            pytest.skip("needs the model trained by test_lora_job_over_http_...")
        assert models["crates-lora"]["kind"] == "finetuned"
        gone = client.delete("/models/crates-lora")
        assert gone.status_code == 200, gone.text
        assert "crates-lora" not in [m["name"] for m in client.get("/models").json()["models"]]
        missing = client.delete("/models/crates-lora")
        assert missing.status_code == 404
        assert "kb models list" in missing.json()["error"]["message"]


@pytest.mark.slow
def test_prepare_and_validate_datasets_over_http(lora_server):
    folder = Path(lora_server.settings.ingest_roots[0]) / "labelled"
    for label, words in (("cats", "purr whiskers meow"), ("dogs", "bark fetch wag")):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            (folder / label / f"{i}.txt").write_text(f"Message {i}: {words} {i}.")
    with httpx.Client(base_url=lora_server.url, timeout=120) as client:
        prepared = client.post(
            "/finetune/datasets/prepare",
            json={"name": "pets", "source": "labelled", "val_fraction": 0.25},
        )
        assert prepared.status_code == 200, prepared.text
        body = prepared.json()
        assert body["dataset"] == "pets" and body["counts"]["examples"] == 16
        assert (
            Path(body["files"]["train"]).parent
            == lora_server.settings.data_dir / "finetune" / "pets"
        )
        checked = client.post("/finetune/datasets/validate", json={"dataset": "pets"})
        assert checked.status_code == 200, checked.text
        report = checked.json()
        assert report["ok"] is True and report["label_counts"] == {"cats": 6, "dogs": 6}
        lines = [json.dumps(_example(i)) for i in range(3)] + ["{not json"]
        inline = client.post("/finetune/datasets/validate", json={"lines": lines})
        assert inline.status_code == 200 and inline.json()["ok"] is False
        both = client.post("/finetune/datasets/validate", json={"dataset": "pets", "lines": lines})
        assert both.status_code == 422 and "exactly one" in both.text
        bad_header = client.post(
            "/finetune/datasets/prepare",
            json={"name": "pets2", "source": "labelled", "keep_headers": ["subject", "from:"]},
        )
        assert bad_header.status_code == 422 and "not header names" in bad_header.text
        with_neighbours = client.post(
            "/finetune/datasets/prepare",
            json={
                "name": "pets-nb",
                "source": "labelled",
                "val_fraction": 0,
                "neighbours": 2,
                "neighbours_from": "labelled",
                "header_labels": ["from", "quoted"],
            },
        )
        assert with_neighbours.status_code == 200, with_neighbours.text
        first = json.loads(
            Path(with_neighbours.json()["files"]["train"]).read_text().split("\n")[0]
        )
        assert "most similar first:\ncats: Message" in first["messages"][0]["content"] or (
            "most similar first:\ndogs: Message" in first["messages"][0]["content"]
        )
        assert "\nLabelled messages with the same From: " in first["messages"][0]["content"]
        assert "\nLabelled messages by the authors it quotes: " in first["messages"][0]["content"]
        bad_sender = client.post(
            "/finetune/datasets/prepare",
            json={"name": "pets3", "source": "labelled", "neighbours": 2, "header_labels": ["a b"]},
        )
        assert bad_sender.status_code == 422 and "not header names" in bad_sender.text
        pool_outside = client.post(
            "/finetune/datasets/prepare",
            json={
                "name": "pets-x",
                "source": "labelled",
                "neighbours": 2,
                "neighbours_from": "/etc",
            },
        )
        assert pool_outside.status_code == 403, pool_outside.text


@pytest.mark.slow
def test_bad_requests_name_the_fix(lora_server):
    with httpx.Client(base_url=lora_server.url, timeout=60) as client:
        outside = client.post("/finetune/jobs", json={"train_file": "/etc/passwd"})
        assert outside.status_code == 403
        unknown = client.post(
            "/finetune/jobs", json={"train_file": "tiny/train.jsonl", "name": "bad name!"}
        )
        assert unknown.status_code == 422 and "invalid model name" in unknown.text
        no_dataset = client.post("/finetune/jobs", json={"dataset": "nope"})
        assert no_dataset.status_code == 404 and "/finetune/datasets/prepare" in no_dataset.text
        too_many = client.post("/finetune/jobs", json={"train_file": "tiny/train.jsonl", "r": 0})
        assert too_many.status_code == 422
        assert "r: Input should be greater than or equal to 1 (got 0)" in too_many.text
        # an option that measured no gain is gone, refused by name rather than ignored
        removed = client.post(
            "/finetune/jobs", json={"train_file": "tiny/train.jsonl", "token_dropout": 0.2}
        )
        assert removed.status_code == 422 and "token_dropout: Extra inputs" in removed.text


def _pets(folder: Path, numbers: range) -> Path:
    for label, words in (("cats", "purr whiskers meow"), ("dogs", "bark fetch wag")):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in numbers:
            (folder / label / f"{i}.txt").write_text(f"Subject: {label} {i}\n\n{words} {i}.")
    return folder


@pytest.mark.slow
def test_classifier_with_neighbours_labels_new_texts_as_in_training(lora_server, monkeypatch):
    from typer.testing import CliRunner

    from kb.cli.models import models_app
    from kb.finetune.classify import ClassifierCache, NotAClassifier, recipe

    settings = lora_server.settings
    roots = Path(settings.ingest_roots[0])
    _pets(roots / "pets-train", range(8))
    _pets(roots / "pets-test", range(50, 53))
    with httpx.Client(base_url=lora_server.url, timeout=240) as client:
        for name, source, extra in (
            ("pets-cls", "pets-train", {"val_fraction": 0.25}),
            ("pets-held", "pets-test", {"val_fraction": 0, "neighbours_from": "pets-train"}),
        ):
            prepared = client.post(
                "/finetune/datasets/prepare",
                json={"name": name, "source": source, "neighbours": 2, **extra},
            )
            assert prepared.status_code == 200, prepared.text
        created = client.post(
            "/finetune/jobs",
            json={"dataset": "pets-cls", "name": "pets-cls", "r": 4, "alpha": 8, "epochs": 1},
        )
        assert created.status_code == 202, created.text
        assert _wait(client, created.json()["id"])["state"] == "succeeded"

        texts = [(roots / "pets-test" / label / "50.txt").read_text() for label in ("cats", "dogs")]
        answered = client.post("/models/pets-cls/classify", json={"texts": texts})
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert body["labels"] == ["cats", "dogs"]
        for result, label in zip(body["results"], ("cats", "dogs"), strict=True):
            probabilities = result["probabilities"]
            assert abs(sum(probabilities.values()) - 1) < 1e-4
            assert result["label"] == max(probabilities, key=probabilities.get)
            # the neighbours come from the training folder, and retrieval found the same kind
            assert [n["label"] for n in result["neighbours"]] == [label, label]
            assert all("/pets-train/" in n["source"] for n in result["neighbours"])

        none = client.post("/models/pets-cls/classify", json={"texts": []})
        assert none.status_code == 422
        missing = client.post("/models/nope/classify", json={"texts": ["x"]})
        assert missing.status_code == 404 and "kb models list" in missing.text
        headers_only = "From: a@b.c\nDate: 1 Apr 1993\nLines: 0\n\n"
        empty = client.post("/models/pets-cls/classify", json={"texts": [texts[0], headers_only]})
        assert empty.status_code == 422 and "texts [1] are empty" in empty.text
        both = client.post("/models/pets-cls/classify", json={"texts": texts, "both_views": True})
        assert both.status_code == 422 and "both_views: Extra inputs" in both.text  # removed

    # the classifier builds exactly the prompts `prepare` built for the held-out folder
    registry, generators = ModelRegistry(settings), GeneratorRegistry(settings)
    registry.load_into(generators)
    classifier = ClassifierCache().get(registry.get("pets-cls"), generators, settings)
    held = [
        json.loads(line)
        for line in (settings.data_dir / "finetune" / "pets-held" / "train.jsonl")
        .read_text()
        .splitlines()
    ]
    texts = [Path(r["metadata"]["source"]).read_text() for r in held]
    prompts, _ = classifier.prompts(texts)
    assert prompts == [r["messages"][0]["content"] for r in held]
    # a model trained on other data is not a classifier: the error says what is needed
    other = registry.get("pets-cls")
    other.dataset = {"path": str(roots / "tiny" / "train.jsonl")}
    with pytest.raises(NotAClassifier, match="not a labelled folder"):
        recipe(other)

    # the CLI: a labelled folder gives each file's true label and the accuracy; a binary file
    # and a message with headers but no body are skipped with the reason, not the end of the run
    (roots / "pets-test" / "cats" / "blob.bin").write_bytes(b"\x00\x01binary")
    (roots / "pets-test" / "dogs" / "headers.txt").write_text(headers_only)
    monkeypatch.setenv("KB_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    ran = runner.invoke(models_app, ["classify", "pets-cls", str(roots / "pets-test"), "--json"])
    assert ran.exit_code == 0, ran.output
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["texts"] == 6 and {r["gold"] for r in out["results"]} == {"cats", "dogs"}
    assert [Path(x["path"]).name for x in out["skipped"]] == ["blob.bin", "headers.txt"]
    assert "binary file" in out["skipped"][0]["reason"]
    assert "empty once mail headers are dropped" in out["skipped"][1]["reason"]
    assert out["accuracy"] == sum(r["label"] == r["gold"] for r in out["results"]) / 6


# -- the OpenAI backend against a fake fine-tuning server -----------------------------------


class FakeFineTuning:
    """An OpenAI-compatible fine-tuning API in memory: a job moves one state per retrieve."""

    def __init__(self, steps_to_finish: int = 3):
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.retrieves: dict[str, int] = {}
        self.steps = steps_to_finish
        self.ids = itertools.count(1)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/files")
        async def upload(file: UploadFile, purpose: str = Form(...)):
            fid = f"file-{next(self.ids)}"
            self.files[fid] = await file.read()
            return {
                "id": fid,
                "object": "file",
                "bytes": len(self.files[fid]),
                "created_at": 0,
                "filename": file.filename,
                "purpose": purpose,
                "status": "processed",
            }

        @app.post("/v1/fine_tuning/jobs")
        async def create(body: dict):
            jid = f"ftjob-{next(self.ids)}"
            self.jobs[jid] = {
                "id": jid,
                "object": "fine_tuning.job",
                "created_at": 0,
                "model": body["model"],
                "training_file": body["training_file"],
                "validation_file": body.get("validation_file"),
                "status": "validating_files",
                "fine_tuned_model": None,
                "trained_tokens": None,
                "error": None,
                "hyperparameters": {"n_epochs": 1},
                "organization_id": "org",
                "result_files": [],
                "seed": body.get("seed", 0),
                "finished_at": None,
                "request": body,
            }
            self.retrieves[jid] = 0
            return self.jobs[jid]

        @app.get("/v1/fine_tuning/jobs/{jid}")
        async def retrieve(jid: str):
            job = self.jobs[jid]
            self.retrieves[jid] += 1
            if job["status"] not in ("cancelled", "succeeded"):
                if self.retrieves[jid] >= self.steps:
                    job.update(
                        status="succeeded",
                        fine_tuned_model=f"ft:{job['model']}:kb::{jid}",
                        trained_tokens=1234,
                    )
                else:
                    job["status"] = "running"
            return job

        @app.get("/v1/fine_tuning/jobs/{jid}/events")
        async def events(jid: str, limit: int = 20):
            n = self.retrieves[jid]
            data = [
                {
                    "id": f"ev-{jid}-{i}",
                    "object": "fine_tuning.job.event",
                    "created_at": i,
                    "level": "info",
                    "message": f"Step {i}/{self.steps}",
                    "data": {"step": i, "train_loss": 1.0 / i},
                    "type": "metrics",
                }
                for i in range(1, n + 1)
            ]
            return {"object": "list", "data": data[::-1][:limit], "has_more": False}

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            return {
                "id": "chat-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"answer from {body['model']}"},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }

        @app.post("/v1/fine_tuning/jobs/{jid}/cancel")
        async def cancel(jid: str):
            self.jobs[jid]["status"] = "cancelled"
            return self.jobs[jid]

        return app


@pytest.fixture
def fake_openai():
    import uvicorn

    fake = FakeFineTuning()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    fake.url = f"http://127.0.0.1:{port}/v1"
    yield fake
    server.should_exit = True
    thread.join(timeout=10)


def _openai_settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        generators=[
            GeneratorSpec(name="smollm2", model="smollm2"),
            GeneratorSpec(
                name="remote",
                backend="openai",
                model="gpt-4o-mini",
                base_url=url,
                api_key="sk-test",
            ),
        ],
    )


def test_openai_backend_trains_remotely_and_registers_the_remote_model(tmp_path, fake_openai):
    settings = _openai_settings(tmp_path, fake_openai.url)
    data = _write_dataset(tmp_path / "ds", train=10, validation=2)
    live = GeneratorRegistry(settings)
    models = ModelRegistry(settings, live)
    jobs = JobManager(settings.jobs_dir)
    spec = FineTuneSpec(
        train_file=str(data / "train.jsonl"),
        validation_file=str(data / "validation.jsonl"),
        backend="openai",
        base_model="gpt-4o-mini-2024-07-18",
        generator="remote",
        name="remote-ft",
        epochs=2,
        poll_interval=0.05,
    )
    record = jobs.wait(submit_finetune(jobs, spec, settings, models).id, timeout=60)
    assert record.state == "succeeded", record.error

    (remote_job,) = fake_openai.jobs.values()
    assert remote_job["request"]["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    uploaded = fake_openai.files[remote_job["training_file"]].decode().splitlines()
    assert len(uploaded) == 10 and set(json.loads(uploaded[0])) == {"messages"}
    assert record.result["remote_model"] == f"ft:gpt-4o-mini-2024-07-18:kb::{remote_job['id']}"
    assert any(e["message"] == "Step 2/3" for e in record.events)

    registered = live.spec("remote-ft")
    assert (registered.backend, registered.kind) == ("openai", "finetuned")
    assert registered.model == record.result["remote_model"]
    assert registered.base_url == fake_openai.url and registered.api_key == "sk-test"
    reply = live.get("remote-ft").generate([{"role": "user", "content": "hi"}])
    assert reply.text == f"answer from {registered.model}"
    # a restart registers it again from models/remote-ft/model.json
    fresh = GeneratorRegistry(settings)
    assert ModelRegistry(settings).load_into(fresh) == ["remote-ft"]
    assert fresh.spec("remote-ft").model == registered.model


def test_openai_job_cancelled_from_another_process_cancels_the_remote_job(tmp_path, fake_openai):
    fake_openai.steps = 10_000  # never finishes by itself
    settings = _openai_settings(tmp_path, fake_openai.url)
    data = _write_dataset(tmp_path / "ds", train=10, validation=0)
    models = ModelRegistry(settings)
    jobs = JobManager(settings.jobs_dir)
    spec = FineTuneSpec(
        train_file=str(data / "train.jsonl"),
        backend="openai",
        base_model="gpt-4o-mini",
        generator="remote",
        poll_interval=0.05,
    )
    job_id = submit_finetune(jobs, spec, settings, models).id
    deadline = time.monotonic() + 30
    while not fake_openai.jobs:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the CLI (`kb finetune cancel ID`) runs in another process: it has no JobManager of the job
    request_cancel(settings.jobs_dir, job_id)
    record = jobs.wait(job_id, timeout=30)
    assert record.state == "cancelled"
    assert [j["status"] for j in fake_openai.jobs.values()] == ["cancelled"]
    assert models.list() == []


def test_openai_backend_unknown_generator_lists_the_configured_ones(tmp_path):
    settings = _openai_settings(tmp_path, "http://127.0.0.1:9/v1")
    data = _write_dataset(tmp_path / "ds", train=4, validation=0)
    spec = FineTuneSpec(
        train_file=str(data / "train.jsonl"),
        backend="openai",
        base_model="gpt-4o-mini",
        generator="nope",
    )
    with pytest.raises(Exception, match="configured: remote"):
        submit_finetune(JobManager(settings.jobs_dir), spec, settings, ModelRegistry(settings))


# -- embedding fine-tuning -------------------------------------------------------------------

TOPICS = {
    "tea": "Zorblax tea is brewed from purple moss and steeped for seven minutes at 81 degrees.",
    "bike": "The Veltrani bicycle has square wheels and was invented in 1893 by Ada Prunk.",
    "fest": "The Glimmerfen lantern festival floats kelp lanterns on the harbour until dawn.",
    "heron": "Pemberton's clockwork heron is a brass automaton that catches paper fish.",
    "ice": "Frostmere ice caves glow blue because of luminous algae trapped in the walls.",
    "clock": "The Ondrel tower clock runs backwards every leap year by municipal decree.",
}
QUERIES = {
    "tea": ["how long is zorblax tea steeped", "what is zorblax tea made from"],
    "bike": ["who invented the square wheeled bicycle", "when was the veltrani bicycle made"],
    "fest": ["what are glimmerfen lanterns made of", "when do the harbour lanterns float"],
    "heron": ["what does the clockwork heron catch", "who built the brass heron automaton"],
    "ice": ["why do frostmere caves glow", "what lives in the ice cave walls"],
    "clock": ["which clock runs backwards", "what happens to the ondrel clock in leap years"],
}


def _tiny_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for key, text in TOPICS.items():
            f.write(json.dumps({"_id": key, "title": key.title(), "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f, (folder / "qrels" / "train.tsv").open("w") as q:
        q.write("query-id\tcorpus-id\tscore\n")
        for key, texts in QUERIES.items():
            for i, text in enumerate(texts):
                f.write(json.dumps({"_id": f"{key}{i}", "text": text}) + "\n")
                q.write(f"{key}{i}\t{key}\t1\n")
    return folder


def test_embedding_finetune_reindexes_the_collection(tmp_path):
    from kb.eval.beir import beir_documents, load_beir
    from kb.finetune.embeddings import JOB_KIND, EmbeddingFineTuneSpec, embeddings_job
    from kb.service import KnowledgeBase

    beir = _tiny_beir(tmp_path / "beir")
    # queries through torch: an ONNX export per model would only add time here
    settings = Settings(data_dir=tmp_path / "data", embed_query_runtime="torch")
    kb = KnowledgeBase(settings)
    kb.ingest_documents(beir_documents(load_beir(beir, "train").corpus), collection="tiny")
    before = kb.collection("tiny").info()
    assert before["embedder"] == "minilm"

    models = ModelRegistry(settings)
    jobs = JobManager(settings.jobs_dir)
    spec = EmbeddingFineTuneSpec(
        collection="tiny", beir=str(beir), batch_size=6, hard_negatives=1, out="tiny-emb"
    )
    record = jobs.wait(
        jobs.submit(JOB_KIND, spec.to_dict(), embeddings_job(kb, spec, models)).id, 120
    )
    assert record.state == "succeeded", record.error
    assert record.result["reindexed"] and record.result["metrics"]["pairs"] == 12

    after = kb.collection("tiny").info()
    stored = models.get("tiny-emb")
    assert stored.kind == "embedding" and Path(stored.path).is_dir()
    assert (
        after["embedder"]
        == stored.embedder_name
        == f"st:{settings.models_dir / 'embeddings' / 'tiny-emb'}"
    )
    assert after["generation"] == before["generation"] + 1
    assert after["chunks"] == before["chunks"]
    hits = kb.search("how long is zorblax tea steeped", collection="tiny", k=3, method="dense")
    assert hits[0].source == "tea"
    # a model a collection searches with cannot be deleted from under it
    with pytest.raises(Conflict, match="tiny"):
        models.delete("tiny-emb")
    # a fresh process with the default settings (queries through ONNX Runtime) uses it too
    fresh = KnowledgeBase(Settings(data_dir=settings.data_dir))
    hits = fresh.search("which clock runs backwards", collection="tiny", k=1)
    assert hits[0].source == "clock"


def test_cli_runs_lists_and_deletes(tmp_path, fake_openai, monkeypatch):
    from typer.testing import CliRunner

    from kb.cli.finetune import finetune_app
    from kb.cli.models import models_app

    fake_openai.steps = 1
    generators = [
        {"name": "smollm2", "model": "smollm2"},
        {
            "name": "remote",
            "backend": "openai",
            "model": "gpt-4o-mini",
            "base_url": fake_openai.url,
            "api_key": "sk-test",
        },
    ]
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KB_GENERATORS", json.dumps(generators))
    data = _write_dataset(tmp_path / "ds", train=6, validation=2)
    runner = CliRunner()
    args = ["run", str(data), "--backend", "openai", "--base-model", "gpt-4o-mini"]
    ran = runner.invoke(
        finetune_app, [*args, "--generator", "remote", "--name", "cli-ft", "--json"]
    )
    assert ran.exit_code == 0, ran.output
    job = json.loads(ran.stdout.strip().splitlines()[-1])
    assert job["state"] == "succeeded" and job["result"]["model"] == "cli-ft"

    listed = json.loads(runner.invoke(finetune_app, ["jobs", "--json"]).stdout)
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    status = json.loads(runner.invoke(finetune_app, ["status", job["id"], "--json"]).stdout)
    assert status["result"]["remote_model"].startswith("ft:gpt-4o-mini")
    late = runner.invoke(finetune_app, ["cancel", job["id"]])
    assert late.exit_code == 1 and "already succeeded" in " ".join(late.output.split())

    models = json.loads(runner.invoke(models_app, ["list", "--json"]).stdout)
    assert [m["name"] for m in models["finetuned"]] == ["cli-ft"]
    assert all("api_key" not in g for g in models["generators"])
    assert runner.invoke(models_app, ["delete", "cli-ft"]).exit_code == 0
    unknown = runner.invoke(models_app, ["delete", "cli-ft"])
    assert unknown.exit_code == 1 and "no fine-tuned model 'cli-ft'" in " ".join(
        unknown.output.split()
    )
    bad = runner.invoke(finetune_app, ["run", str(tmp_path / "missing")])
    assert bad.exit_code == 1 and "finetune prepare" in " ".join(bad.output.split())
    # the options come from the run spec: an out-of-range value is refused before any job
    # starts, in the words the HTTP API uses; a removed option is unknown
    rank = runner.invoke(finetune_app, ["run", str(data), "--r", "0"])
    assert rank.exit_code == 1 and "--r: Input should be greater than or equal to 1 (got 0)" in (
        " ".join(rank.output.split())
    )
    gone = runner.invoke(finetune_app, ["run", str(data), "--token-dropout", "0.2"])
    assert gone.exit_code == 2 and "No such option" in gone.output
