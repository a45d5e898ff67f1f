"""Bad input through the whole pipeline (CLI and HTTP upload) and access control of a server
with API keys: every endpoint guarded, read vs write, collection limits, upload limits,
server-side folders confined to the roots, no tracebacks in error bodies, CORS."""

from __future__ import annotations

import re
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.ingest_jobs import safe_filename
from kb.settings import ApiKeySpec, Settings
from tests.badfiles import make_bad_corpus, make_good_corpus
from tests.conftest import LiveServer, live_server
from tests.reliability import run_kb

MAX_FILE_BYTES = 10 * 1024 * 1024  # below the bad corpus's 100 MB text file
RSS_LIMIT = int(1.5 * 1024**3)  # the CLI ingest peaks near 0.7 GiB here
ADMIN = {"Authorization": "Bearer admin-key-0001"}
READER = {"X-API-Key": "reader-key-0002"}
TEAM = {"Authorization": "Bearer team-key-0003"}
ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def embedders() -> dict:
    return {}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, dict, dict]:
    """(folder, good facts, bad outcomes): good/ and bad/ side by side."""
    folder = tmp_path_factory.mktemp("mixed") / "docs"
    good = make_good_corpus(folder / "good")
    bad = make_bad_corpus(folder / "bad")
    return folder, good, bad


def expected(outcome: str) -> str:
    return outcome.split(":", 1)[0]


# -- bad input through the CLI -------------------------------------------------------------------


@pytest.mark.slow
def test_cli_ingest_of_bad_files_goes_on_in_bounded_memory(tmp_path, corpora, embedders) -> None:
    from kb.service import KnowledgeBase

    folder, good, bad = corpora
    data = tmp_path / "data"
    done = run_kb(
        data,
        "ingest",
        str(folder),
        "--json",
        log=tmp_path / "ingest.log",
        KB_MAX_FILE_BYTES=str(MAX_FILE_BYTES),
    )
    assert done.returncode == 0, done.output[-3000:]
    report = done.result
    failed = {Path(f["path"]).name for f in report["failed"]}
    skipped = {Path(f["path"]).name for f in report["skipped"]}
    for name, outcome in bad.items():
        base = name.split("/")[-1]
        want = {"LoaderError": failed, "UnsupportedFile": skipped}.get(expected(outcome))
        if want is not None:
            assert base in want, (name, outcome)
        else:
            assert base not in failed | skipped, (name, outcome)
    loads = sum(expected(o) == "loads" for o in bad.values())
    assert report["added"] == len(good) + loads
    assert done.max_rss_bytes < RSS_LIMIT, done.max_rss_bytes

    kb = KnowledgeBase(Settings(data_dir=data), embedders=embedders)
    for name, facts in good.items():
        hits = kb.search(facts["phrase"], k=3)
        assert Path(hits[0].source.split("#")[0]).name == name, (name, hits[0].source)
    print(
        f"\nbad input (CLI): {len(bad)} bad entries ({len(failed)} failed, {len(skipped)} "
        f"skipped, {loads} loaded), {len(good)} good files searchable, "
        f"peak RSS {done.max_rss_bytes / 2**20:.0f} MiB"
    )


# -- a server with API keys ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("kb-keys")
    roots = base / "roots"
    (roots / "docs").mkdir(parents=True)
    (roots / "docs" / "inside.txt").write_text("The Brindle observatory opens at dusk.\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "passwords.txt").write_text("The admin password is orchid-tractor-9931.\n")
    # a symlinked file and folder inside an allowed folder, both pointing outside the roots
    (roots / "docs" / "leak.txt").symlink_to(outside / "passwords.txt")
    (roots / "docs" / "leakdir").symlink_to(outside, target_is_directory=True)
    (roots / "escape").symlink_to(outside, target_is_directory=True)
    settings = Settings(
        data_dir=base / "data",
        api_keys=[
            ApiKeySpec(key="admin-key-0001"),
            ApiKeySpec(key="reader-key-0002", access="read"),
            ApiKeySpec(key="team-key-0003", collections=["team-*"]),
        ],
        ingest_roots=[roots],
        cors_origins=[ORIGIN],
        max_upload_bytes=128 * 1024 * 1024,
        max_upload_files=60,
        max_file_bytes=MAX_FILE_BYTES,
    )
    with live_server(settings, warm=False) as live:
        live.corpus = roots / "docs"
        yield live


@pytest.fixture(scope="module")
def http(guarded: LiveServer) -> Iterator[httpx.Client]:
    responses: list[httpx.Response] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        responses.append(response)

    with httpx.Client(base_url=guarded.url, timeout=300, event_hooks={"response": [keep]}) as c:
        yield c
    # no error body of this module's requests carries a traceback or a code location
    errors = [r for r in responses if r.status_code >= 400]
    assert errors
    for r in errors:
        assert "Traceback" not in r.text and not re.search(r'File "[^"]+", line \d+', r.text)
        assert r.json()["error"]["message"], r.text


def wait_job(http: httpx.Client, job_id: str, headers: dict, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def operations(http: httpx.Client) -> list[tuple[str, str]]:
    schema = http.get("/openapi.json").json()
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, ops in schema["paths"].items()
        for method in ops
    ]


def test_every_endpoint_but_the_probes_needs_a_key(http: httpx.Client) -> None:
    ops = operations(http)
    assert len(ops) >= 15
    for method, path in ops:
        for headers in ({}, {"Authorization": "Bearer admin-key-000"}, {"X-API-Key": ""}):
            r = http.request(method, path, headers=headers)
            if path in ("/health", "/ready"):  # liveness and readiness probes carry no key
                assert r.status_code in (200, 503)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)


