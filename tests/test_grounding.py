"""Grounded answers: the support check, the policies, extract mode, over real HTTP.

The generated answers that must be wrong in a known way (a changed port number, a citation of
a passage that was never given) come from a scripted model behind the OpenAI-compatible
backend, the same interface a remote model uses; the bundled SmolLM2 answers the rest.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from openai import OpenAI

from kb.grounding.check import remove_foreign_citations
from kb.grounding.evidence import key_tokens, missing_tokens
from kb.grounding.sentences import split_sentences
from kb.settings import GeneratorSpec, Settings
from tests.conftest import TEST_MAX_NEW_TOKENS, LiveServer, data_dir_with_cache, live_server

GUIDE = (
    "# Running the service\n\n"
    "The kb service listens on port 8000 after you run kb serve. "
    "Send a POST request to /query with a question to get an answer.\n\n"
    "# Adding documents\n\n"
    "Run kb ingest with a folder to add its documents to a collection. "
    "Files that did not change since the last run are skipped.\n"
)
BIRDS = (
    "The Veltrani heron nests on the salt flats of Tembry. It lays exactly three blue eggs "
    "every spring, and both parents guard the nest.\n"
)
PORT_QUESTION = "Which port does the kb service listen on?"
#: what the scripted model answers, chosen by the request's max_tokens
SCRIPT = {
    101: "The kb service listens on port 8080 [1].",
    102: "The kb service listens on port 8000 [1][7].",
    103: "The kb service listens on port 8000 [1]. It was written by Martians in 1990.",
    104: "It was written by Martians in 1990. "
    + " ".join(f"Martian tale number {n} goes on." for n in range(40)),
}
WRONG_PORT, FOREIGN_CITATION, ONE_MADE_UP, WANDERS_OFF = (
    {"max_new_tokens": n, "model": "scripted", "mode": "rag"} for n in SCRIPT
)


# --- units -------------------------------------------------------------------------------------


def test_sentences_keep_offsets_and_trailing_citations() -> None:
    text = "It listens on port 8000. [1] Use e.g. kb serve to start it.\n- a list item"
    spans = split_sentences(text)
    assert [s.text for s in spans] == [
        "It listens on port 8000. [1]",
        "Use e.g. kb serve to start it.",
        "- a list item",
    ]
    assert all(text[s.start : s.end] == s.text for s in spans)


def test_a_hard_wrapped_paragraph_is_not_cut_at_its_line_breaks() -> None:
    text = (
        "## Ingesting\n\n"
        "kb reads text, Markdown, reStructuredText, HTML, PDF,\n"
        "Word (.docx), CSV and JSONL files. Re-running the same command embeds only files whose\n"
        "content changed; `--prune` removes documents whose files were deleted from the folder\n"
        "Nothing else is touched.\n"
        "- a list item\n"
        "Short heading\n"
        "A paragraph under it."
    )
    spans = split_sentences(text)
    assert [" ".join(s.text.split()) for s in spans] == [
        "## Ingesting",
        "kb reads text, Markdown, reStructuredText, HTML, PDF, Word (.docx), CSV and JSONL files.",
        "Re-running the same command embeds only files whose content changed; `--prune` removes"
        " documents whose files were deleted from the folder Nothing else is touched.",
        "- a list item",
        "Short heading",
        "A paragraph under it.",
    ]
    assert all(text[s.start : s.end] == s.text for s in spans)
    # a heading is its own line whatever follows it; a numbered item starts its own; CRLF too
    for text, expected in [
        ("## Ingesting\nkb reads text and Markdown files.", 2),
        ("A long paragraph line that is certainly longer than fifty chars\n100. a step", 2),
        ("It ends here.\r\nthen a new one.", 2),
        ("A long paragraph line that is certainly longer than fifty chars,\r\nwrapped.", 1),
    ]:
        assert len(split_sentences(text)) == expected, text


def test_key_tokens_must_occur_in_the_passage() -> None:
    sentence = 'Set PRAGMA page_size to 4,096 in SQLite 3.40.1, says "the manual" by Ada Prunk [2].'
    assert key_tokens(sentence) == [
        "the manual",
        "4,096",
        "3.40.1",
        "PRAGMA",
        "page_size",
        "SQLite",
        "Ada Prunk",
    ]
    passage = "pragma page_size=4096 in sqlite 3.40.1 (the manual, Ada Prunk)"
    assert missing_tokens(sentence, passage) == []
    assert missing_tokens("It listens on port 8080.", "It listens on port 8000.") == ["8080"]
    assert missing_tokens("It listens on port 800.", "It listens on port 8000.") == ["800"]


def test_foreign_citations_are_removed_and_reported() -> None:
    assert remove_foreign_citations("Port 8000 [1][7]. See [2, 9]. Also [9].", 3) == (
        "Port 8000 [1]. See [2]. Also.",
        [7, 9],
    )
    assert remove_foreign_citations("Ranges [1-7] and [2–3].", 3) == (
        "Ranges [1, 2, 3] and [2, 3].",
        [4, 5, 6, 7],
    )


def test_citation_filter_repairs_a_stream_piece_by_piece() -> None:
    from kb.grounding.check import CitationFilter

    pieces = ["Port 8000 [", "1][", "7", "]. A [note] and [2", ", 9]. Array[i] ok [3"]
    f = CitationFilter(3)
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == "Port 8000 [1]. A [note] and [2]. Array[i] ok [3"


class WordOverlap:
    """A support scorer of its own kind: shared words / claim words (no model needed)."""

    name = "word-overlap"

    def similarity(self, claims, evidence):
        import numpy as np

        def words(t):
            return set(t.lower().split())

        return np.array(
            [[len(words(c) & words(e)) / max(len(words(c)), 1) for e in evidence] for c in claims]
        )


def _passage(n: int, text: str):
    from kb.types import Passage

    return Passage(n, f"d{n}", f"doc{n}.txt", text, 1.0, 0, len(text))


def test_check_offsets_index_the_checked_text_whatever_it_rewrites() -> None:
    from kb.grounding import SupportChecker

    passages = [
        _passage(1, "The service listens on port 8000."),
        _passage(2, "Ada Prunk built it in 1893."),
    ]
    checker = SupportChecker(WordOverlap(), threshold=0.5)
    answers = [
        "The service listens on port 8000. Ada Prunk built it in 1893 [1].",
        "[1] The service listens on port 9000 [2]. Nothing else [5].",
        "The service listens on port 8000 [1][2]. e.g. this. Ada Prunk built it in 1893.",
        "",
        "[1]",
    ]
    for answer in answers:
        report = checker.check(answer, passages, policy="flag", not_covered="Not covered.")
        for s in report.sentences:
            assert report.checked[s.start : s.end] == s.text, (answer, s)
    report = checker.check(answers[0], passages, policy="flag", not_covered="Not covered.")
    assert [s.passage for s in report.sentences] == [1, 2]  # the wrong [1] is re-cited [2]
    assert report.checked.endswith("in 1893 [2].")
    report = checker.check(answers[1], passages, policy="flag", not_covered="Not covered.")
    assert report.removed_citations == [5]
    assert "[2]" not in report.checked  # an unsupported claim keeps no citation


def test_a_sentence_may_rest_on_the_passages_it_cites_together() -> None:
    from kb.grounding import SupportChecker

    passages = [_passage(1, "The tea grows on Mount Quell."), _passage(2, "It steeps 7 minutes.")]
    checker = SupportChecker(WordOverlap(), threshold=0.4)
    joined = "The tea grows on Mount Quell and steeps 7 minutes [1][2]."
    report = checker.check(joined, passages, policy="flag", not_covered="Not covered.")
    assert report.sentences[0].supported is True and report.sentences[0].missing == []
    alone = checker.check(joined.replace(" [1][2]", ""), passages, policy="flag", not_covered="x")
    assert alone.sentences[0].supported is False  # no single passage holds both


def test_a_term_a_big_collection_never_uses_means_not_covered() -> None:
    from kb.grounding import Extractor

    passages = [_passage(1, "Virtual tables use the xBestIndex method to pick a plan.")]
    extractor = Extractor(WordOverlap(), min_score=0.0)
    known = {"virtual": 40, "tabl": 90, "use": 900, "distanc": 5, "default": 300}

    def doc_freq(rows):
        return lambda terms: (rows, {t: known.get(t, 0) for t in terms})

    question = "Which distance do vec0 virtual tables use by default?"
    big = extractor.answer(question, passages, doc_freq(12_000))
    assert big.unknown == ["vec0"] and big.covered is False
    small = extractor.answer(question, passages, doc_freq(75))  # small: its vocabulary is thin
    assert small.unknown == [] and small.covered is True
    # a word of ordinary language the collection never uses is a paraphrase, not a subject
    reads = Extractor(WordOverlap(), min_score=0.0, ordinary=str.isalpha)
    paraphrase = "Which metric do virtual tables use by default?"
    assert extractor.answer(paraphrase, passages, doc_freq(12_000)).unknown == ["metric"]
    ordinary = reads.answer(paraphrase, passages, doc_freq(12_000))
    assert ordinary.unknown == [] and ordinary.covered is True
    assert reads.answer(question, passages, doc_freq(12_000)).unknown == ["vec0"]


def test_a_misspelt_word_reads_as_the_word_it_meant() -> None:
    import numpy as np

    from kb.grounding import Extractor
    from kb.store.bm25 import BM25Index

    texts = [
        "The VACUUM command rebuilds the database file into a minimal amount of disk space.",
        "Virtual tables use the xBestIndex method to pick a plan.",
        "A recursive common table expression walks a tree of unknown depth.",
    ]
    index = BM25Index.build(np.arange(len(texts)), texts)
    assert index.respelled("vaccum") == "vacuum"  # two letters swapped
    assert index.respelled("vacum") == "vacuum"  # one dropped
    assert index.respelled("vacuum") is None  # known
    assert index.respelled("vec0") is None  # too short to guess
    assert index.respelled("replication") is None  # nothing one edit away
    assert index.respelled("hvacuum") is None  # the first letter is never the typo
    formats = BM25Index.build(np.arange(1), ["json text read by the json functions"])
    assert formats.respelled("jsonb") is None  # a name one letter past a short word, no typo
    numbers = BM25Index.build(np.arange(2), ["bug 15423 was fixed", "page size 4096 bytes"])
    assert numbers.respelled("15424") is None  # another number, not a typo of one
    assert numbers.respelled("40960") is None

    passages = [_passage(1, texts[0])]
    extractor = Extractor(WordOverlap(), min_score=0.0)
    question = "What does the vaccum command do to the database file?"
    # as big as a collection whose vocabulary can veto a question
    doc_freq = lambda terms: (12_000, index.document_frequencies(terms))  # noqa: E731
    plain = extractor.answer(question, passages, doc_freq)
    assert plain.unknown == ["vaccum"] and plain.covered is False
    fixed = extractor.answer(question, passages, doc_freq, lambda t, w: index.respelled(t))
    assert fixed.unknown == [] and fixed.covered is True and "VACUUM" in fixed.text


# --- a service with a scripted model beside the bundled one ------------------------------------


def _scripted_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = SCRIPT.get(body.get("max_tokens"), "I do not know.")
        usage = {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}
        base = {"id": "s1", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        from fastapi.responses import StreamingResponse

        def events():
            for i, word in enumerate(text.split(" ")):
                delta = {"content": word if i == 0 else " " + word}
                chunk = {**base, "object": "chat.completion.chunk"}
                chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
                yield f"data: {json.dumps(chunk)}\n\n"
            end = {**base, "object": "chat.completion.chunk"}
            end["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
            yield f"data: {json.dumps(end)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def scripted_url() -> Iterator[str]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_scripted_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the scripted model's server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def grounded(tmp_path_factory, model_cache: Path, scripted_url: str) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("kb-grounded")
    corpus = base / "corpus"
    corpus.mkdir()
    (corpus / "guide.txt").write_text(GUIDE, encoding="utf-8")
    (corpus / "birds.txt").write_text(BIRDS, encoding="utf-8")
    settings = Settings(
        data_dir=data_dir_with_cache(base / "data", model_cache),
        generators=[
            GeneratorSpec(name="smollm2", model="smollm2", max_new_tokens=TEST_MAX_NEW_TOKENS),
            GeneratorSpec(
                name="scripted",
                backend="openai",
                model="scripted",
                base_url=scripted_url,
                api_key="unused",
            ),
        ],
        default_generator="smollm2",
    )
    with live_server(settings, warm=False) as live:
        live.corpus = corpus
        live.services.kb.ingest_path(corpus, collection="default")
        yield live


@pytest.fixture(scope="module")
def http(grounded: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=grounded.url, timeout=300) as client:
        yield client


def ask(http: httpx.Client, question: str, **body) -> dict:
    r = http.post("/query", json={"question": question, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_canary_wrong_port_is_flagged(http: httpx.Client) -> None:
    out = ask(http, PORT_QUESTION, **WRONG_PORT, support="flag")
    assert out["grounded"] is True
    assert "8080" in out["answer"]  # flag keeps the text ...
    (claim,) = [s for s in out["support"]["sentences"] if s["claim"]]
    assert claim["supported"] is False  # ... and marks the sentence
    assert claim["missing"] == ["8080"]
    assert out["support"]["action"] == "flagged"
    assert out["support"]["supported_share"] == 0.0


def test_canary_wrong_port_falls_back_to_the_extractive_answer(
    http: httpx.Client, grounded: LiveServer
) -> None:
    out = ask(http, PORT_QUESTION, **WRONG_PORT, support="fallback")
    assert "8080" not in out["answer"]
    assert "port 8000" in out["answer"]
    assert out["support"]["action"] == "fallback"
    assert "8080" in out["support"]["generated"]
    assert out["finish_reason"] == "fallback"
    assert out["quotes"], out
    text = (grounded.corpus / "guide.txt").read_text(encoding="utf-8")
    for quote in out["quotes"]:
        assert text[quote["start"] : quote["end"]] == quote["text"]
        assert quote["source"].endswith("guide.txt")
    assert any(c["cited"] for c in out["citations"])


def test_fallback_stops_the_model_at_its_first_refuted_sentence(http: httpx.Client) -> None:
    out = ask(http, PORT_QUESTION, **WANDERS_OFF, support="fallback")
    assert out["support"]["action"] == "fallback"
    assert "port 8000" in out["answer"]
    # the model was stopped when its second sentence began: nothing of the tale was read
    generated = out["support"]["generated"]
    assert generated.startswith("It was written by Martians in 1990.") and "tale" not in generated
    out = ask(http, PORT_QUESTION, **WANDERS_OFF, support="flag")
    assert "Martian tale number 39" in out["answer"]  # other policies read the whole answer


def test_refuted_sentences_are_never_supported_by_the_full_check() -> None:
    from kb.grounding.check import SupportChecker
    from kb.types import Passage

    passages = [Passage(1, "guide", "guide.txt", GUIDE, 1.0, 0, len(GUIDE))]

    class Perfect:  # the best a scorer can say of any pair
        name = "perfect"

        def similarity(self, claims, evidence):
            import numpy as np

            return np.ones((len(claims), len(evidence)), dtype=np.float32)

    nc = "The documents do not cover this question."
    sentences = [
        "It listens on port 8080.",
        "Martians wrote it.",
        "Bananas ripen slowly in cold kitchens.",
        "The kb service listens on port 8000 [1].",
        "It serves answers.",
        "Send a request to get kb documents running.",
    ]
    for threshold in (0.6, 0.8, 0.95):
        checker = SupportChecker(Perfect(), threshold)
        for sentence in sentences:
            report = checker.check(sentence, passages, policy="flag", not_covered=nc)
            if checker.refuted(sentence, passages, nc):  # refuted: unsupported even so
                assert not any(c.supported for c in report.claims), (threshold, sentence)
    checker = SupportChecker(Perfect(), threshold=0.6)
    assert checker.refuted("It listens on port 8080.", passages, nc)  # a number not there
    assert checker.refuted("Martians wrote it.", passages, nc)  # a name not there
    assert checker.refuted("Bananas ripen slowly in cold kitchens.", passages, nc)  # no terms
    assert not checker.refuted("The kb service listens on port 8000 [1].", passages, nc)
    assert not checker.refuted("It serves answers.", passages, nc)  # the scorer must decide
    assert not checker.refuted(nc, passages, nc)


def test_drop_keeps_only_supported_sentences(http: httpx.Client) -> None:
    out = ask(http, PORT_QUESTION, **ONE_MADE_UP, support="drop")
    assert "8000" in out["answer"] and "Martians" not in out["answer"]
    assert out["support"]["action"] == "dropped"
    flags = [s["supported"] for s in out["support"]["sentences"] if s["claim"]]
    assert flags == [True, False]


def test_citation_to_a_passage_not_given_never_reaches_the_response(http: httpx.Client) -> None:
    for support in ("flag", "drop", "fallback"):
        out = ask(http, PORT_QUESTION, **FOREIGN_CITATION, support=support)
        assert "[7]" not in out["answer"]
        assert out["support"]["removed_citations"] == [7]
        assert all(c["n"] <= len(out["passages"]) for c in out["citations"])
        assert out["support"]["action"] == "kept"


def test_stream_under_fallback_sends_no_unsupported_text(http: httpx.Client) -> None:
    body = {"question": PORT_QUESTION, **WRONG_PORT, "stream": True}
    deltas, done = [], None
    with http.stream("POST", "/query", json={**body, "support": "fallback"}) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "delta":
                    deltas.append(data["text"])
                elif event == "done":
                    done = data
    assert done is not None
    assert "".join(deltas) == done["answer"]
    assert not any("8080" in d for d in deltas)
    assert done["support"]["action"] == "fallback"


def test_openai_client_gets_the_checked_answer(grounded: LiveServer) -> None:
    client = OpenAI(base_url=f"{grounded.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="kb:default:rag:scripted",
        messages=[{"role": "user", "content": PORT_QUESTION}],
        max_tokens=101,
        extra_body={"support": "fallback"},
    )
    content = completion.choices[0].message.content
    assert "8080" not in content and "8000" in content
    kb = completion.model_extra["kb"]
    assert kb["support"]["action"] == "fallback" and kb["grounded"] is True
    stream = client.chat.completions.create(
        model="kb:default:rag:scripted",
        messages=[{"role": "user", "content": PORT_QUESTION}],
        max_tokens=101,
        extra_body={"support": "fallback"},
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "8080" not in streamed and "8000" in streamed
    ids = [m.id for m in client.models.list()]
    assert "kb:default:extract" in ids


def test_extract_quotes_the_passage_with_offsets(http: httpx.Client, grounded: LiveServer) -> None:
    out = ask(http, "How many eggs does the Veltrani heron lay?", mode="extract")
    assert out["grounded"] is True and out["not_covered"] is False
    assert "three blue eggs" in out["answer"]
    assert out["model"]["kind"] == "extract" and out["usage"]["completion_tokens"] == 0
    text = (grounded.corpus / "birds.txt").read_text(encoding="utf-8")
    for quote in out["quotes"]:
        assert text[quote["start"] : quote["end"]] == quote["text"]
        assert f"[{quote['passage']}]" in out["answer"]
    assert out["citations"][out["quotes"][0]["passage"] - 1]["cited"] is True


def test_questions_the_documents_do_not_cover(http: httpx.Client) -> None:
    for mode in ("extract", "rag"):
        out = ask(http, "How do I bake sourdough bread at home?", mode=mode)
        assert out["not_covered"] is True, out
        assert out["answer"] == "The documents do not cover this question."


def test_ungrounded_modes_are_labelled(http: httpx.Client) -> None:
    out = ask(http, PORT_QUESTION, mode="base", model="scripted")
    assert out["grounded"] is False and out["support"] is None


def test_real_model_answers_go_out_only_when_supported(http: httpx.Client) -> None:
    """Whatever the bundled model writes, drop returns its supported sentences or the
    not-covered sentence, and fallback its checked text or quotes from the passages."""
    not_covered = "The documents do not cover this question."
    for question in (PORT_QUESTION, "How do I add documents to a collection?"):
        for policy in ("drop", "fallback"):
            out = ask(http, question, mode="rag", support=policy)
            report = out["support"]
            assert report is not None, out
            supported = [s["text"] for s in report["sentences"] if s["claim"] and s["supported"]]
            if report["action"] == "kept":
                assert out["answer"] == report["checked"] and report["supported_share"] == 1.0
            elif report["action"] == "dropped":
                assert out["answer"] == " ".join(supported)
            elif report["action"] == "fallback":
                assert out["answer"] == " ".join(
                    f"{q['text']} [{q['passage']}]" for q in out["quotes"]
                )
            else:
                assert report["action"] == "not_covered" and out["answer"] == not_covered
            assert (
                report["action"]
                in {
                    "drop": {"kept", "dropped", "not_covered"},
                    "fallback": {"kept", "fallback", "not_covered"},
                }[policy]
            )


def test_flag_stream_never_sends_a_citation_of_a_passage_not_given(http: httpx.Client) -> None:
    body = {"question": PORT_QUESTION, **FOREIGN_CITATION, "stream": True, "support": "flag"}
    deltas = []
    with http.stream("POST", "/query", json=body) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "delta":
                deltas.append(json.loads(line[6:])["text"])
    streamed = "".join(deltas)
    assert "8000" in streamed and "[7]" not in streamed and "[1]" in streamed


def test_compare_shows_extract_beside_the_generated_modes(http: httpx.Client) -> None:
    out = ask(http, PORT_QUESTION, mode="compare", model="scripted", max_new_tokens=101)
    modes = [a["mode"] for a in out["answers"]]
    assert "extract" in modes and "rag" in modes and "base" in modes
    by_mode = {a["mode"]: a for a in out["answers"]}
    assert "8000" in by_mode["extract"]["answer"]
    assert by_mode["base"]["grounded"] is False and by_mode["base"]["support"] is None
    assert by_mode["rag"]["support"]["action"] == "fallback"  # the scripted wrong port
    assert "8080" not in by_mode["rag"]["answer"]


def test_unknown_policy_names_the_choices(http: httpx.Client) -> None:
    r = http.post("/query", json={"question": PORT_QUESTION, "support": "ignore"})
    assert r.status_code == 422
    assert "flag" in r.text and "fallback" in r.text


# --- scorers by path -----------------------------------------------------------------------------


def _cross_encoder(folder: Path, labels: list[str]) -> str:
    """A cross-encoder on the bundled MiniLM weights with an untrained head: real loading and
    scoring code, meaningless scores (no such model installs here)."""
    from sentence_transformers import CrossEncoder

    from kb.embedders.sentence_transformers import bundled_minilm_path

    model = CrossEncoder(bundled_minilm_path(), num_labels=len(labels), device="cpu")
    model.model.config.id2label = dict(enumerate(labels))
    model.model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.save(str(folder))
    return str(folder)


def test_nli_and_cross_encoder_scorers_load_by_path(tmp_path: Path) -> None:
    from kb.errors import InvalidInput
    from kb.grounding import SupportChecker, load_scorer
    from kb.types import Passage

    passage = Passage(1, "d", "guide.txt", "The service listens on port 8000.", 1.0, 0, 33)
    nli = _cross_encoder(tmp_path / "nli", ["contradiction", "entailment", "neutral"])
    scorer = load_scorer(f"nli:{nli}", embedder=lambda: None)
    scores = scorer.similarity(["It listens on port 8000."], ["The service listens on port 8000."])
    assert scores.shape == (1, 1) and 0.0 <= float(scores[0, 0]) <= 1.0
    checker = SupportChecker(scorer, threshold=0.0)
    report = checker.check(
        "It listens on port 8080 [1].", [passage], policy="flag", not_covered="Not covered."
    )
    assert report.scorer == f"nli:{nli}"
    assert report.sentences[0].missing == ["8080"] and report.sentences[0].supported is False

    relevance = _cross_encoder(tmp_path / "ce", ["relevant"])
    one = load_scorer(f"cross-encoder:{relevance}", embedder=lambda: None)
    assert 0.0 <= float(one.similarity(["a claim"], ["some evidence"])[0, 0]) <= 1.0

    bad = _cross_encoder(tmp_path / "bad", ["yes", "no"])
    with pytest.raises(InvalidInput, match="none is entailment"):
        load_scorer(f"nli:{bad}", embedder=lambda: None)  # refused when loaded, not mid-answer
    with pytest.raises(InvalidInput, match="KB_SUPPORT_SCORER"):
        load_scorer("magic", embedder=lambda: None)
    with pytest.raises(InvalidInput, match="KB_SUPPORT_SCORER"):
        load_scorer(f"nli:{tmp_path / 'absent'}", embedder=lambda: None)
