"""Acceptance tests of the HTTP API against a real uvicorn server, the real embedder and the
bundled SmolLM2 (answers capped at a few tokens to stay quick)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import NotFoundError, OpenAI

from kb.answering import MODES
from kb.settings import ApiKeySpec, GeneratorSpec, Settings
from tests.conftest import (
    CORPUS,
    TEST_MAX_NEW_TOKENS,
    LiveServer,
    data_dir_with_cache,
    live_server,
)

TEA_QUESTION = "How long must Zorblax tea steep?"


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def sse_events(response: httpx.Response) -> list[tuple[str, object]]:
    """(event, data) pairs of a text/event-stream; data is parsed JSON (or '[DONE]')."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            raw = line[len("data: ") :]
            events.append((name or "message", raw if raw == "[DONE]" else json.loads(raw)))
            name = None
    return events


def wait_job(http: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


# -- answers -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_rag_answer_cites_the_right_file(http: httpx.Client) -> None:
    r = http.post("/query", json={"question": TEA_QUESTION, "mode": "rag"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "rag" and body["answer"].strip()
    assert body["not_covered"] is False
    assert body["model"]["name"] == "smollm2" and body["model"]["model_id"]
    assert body["passages"][0]["source"].endswith("tea.md")
    first = body["citations"][0]
    assert first["n"] == 1 and first["source"].endswith("tea.md") and first["snippet"]
    assert [c["n"] for c in body["citations"]] == list(range(1, len(body["citations"]) + 1))
    assert 0 < body["usage"]["completion_tokens"] <= TEST_MAX_NEW_TOKENS
    assert body["usage"]["prompt_tokens"] > 0
    assert {"retrieve", "prompt", "generate", "total"} <= set(body["timings"])


def test_question_outside_the_documents_is_not_covered(http: httpx.Client) -> None:
    r = http.post("/query", json={"question": "What is the capital city of France?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["not_covered"] is True
    assert body["usage"]["completion_tokens"] == 0  # the model was not called
    assert body["answer"] and body["citations"] == []


def test_compare_runs_every_available_mode(http: httpx.Client) -> None:
    r = http.post(
        "/query", json={"question": TEA_QUESTION, "mode": "compare", "max_new_tokens": 16}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "compare"
    assert [a["mode"] for a in body["answers"]] == ["base", "rag", "extract"]
    rag = body["answers"][1]
    assert "seven minutes" in body["answers"][2]["answer"]  # extract quotes tea.md
    assert rag["citations"][0]["source"].endswith("tea.md")
    assert body["answers"][0]["passages"] == []  # base sees no passages
    unavailable = {u["mode"]: u["reason"] for u in body["unavailable"]}
    assert set(unavailable) == {"finetuned", "rag+finetuned"}
    assert all("kb finetune run" in reason for reason in unavailable.values())


def test_stream_is_read_to_the_end(http: httpx.Client) -> None:
    request = {"question": TEA_QUESTION, "mode": "rag", "stream": True}
    with http.stream("POST", "/query", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    names = [name for name, _ in events]
    assert names[0] == "passages" and names[-1] == "done"
    assert "delta" in names and "error" not in names
    passages = events[0][1]
    assert passages["citations"][0]["source"].endswith("tea.md")
    done = events[-1][1]
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    assert streamed.strip() == done["answer"]
    assert 0 < done["timings"]["first_token"] <= done["timings"]["total"]


def test_a_client_hanging_up_frees_the_model(http: httpx.Client, server: LiveServer) -> None:
    long = {"question": "Tell me everything about the heron.", "mode": "base", "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=120) as other,
        other.stream("POST", "/query", json={**long, "max_new_tokens": 400}) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("event: delta"):
                break
        # while that answer is being generated, other requests are served
        search = http.post("/search", json={"query": "heron", "k": 1})
        assert search.status_code == 200 and search.json()["results"]
        # then hang up in the middle of the answer
    started = time.monotonic()
    r = http.post("/query", json={"question": TEA_QUESTION, "max_new_tokens": 8})
    assert r.status_code == 200
    # the abandoned 400-token answer was cancelled instead of holding the model
    assert time.monotonic() - started < 20


def test_mode_unavailable_without_a_finetuned_model(http: httpx.Client) -> None:
    r = http.post("/query", json={"question": TEA_QUESTION, "mode": "finetuned"})
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "mode_unavailable" and "kb finetune run" in error["message"]


# -- OpenAI-compatible -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=300, max_retries=0)


def test_openai_client_lists_models_and_chats(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "kb:default:rag" in ids and "kb:default:base" in ids
    completion = client.chat.completions.create(
        model="kb:default:rag",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": TEA_QUESTION},
        ],
        max_tokens=24,
    )
    content = completion.choices[0].message.content
    assert content and "Sources:" in content and "tea.md" in content
    citations = completion.model_extra["citations"]
    assert citations[0]["source"].endswith("tea.md")
    assert completion.usage.completion_tokens > 0


def test_openai_client_streams(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="kb:default:rag",
        messages=[{"role": "user", "content": TEA_QUESTION}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and "tea.md" in text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].model_extra["citations"][0]["source"].endswith("tea.md")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_unknown_model_is_404(client: OpenAI) -> None:
    for model in ("gpt-4o", "kb:nope:rag", "kb:default:finetuned:nope"):
        with pytest.raises(NotFoundError) as info:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        assert "kb:{collection}:rag" in str(info.value.message)


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "mentions"),
    [
        ("/query", {"question": "hi", "mode": "telepathy"}, 422, "mode"),
        ("/query", {"question": "   "}, 422, "question"),
        ("/query", {"question": ""}, 422, "question"),
        ("/query", {"question": "hi", "k": 0}, 422, "k"),
        ("/query", {"question": "hi", "k": 500}, 422, "k"),
        ("/query", {"question": "hi", "collection": "nope"}, 404, "nope"),
        ("/query", {"question": "hi", "model": "nope"}, 404, "nope"),
        ("/query", {"question": "hi", "colection": "x"}, 422, "colection"),
        ("/search", {"query": "tea", "k": 101}, 422, "k"),
        ("/search", {"query": ""}, 422, "query"),
        ("/search", {"query": "tea", "collection": "nope"}, 404, "nope"),
        ("/search", {"query": "tea", "method": "magic"}, 422, "method"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    http: httpx.Client, path: str, body: dict, status: int, mentions: str
) -> None:
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert mentions in error["message"] and "Traceback" not in r.text


def test_concurrent_searches_run_on_the_search_threads(server: LiveServer) -> None:
    """/search hands its work to a pool with one thread per search slot; twelve requests at once
    all get the right answer, and no more threads than slots ever exist for them."""
    slots = server.services.kb.retriever.limiter.slots
    answers: list[tuple[int, str]] = []

    def ask() -> None:
        r = httpx.post(server.url + "/search", json={"query": "square wheels", "k": 1}, timeout=120)
        answers.append((r.status_code, r.json()["results"][0]["source"]))

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 12 and len(set(answers)) == 1 and answers[0][0] == 200
    pool = [t.name for t in threading.enumerate() if t.name.startswith("kb-search")]
    assert 1 <= len(pool) <= slots, pool


def test_retrieval_only_queries_run_on_the_search_threads(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rag /query without generation is a search plus a prompt: it queues with /search on the
    search threads. One that generates, or retrieves nothing, stays on the shared pool."""
    answerer = server.services.answerer
    real, threads = answerer.answer, []

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(answerer, "answer", spy)
    url = server.url + "/query"
    rag = httpx.post(url, json={"question": "square wheels", "generate": False}, timeout=120)
    assert rag.status_code == 200, rag.text
    top = httpx.post(server.url + "/search", json={"query": "square wheels", "k": 1}, timeout=120)
    assert rag.json()["passages"][0]["source"] == top.json()["results"][0]["source"]
    base = {"question": "square wheels", "mode": "base", "generate": False}
    assert httpx.post(url, json=base, timeout=120).status_code == 200
    assert threads[0].startswith("kb-search") and not threads[1].startswith("kb-search"), threads


def test_openapi_schema_documents_the_api(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    for path in (
        "/search",
        "/query",
        "/collections/{name}/documents",
        "/jobs/{job_id}",
        "/v1/chat/completions",
    ):
        assert path in schema["paths"]
    query = schema["paths"]["/query"]["post"]
    assert "text/event-stream" in query["responses"]["200"]["content"]
    # both endpoints return a prebuilt Response; their documented body is still the model's
    ok = "application/json"
    assert query["responses"]["200"]["content"][ok]["schema"]["$ref"].endswith("AnswerOut")
    search = schema["paths"]["/search"]["post"]["responses"]["200"]["content"][ok]["schema"]
    assert search["$ref"].endswith("SearchResponse")
    assert query["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_health_and_models(http: httpx.Client) -> None:
    assert http.get("/health").json()["status"] == "ok"
    models = http.get("/models").json()
    assert models["default"] == "smollm2"
    assert models["models"][0]["kind"] == "base" and "api_key" not in models["models"][0]
    modes = {m["mode"]: m["available"] for m in models["modes"]}
    assert modes == {
        "base": True,
        "rag": True,
        "extract": True,
        "finetuned": False,
        "rag+finetuned": False,
    }


def test_cors_allows_the_configured_origin(http: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = http.options("/search", headers={"Origin": "http://allowed.example", **preflight})
    assert ok.headers.get("access-control-allow-origin") == "http://allowed.example"
    other = http.options("/search", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


# -- ingestion ---------------------------------------------------------------------------------


def test_upload_then_search_finds_it(http: httpx.Client) -> None:
    text = b"The quokka parliament of Rottnest meets every Thursday to vote on sandwich taxes."
    r = http.post(
        "/collections/uploads/documents", files=[("files", ("../../quokka notes.md", text))]
    )
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"]["files_done"] == 1 and job["progress"]["chunks_embedded"] >= 1
    assert job["result"]["added"] == 1
    hits = http.post(
        "/search", json={"query": "quokka sandwich taxes", "collection": "uploads", "k": 3}
    ).json()["results"]
    assert hits[0]["source"] == "quokka_notes.md"  # a safe name
    assert "quokka" in hits[0]["text"]

    docs = http.get("/collections/uploads/documents").json()["documents"]
    assert len(docs) == 1
    deleted = http.delete(f"/collections/uploads/documents/{docs[0]['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] == [docs[0]["id"]]
    assert http.get("/collections/uploads/documents").json()["documents"] == []
    assert http.delete("/collections/uploads/documents/nope").status_code == 404


def test_upload_reports_failed_files_and_keeps_the_rest(http: httpx.Client) -> None:
    files = [
        ("files", ("good.txt", b"The Ombral lighthouse keeper paints the lamp green on Sundays.")),
        ("files", ("empty.txt", b"   ")),
    ]
    job = wait_job(http, http.post("/collections/mixed/documents", files=files).json()["id"])
    assert job["state"] == "succeeded"
    assert job["result"]["added"] == 1 and len(job["result"]["failed"]) == 1
    assert job["progress"]["failed"] == 1
    assert any("empty.txt" in e["message"] for e in job["events"])


def test_upload_limits_are_413(http: httpx.Client, server: LiveServer) -> None:
    too_many = [("files", (f"f{i}.txt", b"x")) for i in range(4)]
    r = http.post("/collections/uploads/documents", files=too_many)
    assert r.status_code == 413 and "KB_MAX_UPLOAD_FILES" in r.json()["error"]["message"]
    too_big = [("files", ("big.txt", b"x" * (65 * 1024)))]
    r = http.post("/collections/uploads/documents", files=too_big)
    assert r.status_code == 413 and "KB_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]

    def chunked_body():  # no Content-Length: the limit must hold while the body streams in
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 1024
        yield b"\r\n--b--\r\n"

    r = http.post(
        "/collections/uploads/documents",
        content=chunked_body(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and "KB_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
    assert not list((server.settings.data_dir / "uploads" / "uploads").glob("big*"))


def test_upload_to_a_bad_collection_name_is_422(http: httpx.Client) -> None:
    r = http.post("/collections/bad%20name/documents", files=[("files", ("a.txt", b"a"))])
    assert r.status_code == 422 and "bad name" in r.json()["error"]["message"]


def test_folder_ingest_inside_the_roots(http: httpx.Client, server: LiveServer) -> None:
    r = http.post("/collections/folder/ingest", json={"path": str(server.corpus)})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"])
    assert job["state"] == "succeeded" and job["result"]["added"] == len(os.listdir(server.corpus))
    assert job["progress"]["files_total"] == job["progress"]["files_done"] == 4
    listed = http.get("/jobs", params={"kind": "ingest"}).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_folder_ingest_outside_the_roots_is_refused(
    http: httpx.Client, server: LiveServer, tmp_path
) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwords.txt").write_text("hunter2")
    link = server.corpus.parent / "escape"
    link.symlink_to(outside)
    for path in (str(outside), str(server.corpus / ".." / ".." / ".."), str(link), "/etc"):
        r = http.post("/collections/folder/ingest", json={"path": path})
        assert r.status_code == 403, (path, r.text)
        assert str(server.corpus.parent) in r.json()["error"]["message"]  # names the roots


def test_jobs_not_found_and_cancel_finished(http: httpx.Client) -> None:
    assert http.get("/jobs/nope").status_code == 404
    jobs = http.get("/jobs").json()["jobs"]
    assert jobs and all(j["events"] == [] for j in jobs)
    finished = next(j for j in jobs if j["state"] == "succeeded")
    r = http.post(f"/jobs/{finished['id']}/cancel")
    assert r.status_code == 409 and "already succeeded" in r.json()["error"]["message"]


def test_clients_see_sources_relative_to_the_folder_ingested(
    http: httpx.Client, server: LiveServer
) -> None:
    """Search results, citations and listings name a file by its path in the folder ingested;
    the server's own folders (the data folder, the ingest roots) appear nowhere."""
    hidden = str(server.settings.data_dir.parent)  # holds both
    search = http.post("/search", json={"query": "Zorblax tea", "k": 4})
    assert search.json()["results"][0]["source"] == "tea.md"
    query = http.post("/query", json={"question": TEA_QUESTION, "max_new_tokens": 4})
    assert query.json()["citations"][0]["source"] == "tea.md"
    listing = http.get("/collections/default/documents")
    # other tests of the session may have uploaded more files into the shared collection
    docs = [d for d in listing.json()["documents"] if d["source"] in CORPUS]
    assert sorted(d["source"] for d in docs) == sorted(d["origin"] for d in docs) == sorted(CORPUS)
    assert all("/" not in d["origin"] for d in listing.json()["documents"])
    for r in (search, query, listing):
        assert hidden not in r.text


def test_ingest_jobs_name_files_as_the_client_knows_them(
    http: httpx.Client, server: LiveServer
) -> None:
    hidden = str(server.settings.data_dir.parent)
    folder = server.corpus.parent / "notes"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "kiln.md").write_text("The Harrowgate kiln fires blue glass at midnight.")
    (folder / "deep" / "ember.md").write_text("Ember moths of Quellport nest in cold chimneys.")
    (folder / "blank.txt").write_text("   ")
    job = wait_job(
        http, http.post("/collections/notes/ingest", json={"path": "notes"}).json()["id"]
    )
    assert job["state"] == "succeeded" and job["params"]["path"] == "notes"
    assert job["result"]["added"] == 2
    assert [f["path"] for f in job["result"]["failed"]] == ["blank.txt"]
    assert "blank.txt" in job["result"]["failed"][0]["error"]
    memo = [("files", ("memo.txt", b"The kiln keeper's memo: order more driftwood."))]
    upload = wait_job(http, http.post("/collections/notes/documents", files=memo).json()["id"])
    assert upload["state"] == "succeeded" and upload["params"]["files"] == ["memo.txt"]
    docs = http.get("/collections/notes/documents").json()["documents"]
    assert sorted(d["source"] for d in docs) == ["deep/ember.md", "deep/kiln.md", "memo.txt"]
    listed = http.get("/jobs", params={"kind": "ingest"}).json()["jobs"]
    for record in (job, upload, *[j for j in listed if j["params"]["collection"] == "notes"]):
        assert hidden not in json.dumps(record)

    # a re-ingest still syncs by the files on disk: unchanged ones skipped, removed ones pruned
    (folder / "deep" / "kiln.md").unlink()
    body = {"path": "notes", "prune": True}
    again = wait_job(http, http.post("/collections/notes/ingest", json=body).json()["id"])
    assert again["state"] == "succeeded", again
    result = again["result"]
    assert (result["unchanged"], result["removed"], result["chunks_embedded"]) == (1, 1, 0)
    docs = http.get("/collections/notes/documents").json()["documents"]
    assert sorted(d["source"] for d in docs) == ["deep/ember.md", "memo.txt"]  # uploads stay
    assert hidden not in json.dumps(again)


def test_the_warmup_loads_the_indexes_and_the_model_before_ready(
    server: LiveServer, model_cache, tmp_path
) -> None:
    """A server started over a collection loads its index, its query encoder and the default
    model in the background: /health stays 200 and says when that is done, /ready answers 503
    until then."""
    from kb.service import KnowledgeBase

    archive = tmp_path / "default.tar.gz"
    server.services.kb.export_collection("default", archive)
    settings = Settings(
        data_dir=data_dir_with_cache(tmp_path / "data", model_cache),
        generators=[
            GeneratorSpec(name="smollm2", model="smollm2", max_new_tokens=TEST_MAX_NEW_TOKENS)
        ],
        default_generator="smollm2",
    )
    KnowledgeBase(settings).import_collection(archive)
    with live_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        deadline = time.monotonic() + 300
        while True:
            ready = http.get("/ready")
            body = ready.json()
            assert ready.status_code == (200 if body["ready"] else 503), body
            assert body["ready"] is (body["loading"] == [])
            assert http.get("/health").status_code == 200
            if body["ready"]:
                break
            assert time.monotonic() < deadline, f"still loading after 300 s: {body}"
            time.sleep(0.1)
        assert body["generator_loaded"] is True
        col = live.services.kb.collection("default")
        snapshot = col.loaded_snapshot  # no request has searched the collection: the warm-up did
        assert snapshot is not None and snapshot.generation == col.generation
        assert snapshot.dense.ntotal == col.info()["chunks"] > 0


def test_stored_finetuned_models_are_registered_whoever_builds_the_service(tmp_path) -> None:
    """The HTTP services and `Answerer.from_settings` (the CLI) both see a stored fine-tuned
    model, no router's startup hook needed; one deleted through the service leaves at once."""
    from api.app import build_services
    from kb.answering import Answerer
    from kb.models import ModelRecord, ModelRegistry

    settings = Settings(data_dir=tmp_path)
    record = ModelRecord(
        name="remote-ft", backend="openai", remote_model="ft:x", base_url="http://127.0.0.1:9/v1"
    )
    ModelRegistry(settings).register(record)
    assert Answerer.from_settings(settings).finetuned_models() == ["remote-ft"]
    services = build_services(settings)
    try:
        assert services.answerer.finetuned_models() == ["remote-ft"]
        assert services.generators.spec("remote-ft").kind == "finetuned"
        services.models.delete("remote-ft")
        assert services.answerer.finetuned_models() == []
    finally:
        services.jobs.shutdown()


# -- access control ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("kb-guarded"),
        api_keys=[
            ApiKeySpec(key="admin-key-0001"),
            ApiKeySpec(key="reader-key-0002", access="read"),
            ApiKeySpec(key="team-key-0003", collections=["team-*"]),
        ],
    )
    with live_server(settings, warm=False) as live:
        yield live


def test_api_keys_guard_every_endpoint_but_health(guarded: LiveServer) -> None:
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        # started without a warm-up: nothing to wait for, models load on first use
        assert http.get("/ready").json()["ready"] is True
        r = http.get("/collections")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/models").status_code == 401
        bad = http.get("/collections", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and "unknown API key" in bad.json()["error"]["message"]

        admin = {"Authorization": "Bearer admin-key-0001"}
        reader = {"X-API-Key": "reader-key-0002"}
        team = {"Authorization": "Bearer team-key-0003"}
        assert http.get("/collections", headers=admin).status_code == 200
        assert http.get("/collections", headers=reader).status_code == 200

        upload = [("files", ("a.txt", b"some text"))]
        r = http.post("/collections/default/documents", files=upload, headers=reader)
        assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]
        r = http.post("/collections/default/ingest", json={"path": "/tmp"}, headers=reader)
        assert r.status_code == 403
        r = http.get("/collections/default/documents", headers=team)
        assert r.status_code == 403 and "team-*" in r.json()["error"]["message"]
        r = http.post("/search", json={"query": "x", "collection": "other"}, headers=team)
        assert r.status_code == 403
        # server-side ingest is off when no roots are configured, even for an admin
        r = http.post("/collections/team-a/ingest", json={"path": "/tmp"}, headers=admin)
        assert r.status_code == 403 and "KB_INGEST_ROOTS" in r.json()["error"]["message"]
        assert http.get("/v1/models", headers=team).json()["data"] == []


# -- fine-tuned modes and the CLI --------------------------------------------------------------


def test_finetuned_modes_once_a_finetuned_model_is_registered(
    http: httpx.Client, server: LiveServer, client: OpenAI
) -> None:
    # registered the way the model registry does after a training run (here: no adapter)
    spec = GeneratorSpec(name="ft-test", kind="finetuned", model="smollm2", max_new_tokens=8)
    server.services.generators.register(spec)
    try:
        ids = [m.id for m in client.models.list()]
        assert {"kb:default:finetuned:ft-test", "kb:default:rag+finetuned:ft-test"} <= set(ids)
        r = http.post("/query", json={"question": TEA_QUESTION, "mode": "rag+finetuned"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["name"] == "ft-test" and body["model"]["kind"] == "finetuned"
        assert body["citations"][0]["source"].endswith("tea.md")
        compare = http.post(
            "/query", json={"question": TEA_QUESTION, "mode": "compare", "max_new_tokens": 4}
        ).json()
        assert [a["mode"] for a in compare["answers"]] == list(MODES)
        assert compare["unavailable"] == []
        r = http.post(
            "/query", json={"question": TEA_QUESTION, "mode": "finetuned", "model": "smollm2"}
        )
        assert r.status_code == 422 and "ft-test" in r.json()["error"]["message"]
    finally:
        server.services.generators.unregister("ft-test")


def test_cli_ask_answers_with_citations(server: LiveServer, monkeypatch) -> None:
    from typer.testing import CliRunner

    from kb.cli import app

    monkeypatch.setenv("KB_DATA_DIR", str(server.settings.data_dir))
    result = CliRunner().invoke(app, ["ask", TEA_QUESTION, "--max-new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["mode"] == "rag" and answer["citations"][0]["source"].endswith("tea.md")