def test_a_read_only_key_cannot_write(http: httpx.Client, guarded: LiveServer) -> None:
    upload = http.post(
        "/collections/team-a/documents",
        files=[("files", ("a.txt", b"The Vell canal freezes in March."))],
        headers=ADMIN,
    )
    assert upload.status_code == 202, upload.text
    job = wait_job(http, upload.json()["id"], ADMIN)
    doc = http.get("/collections/team-a/documents", headers=READER).json()["documents"][0]

    writes = [
        ("DELETE", f"/collections/team-a/documents/{doc['id']}", None),
        ("POST", f"/jobs/{job['id']}/cancel", None),
        ("POST", "/collections/team-a/ingest", {"path": str(guarded.corpus)}),
        ("DELETE", "/models/some-model", None),
    ]
    for method, path, body in writes:
        r = http.request(method, path, json=body, headers=READER)
        assert r.status_code == 403, (method, path, r.text)
        assert "read-only" in r.json()["error"]["message"]
    # reading still works, and nothing was deleted
    assert http.get("/collections/team-a/documents", headers=READER).json()["documents"]
    r = http.post("/search", json={"query": "canal", "collection": "team-a"}, headers=READER)
    assert r.status_code == 200 and r.json()["results"]


def test_a_collection_limited_key_stays_in_its_collections(http: httpx.Client) -> None:
    for name in ("team-b", "other"):
        r = http.post(
            f"/collections/{name}/documents",
            files=[("files", (f"{name}.txt", f"Notes of {name}: the {name} pier.".encode()))],
            headers=ADMIN,
        )
        assert r.status_code == 202
        assert wait_job(http, r.json()["id"], ADMIN)["state"] == "succeeded"

    listed = {c["name"] for c in http.get("/collections", headers=TEAM).json()["collections"]}
    assert "other" not in listed and "team-b" in listed
    assert all(j["params"]["collection"].startswith("team-") for j in jobs(http, TEAM))
    refused = [
        ("GET", "/collections/other", None, None),
        ("GET", "/collections/other/documents", None, None),
        ("POST", "/search", {"query": "pier", "collection": "other"}, None),
        ("POST", "/query", {"question": "Which pier?", "collection": "other"}, None),
        ("POST", "/collections/other/documents", None, [("files", ("b.txt", b"x"))]),
        ("DELETE", "/collections/other/documents/anything", None, None),
    ]
    for method, path, body, files in refused:
        r = http.request(method, path, json=body, files=files, headers=TEAM)
        assert r.status_code == 403, (method, path, r.text)
        assert "team-*" in r.json()["error"]["message"]
    other_job = next(j for j in jobs(http, ADMIN) if j["params"]["collection"] == "other")
    assert http.get(f"/jobs/{other_job['id']}", headers=TEAM).status_code == 403
    r = http.post(
        "/v1/chat/completions",
        json={"model": "kb:other:rag", "messages": [{"role": "user", "content": "pier?"}]},
        headers=TEAM,
    )
    assert r.status_code in (403, 404), r.text
    assert "kb:other:rag" not in {
        m["id"] for m in http.get("/v1/models", headers=TEAM).json()["data"]
    }


def jobs(http: httpx.Client, headers: dict) -> list[dict]:
    return http.get("/jobs", headers=headers).json()["jobs"]


