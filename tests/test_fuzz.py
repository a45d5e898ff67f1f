"""Fuzzing: schemathesis drives every operation of the service's own OpenAPI schema against a
real uvicorn server; no request may get a 5xx and every response must match the schema."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kb.settings import GeneratorSpec, Settings
from tests.conftest import LiveServer, data_dir_with_cache, live_server, write_corpus

schemathesis = pytest.importorskip("schemathesis")

#: operations that start long background work (training, evaluation, synthetic datasets)
EXCLUDED = {
    ("POST", "/finetune/jobs"),
    ("POST", "/finetune/embeddings"),
    ("POST", "/finetune/datasets/prepare"),
    ("POST", "/eval"),
}
#: generation answers are kept to a few tokens, whatever a fuzzed request asks for
TOKEN_FIELDS = {"max_new_tokens", "max_tokens", "max_completion_tokens"}
MAX_TOKENS = 4
POSITIVE_EXAMPLES = 12
NEGATIVE_EXAMPLES = 6
GENERATING = {"/query", "/v1/chat/completions"}  # each case runs the model: fewer of them


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, model_cache: Path) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("kb-fuzz")
    roots = base / "roots"
    corpus = write_corpus(roots / "corpus")
    settings = Settings(
        data_dir=data_dir_with_cache(base / "data", model_cache),
        generators=[GeneratorSpec(name="smollm2", model="smollm2", max_new_tokens=MAX_TOKENS)],
        ingest_roots=[roots],
        max_upload_bytes=64 * 1024,
        max_upload_files=3,
    )
    with live_server(settings, warm=False) as live:
        live.corpus = corpus
        live.services.kb.ingest_path(corpus, collection="default")
        yield live


def bounded(schema: dict) -> dict:
    """The schema with token budgets capped, so fuzzed generation stays cheap."""

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in TOKEN_FIELDS and isinstance(value, dict):
                    for option in [value, *value.get("anyOf", [])]:
                        if option.get("type") == "integer":
                            option["maximum"] = MAX_TOKENS
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


@pytest.mark.slow
def test_fuzz_every_operation(fuzz_server: LiveServer) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    raw = httpx.get(fuzz_server.url + "/openapi.json", timeout=60).json()
    schema = schemathesis.openapi.from_dict(bounded(raw))
    checks = [not_a_server_error, response_schema_conformance]
    failures: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}

    def fuzz(operation, label: str, mode, examples: int) -> None:
        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # record failures; no shrinking
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case) -> None:
            counts[label] = counts.get(label, 0) + 1
            try:
                response = case.call(base_url=fuzz_server.url, timeout=120)
                statuses[response.status_code // 100] = (
                    statuses.get(response.status_code // 100, 0) + 1
                )
                case.validate_response(response, checks=checks)
            except Exception as exc:  # collected, so one finding does not hide the others
                found = failures.setdefault(label, [])
                if len(found) < 3:
                    found.append(f"{type(exc).__name__}: {str(exc)[:1500]}")

        # Unsatisfiable: no invalid request exists, e.g. for an operation without input
        with contextlib.suppress(Unsatisfiable):
            run()

    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        if key in EXCLUDED:
            continue
        scale = 2 if operation.path in GENERATING else 1
        label = f"{key[0]} {key[1]}"
        fuzz(operation, label, GenerationMode.POSITIVE, POSITIVE_EXAMPLES // scale)
        fuzz(operation, label, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES // scale)

    total = sum(counts.values())
    classes = ", ".join(f"{n} {c}xx" for c, n in sorted(statuses.items()))
    print(f"\nfuzz: {total} cases over {len(counts)} operations ({classes})")
    assert total >= 5 * len(counts)
    assert not failures, "\n\n".join(f"{op}:\n" + "\n".join(f) for op, f in failures.items())
