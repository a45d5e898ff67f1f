"""RAFT training data from a collection: questions with their oracle chunk, distractors from
kb's own search, a share without the oracle, the rag prompt format, a split by document; and a
tiny real LoRA run whose model answers rag+finetuned over HTTP."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

from kb.errors import InvalidInput
from kb.finetune import PrepareOptions, load_tokenizer, prepare_dataset, validate_file
from kb.finetune.options import build
from kb.finetune.raft import quote, structure_questions
from kb.prompting import load_prompt, not_covered_answer
from kb.settings import Settings
from kb.types import Document, Section
from tests.test_finetune_train import smollm2_cache  # noqa: F401 - a module fixture

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEVICES = [
    ("quillon", "brass", "sorts letters by weight", "qln_sort"),
    ("marrowgate", "oak", "measures the tide in a harbour", "mgt_tide"),
    ("thistlewick", "copper", "lights lanterns at dusk", "twk_light"),
    ("brindlecog", "iron", "grinds coffee for the crew", "bcg_grind"),
    ("velloran", "glass", "stores rain for the garden", "vlr_store"),
    ("ospreyline", "steel", "pulls fishing nets aboard", "osp_pull"),
    ("cindermoss", "clay", "keeps bread warm overnight", "cdm_warm"),
    ("harrowind", "tin", "turns the windmill sails", "hrw_turn"),
    ("lumenfold", "silver", "folds maps along their creases", "lmf_fold"),
    ("pebblequay", "stone", "counts the boats in the bay", "pbq_count"),
]


def manual_page(name: str, metal: str, job: str, function: str) -> Document:
    """A small manual page with the structures RAFT asks about."""
    title = f"The {name.title()} Manual"
    return Document(
        source=f"{name}.html",
        title=title,
        sections=[
            Section(
                f"The {name} device is a {metal} machine that {job}. "
                f"It was first built in the workshop of {name.title()} Hall.",
                heading=title,
            ),
            Section(
                f"Maintenance of the {name}\n"
                f"Every {name} needs fresh {metal} polish after forty days of work. "
                "Skipping the polish makes the gears squeal loudly.",
                heading=f"Maintenance of the {name}",
            ),
            Section(
                f"{name.title()} calibration: the dial of the {name} is set to {len(name)} "
                "notches before the first use.\n"
                f"int {function}(int notches, const char *label);\n"
                f"The {function} call returns zero when the {name} accepted the setting.",
                heading="Programming interface",
            ),
        ],
    )


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("raft"), chunk_size=48, chunk_overlap=8)


@pytest.fixture(scope="module")
def tokenizer(settings):
    return load_tokenizer(cache_dir=settings.cache_dir)


@pytest.fixture(scope="module")
def kb(settings):
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(settings)
    kb.ingest_documents([manual_page(*d) for d in DEVICES], collection="devices")
    return kb


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, settings, kb, tokenizer):
    options = PrepareOptions(
        from_collection="devices",
        recipe="raft",
        distractors=2,
        no_oracle_share=0.25,
        val_fraction=0.2,
        max_examples=24,
    )
    out = tmp_path_factory.mktemp("raft-data")
    return prepare_dataset(
        None, out, options=options, settings=settings, kb=kb, tokenizer=tokenizer
    )


def test_structure_gives_questions_with_the_sentence_that_answers():
    page = manual_page(*DEVICES[0])
    found = {
        (q.kind, q.text): q.answer
        for s in page.sections
        for q in structure_questions(s.text, s.heading, page.title)
    }
    assert found[("defining_sentence", "What is the quillon device?")].startswith(
        "The quillon device is a brass machine that sorts letters by weight."
    )
    assert found[("defining_sentence", "What does the qln_sort call return?")].startswith(
        "The qln_sort call returns zero"
    )
    assert found[("signature", "How is qln_sort() declared?")] == (
        "int qln_sort(int notches, const char *label);"
    )
    assert found[("definition", "What is Quillon calibration?")].startswith("Quillon calibration:")
    heading = "What does The Quillon Manual say about Maintenance of the quillon?"
    assert found[("heading", heading)].startswith("Every quillon needs fresh brass polish")
    # a definition list's term asks what it is; a sentence that refers back asks nothing
    term = structure_questions("Lantern oil\nLantern oil is pressed from the seeds of moss.")
    assert [(q.kind, q.text) for q in term] == [
        ("term", "What is Lantern oil?"),
        ("defining_sentence", "What is Lantern oil?"),
    ]
    assert not structure_questions("It was built in a hurry by the crew of the ship.")


def test_a_quote_keeps_the_next_sentence_while_both_are_short():
    text = (
        "Maintenance\nThe quillon needs polish every forty days. Skipping it makes the gears "
        "squeal.\nint qln_sort(int notches);\nThe dial is set once."
    )
    assert quote("The quillon needs polish every forty days.", text) == [
        "The quillon needs polish every forty days.",
        "Skipping it makes the gears squeal.",
    ]
    # a declaration is no sentence to go on with, and neither is a long one
    assert quote("Skipping it makes the gears squeal.", text) == [
        "Skipping it makes the gears squeal."
    ]
    long = "The quillon needs polish. " + "It squeals " * 40 + "loudly."
    assert quote("The quillon needs polish.", long) == ["The quillon needs polish."]


def test_examples_carry_their_oracle_and_cite_it_in_the_rag_format(prepared, kb):
    records = jsonl(prepared.train_path) + jsonl(prepared.validation_path)
    assert len(records) == prepared.manifest["counts"]["examples"] >= 20
    chunks = kb.collection("devices").chunks({r["metadata"]["oracle_chunk_id"] for r in records})
    rag = load_prompt("rag")
    for record in records:
        meta = record["metadata"]
        system, user, answer = (m["content"] for m in record["messages"])
        assert system == rag.render_system()
        assert user.endswith(rag.render_user(meta["question"]))
        shown = meta["passage_chunk_ids"]
        assert user.count("<passage id=") == len(shown)
        for n in range(1, len(shown) + 1):
            assert f'<passage id="{n}" source="' in user
        assert len(shown) == len(set(shown))
        oracle = chunks[meta["oracle_chunk_id"]]
        if meta["oracle_shown"]:
            assert shown.count(meta["oracle_chunk_id"]) == 1
            n = shown.index(meta["oracle_chunk_id"]) + 1
            assert meta["cited"] == n and answer.endswith(f" [{n}]")
            quoted = answer.split(f" [{n}]")
            assert quoted[-1] == "" and 1 <= len(quoted) - 1 <= 2
            for sentence in quoted[:-1]:  # the supporting sentence, word for word, and its next
                assert sentence.strip() in oracle.text
            assert len(shown) == 3  # the oracle and two distractors
        else:
            # distractors only: the oracle is never among them, and the answer says so
            assert meta["oracle_chunk_id"] not in shown and meta["cited"] is None
            assert answer == not_covered_answer()
            assert len(shown) == 3


def test_the_no_oracle_share_is_honoured(prepared):
    records = jsonl(prepared.train_path) + jsonl(prepared.validation_path)
    hidden = sum(not r["metadata"]["oracle_shown"] for r in records)
    assert hidden == round(0.25 * len(records)) == prepared.manifest["source"]["no_oracle"]


def test_no_evaluation_document_appears_in_training(prepared, tokenizer):
    train, validation = jsonl(prepared.train_path), jsonl(prepared.validation_path)
    assert train and validation
    held = {r["metadata"]["oracle_doc_id"] for r in validation}
    for record in train:
        meta = record["metadata"]
        assert meta["oracle_doc_id"] not in held
        assert not set(meta["passage_doc_ids"]) & held
    split = prepared.manifest["source"]["split"]
    assert split == {
        "by": "document",
        "train_documents": len({r["metadata"]["oracle_doc_id"] for r in train}),
        "validation_documents": len(held),
    }
    assert prepared.report.split["shared_documents"] == 0
    assert prepared.report.split["evaluation_documents"] == len(held)
    assert "eval_document_leakage" not in prepared.report.codes()

    # validate catches a training file that shows an evaluation document
    leaky = prepared.out_dir / "leaky.jsonl"
    leaky.write_text(
        "".join(json.dumps(r) + "\n" for r in train + validation[:1]), encoding="utf-8"
    )
    report = validate_file(leaky, eval_file=prepared.validation_path, tokenizer=tokenizer)
    assert "eval_document_leakage" in {i.code for i in report.errors}
    assert report.split["shared_documents"] >= 1


def test_excluded_sources_stay_out_of_every_prompt(tmp_path, settings, kb, tokenizer):
    options = PrepareOptions(
        from_collection="devices",
        recipe="raft",
        exclude_sources=("quillon.html", "marrow*"),
        max_examples=12,
        val_fraction=0,
    )
    result = prepare_dataset(
        None, tmp_path, options=options, settings=settings, kb=kb, tokenizer=tokenizer
    )
    sources = {c.doc_id: c.source for c in kb.collection("devices").iter_chunks()}
    for record in jsonl(result.train_path):
        shown = {sources[d] for d in record["metadata"]["passage_doc_ids"]}
        assert not shown & {"quillon.html", "marrowgate.html"}


class PassageEcho:
    """A registry-shaped stand-in for a remote model: asks about the passage it is shown and
    answers with its first sentence, as a capable model would."""

    def get(self, name: str):
        return self

    def generate(self, messages, max_new_tokens=256):
        passage = messages[-1]["content"].split("Passage:\n", 1)[1]
        first = passage.split(". ")[0].strip().rstrip(".") + "."
        words = " ".join(first.split()[:4])
        reply = f"Question: What does the manual say about {words}?\nAnswer: {first}"
        return type("Reply", (), {"text": reply})()


def test_a_generator_writes_the_questions_when_one_is_set(tmp_path, settings, kb, tokenizer):
    options = PrepareOptions(
        from_collection="devices",
        recipe="raft",
        generate_with="echo",
        max_examples=6,
        val_fraction=0,
        no_oracle_share=0,
    )
    result = prepare_dataset(
        None,
        tmp_path,
        options=options,
        settings=settings,
        kb=kb,
        generators=PassageEcho(),
        tokenizer=tokenizer,
    )
    records = jsonl(result.train_path)
    assert len(records) == 6 and result.manifest["source"]["generated_by"] == "echo"
    chunks = kb.collection("devices").chunks({r["metadata"]["oracle_chunk_id"] for r in records})
    for record in records:
        meta = record["metadata"]
        assert meta["question_from"] == "generator:echo"
        assert meta["question"].startswith("What does the manual say about ")
        quoted = re.split(r" \[\d+\] ?", record["messages"][-1]["content"])
        assert quoted[-1] == ""
        assert all(q in chunks[meta["oracle_chunk_id"]].text for q in quoted[:-1])


def test_raft_options_are_checked():
    with pytest.raises(InvalidInput, match="pass --recipe raft"):
        build(PrepareOptions, {"from_collection": "x", "distractors": 2})
    with pytest.raises(InvalidInput, match="pass --from-collection NAME"):
        build(PrepareOptions, {"recipe": "raft"})
    with pytest.raises(InvalidInput, match="no_oracle_share: Input should be less than or equal"):
        build(PrepareOptions, {"from_collection": "x", "recipe": "raft", "no_oracle_share": 1.5})


# -- a tiny real run -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_raft_model_answers_rag_finetuned_over_http(tmp_path_factory, smollm2_cache):  # noqa: F811
    """Prepare RAFT data over HTTP, train a few LoRA steps on the bundled model, and ask the
    registered model in rag+finetuned mode; the answer is grounded in the retrieved passages."""
    from kb.service import KnowledgeBase
    from tests.conftest import live_server
    from tests.test_finetune_train import _settings, _wait

    root = tmp_path_factory.mktemp("raft-http")
    settings = _settings(root, smollm2_cache, chunk_size=48, chunk_overlap=8)
    KnowledgeBase(settings).ingest_documents(
        [manual_page(*d) for d in DEVICES], collection=settings.default_collection
    )
    with (
        live_server(settings, warm=False) as live,
        httpx.Client(base_url=live.url, timeout=240) as client,
    ):
        prepared = client.post(
            "/finetune/datasets/prepare",
            json={
                "name": "devices-raft",
                "from_collection": settings.default_collection,
                "recipe": "raft",
                "distractors": 1,
                "max_examples": 8,
                "val_fraction": 0.2,
            },
        )
        assert prepared.status_code == 200, prepared.text
        body = prepared.json()
        assert body["report"]["split"]["shared_documents"] == 0
        created = client.post(
            "/finetune/jobs",
            json={
                "dataset": "devices-raft",
                "name": "devices-raft",
                "r": 4,
                "alpha": 8,
                "max_seq_len": 384,
                "epochs": 1,
                "batch_size": 4,
                "lora_layers": 2,
            },
        )
        assert created.status_code == 202, created.text
        job = _wait(client, created.json()["id"], timeout=900)
        assert job["state"] == "succeeded", job

        answer = client.post(
            "/query",
            json={
                "question": "What does the quillon device do?",
                "mode": "rag+finetuned",
                "max_new_tokens": 24,
            },
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["model"]["name"] == "devices-raft"
        assert result["mode"] == "rag+finetuned" and result["grounded"] is True
        assert result["passages"] and result["answer"].strip()
        assert result["support"] is not None or result["not_covered"]