def test_upload_limits_hold_for_a_streamed_body_and_many_files(
    http: httpx.Client, guarded: LiveServer
) -> None:
    too_many = [("files", (f"f{i}.txt", b"x")) for i in range(61)]
    r = http.post("/collections/team-a/documents", files=too_many, headers=ADMIN)
    assert r.status_code == 413 and "KB_MAX_UPLOAD_FILES" in r.text

    boundary = "kbboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: the limit must hold mid-stream
        yield head
        block = b"y" * (1 << 20)
        for _ in range(130):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    r = http.post(
        "/collections/team-a/documents",
        content=body(),
        headers={**ADMIN, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413 and "KB_MAX_UPLOAD_BYTES" in r.text
    uploads = guarded.settings.data_dir / "uploads" / "team-a"
    assert not [p.name for p in uploads.iterdir() if p.name.endswith(".part")]


def test_server_folder_ingest_is_confined_to_the_roots(
    http: httpx.Client, guarded: LiveServer
) -> None:
    roots = guarded.corpus.parent
    refused = [
        "../outside",
        "docs/../../outside",
        "../" * 12 + "etc",
        str(roots / "escape"),
        str(roots / "escape" / "passwords.txt"),
        str(roots / "docs" / "leak.txt"),
        str(roots / "docs" / "leakdir"),
        str(roots.parent / "outside"),
        "/etc/passwd",
    ]
    for path in refused:
        r = http.post("/collections/team-a/ingest", json={"path": path}, headers=ADMIN)
        assert r.status_code == 403, (path, r.text)
    for path in ("docs/\x00/x", "x" * 5000):
        r = http.post("/collections/team-a/ingest", json={"path": path}, headers=ADMIN)
        assert r.status_code in (403, 422), (path, r.text)

    # the allowed folder ingests, but its symlinks that point outside are not followed
    r = http.post("/collections/folder/ingest", json={"path": "docs"}, headers=ADMIN)
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"], ADMIN)
    assert job["state"] == "succeeded" and job["result"]["added"] == 1, job
    docs = http.get("/collections/folder/documents", headers=ADMIN).json()["documents"]
    assert [Path(d["source"]).name for d in docs] == ["inside.txt"]
    hits = http.post(
        "/search", json={"query": "admin password", "collection": "folder"}, headers=ADMIN
    ).json()["results"]
    assert all("orchid-tractor" not in h["text"] for h in hits)


def test_cors_headers_on_preflight_and_on_errors(http: httpx.Client) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = http.options("/search", headers=preflight)  # a browser sends no key on preflight
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    denied = http.get("/collections", headers={"Origin": ORIGIN})
    assert denied.status_code == 401  # the browser can read why
    assert denied.headers.get("access-control-allow-origin") == ORIGIN
    other = http.get("/collections", headers={"Origin": "http://evil.example", **ADMIN})
    assert "access-control-allow-origin" not in other.headers


# -- bad input through the HTTP upload ----------------------------------------------------------


def test_upload_of_bad_files_reports_each_and_keeps_the_good(http: httpx.Client, corpora) -> None:
    folder, good, bad = corpora
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    taken: set[str] = set()
    saved = {safe_filename(p.name, taken): p for p in paths}
    outcome = {}
    for saved_name, path in saved.items():
        rel = path.relative_to(folder)
        if rel.parts[0] == "bad":
            outcome[saved_name] = expected(bad["/".join(rel.parts[1:])])
        else:
            outcome[saved_name] = "good"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    files = [("files", (p.name, p.open("rb"))) for p in paths]
    try:
        r = http.post("/collections/uploaded/documents", files=files, headers=ADMIN)
    finally:
        for _, (_, f) in files:
            f.close()
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"], ADMIN)
    assert job["state"] == "succeeded", job
    result = job["result"]
    failed = {Path(f["path"]).name for f in result["failed"]}
    skipped = {Path(f["path"]).name for f in result["skipped"]}
    for name, want in outcome.items():
        if want == "LoaderError":
            assert name in failed, (name, saved[name])
        elif want == "UnsupportedFile":
            assert name in skipped, (name, saved[name])
        else:
            assert name not in failed | skipped, (name, saved[name])
    assert result["added"] == sum(w in ("good", "loads") for w in outcome.values())
    # each failure is also an event of the job, naming the file
    events = http.get(f"/jobs/{job['id']}", headers=ADMIN).json()["events"]
    assert len([e for e in events if e["level"] == "warning"]) == len(failed) + len(skipped)

    for name, facts in good.items():
        hits = http.post(
            "/search",
            json={"query": facts["phrase"], "collection": "uploaded", "k": 3},
            headers=ADMIN,
        ).json()["results"]
        assert Path(hits[0]["source"].split("#")[0]).name == safe_filename(name, set()), name
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert growth < 1024**3, growth
    print(
        f"\nbad input (HTTP): {len(outcome)} files uploaded, {len(failed)} failed, "
        f"{len(skipped)} skipped, {result['added']} added; peak RSS grew {growth / 2**20:.0f} MiB"
    )
