"""Shared fixtures: a real uvicorn server over a small ingested corpus, one per test session."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from kb.settings import GeneratorSpec, Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# each fresh data folder would export MiniLM to ONNX for its queries (seconds each); the session
# server and tests/test_embedders_onnx.py run the ONNX query path, the rest embed through torch
os.environ.setdefault("KB_EMBED_QUERY_RUNTIME", "torch")

#: a few short files on made-up topics, so an answer can only come from the right one
CORPUS = {
    "tea.md": "# Zorblax tea\n\nZorblax tea is brewed from the purple moss of Mount Quell. "
    "It must steep for exactly seven minutes at 81 degrees, and it tastes of burnt cinnamon.\n",
    "bicycle.txt": "The Veltrani bicycle has square wheels. It was invented in 1893 by Ada "
    "Prunk in the town of Oslibar, who rode it across the salt flats of Tembry.\n",
    "festival.md": "# Glimmerfen lantern festival\n\nThe Glimmerfen lantern festival is held "
    "every year on the thirteenth of Brumaire in Quellport. Its lanterns are folded from dried "
    "kelp and float on the harbour until dawn.\n",
    "heron.txt": "Pemberton's clockwork heron is a brass automaton built by the engineer Odile "
    "Pemberton. It winds itself by standing in flowing water and can catch paper fish.\n",
}

TEST_MAX_NEW_TOKENS = 32

#: the shared data sets (scifact, newsgroups, sqlite-docs) sit beside the checkout, not in it
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _missing(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (SHARED_DATA / name).is_dir()]


def _reason(missing: list[str]) -> str:
    folders = ", ".join(f"../shared/data/{name}" for name in missing)
    return f"needs {folders}, which this checkout lacks (the shared data sets are not in git)"


def needs_shared_data(*names: str) -> pytest.MarkDecorator:
    """A mark that skips a test, with the reason, where a shared data set is absent."""
    missing = _missing(names)
    return pytest.mark.skipif(bool(missing), reason=_reason(missing))


def require_shared_data(*names: str) -> None:
    """Skip the calling test or fixture, with the reason, where a shared data set is absent."""
    missing = _missing(names)
    if missing:
        pytest.skip(_reason(missing))


@dataclass
class LiveServer:
    url: str
    settings: Settings
    app: object
    corpus: Path | None = None

    @property
    def services(self):
        return self.app.state.services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(settings: Settings, *, warm: bool = True) -> Iterator[LiveServer]:
    """A real uvicorn serving create_app(settings) on a free port, in a background thread."""
    import uvicorn

    from api.app import create_app

    app = create_app(settings, warm=warm)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in CORPUS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One cache of converted model weights for every data folder of the session (converting
    the bundled GGUF takes half a minute); KB_TEST_CACHE_DIR keeps it across sessions."""
    kept = os.environ.get("KB_TEST_CACHE_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("kb-cache")


def data_dir_with_cache(folder: Path, cache: Path) -> Path:
    """A fresh data folder whose cache/ is the shared `cache`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cache").symlink_to(cache, target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_cache: Path) -> Iterator[LiveServer]:
    """One server for the session: the bundled SmolLM2, the corpus ingested into 'default',
    server-side ingest allowed under `<tmp>/roots`, small upload limits, CORS for one origin."""
    base = tmp_path_factory.mktemp("kb-server")
    roots = base / "roots"
    corpus = write_corpus(roots / "corpus")
    settings = Settings(
        data_dir=data_dir_with_cache(base / "data", model_cache),
        generators=[
            GeneratorSpec(
                name="smollm2",
                backend="local",
                model="smollm2",
                max_new_tokens=TEST_MAX_NEW_TOKENS,
            )
        ],
        default_generator="smollm2",
        ingest_roots=[roots],
        cors_origins=["http://allowed.example"],
        max_upload_bytes=64 * 1024,
        max_upload_files=3,
        embed_query_runtime="onnx",
    )
    with live_server(settings) as live:
        live.corpus = corpus
        live.services.kb.ingest_path(corpus, collection="default")
        yield live
