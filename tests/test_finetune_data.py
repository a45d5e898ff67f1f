"""Fine-tuning data: prepare from tables, folders and collections; validate; the CLI edge."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb.errors import InvalidInput
from kb.finetune import (
    PrepareOptions,
    TokenCounter,
    load_tokenizer,
    prepare_dataset,
    validate_file,
)
from kb.finetune.builders import NO_NEIGHBOURS
from kb.finetune.options import build
from kb.finetune.synthetic import parse_qa
from kb.settings import Settings
from tests.conftest import needs_shared_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NEWSGROUPS_TRAIN = Path(__file__).resolve().parents[1] / "../shared/data/newsgroups/train"
LONG_TEXT = "lorem ipsum dolor sit amet " * 600  # well over 2048 tokens


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    # one data dir for the session, so the GGUF tokenizer is converted once and then cached
    return Settings(data_dir=tmp_path_factory.mktemp("kb_data"))


@pytest.fixture(scope="session")
def tokenizer(settings):
    return load_tokenizer(cache_dir=settings.cache_dir)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat(user: str, reply: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    }


def codes(*reports) -> set[str]:
    return set().union(*(r.codes() for r in reports))


def issue(report, code):
    found = [i for i in report.errors + report.warnings if i.code == code]
    assert found, f"{code} not reported: {report.codes()}"
    return found[0]


# --- tables ------------------------------------------------------------------------------------


def messy_csv(path: Path) -> Path:
    """Header with odd case and spaces, a BOM, blank rows, a multi-line cell, and three problems."""
    rows = [[" Question ", "Answer ", "notes"]]
    rows += [[f"What is fact number {i}?", f"Fact {i} is about topic {i}.", ""] for i in range(12)]
    rows += [["What is fact number 3?", "Fact 3 is about topic 3.", "repeat"]]  # duplicate
    rows += [["", "", ""]]  # blank row
    rows += [["Why is the sky blue?", "", "no answer"]]  # empty completion
    rows += [["Summarise this:\n" + LONG_TEXT, "A long text.", "too long"]]  # over the limit
    rows += [["Two lines\nof question?", "An answer\nover two lines.", ""]]
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_messy_csv_reports_duplicates_empty_and_long(tmp_path, settings, tokenizer):
    source = messy_csv(tmp_path / "messy.csv")
    options = PrepareOptions(val_fraction=0.0)
    result = prepare_dataset(
        source, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    train = jsonl(result.train_path)
    assert len(train) == 16  # 17 data rows less the blank one
    assert result.validation_path.read_text() == ""
    report = result.report
    assert {"duplicate_examples", "empty_completion", "too_long"} <= report.codes()
    assert not result.ok
    # each issue's line points at the example that came from the offending spreadsheet row
    row_of = {n: rec["metadata"]["row"] for n, rec in enumerate(train, start=1)}
    # the header is row 1, facts rows 2-13, then the duplicate, blank, empty and long rows
    assert [row_of[n] for n in issue(report, "duplicate_examples").lines] == [14]
    assert [row_of[n] for n in issue(report, "empty_completion").lines] == [16]
    assert [row_of[n] for n in issue(report, "too_long").lines] == [17]
    assert "2048" in issue(report, "too_long").message
    assert report.token_stats["over_limit"] == 1
    assert any("\n" in rec["messages"][0]["content"] for rec in train)  # multi-line cell kept
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["valid"] is False
    assert (
        manifest["files"]["train.jsonl"]["sha256"]
        == hashlib.sha256(result.train_path.read_bytes()).hexdigest()
    )


def test_xlsx_with_instruction_columns_and_problems(tmp_path, settings, tokenizer):
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append([None, None, None])  # a blank first row: the header is the first non-empty row
    sheet.append(["Instruction", "Input", "Response"])
    for i in range(15):
        sheet.append([f"Add {i} and {i}.", None, i + i])  # numeric cells become text
    sheet.append(["Add 2 and 2.", None, 4])  # duplicate
    sheet.append(["Translate to French.", "cat", None])  # empty completion
    sheet.append(["Summarise.", LONG_TEXT, "long"])
    path = tmp_path / "tasks.xlsx"
    workbook.save(path)

    result = prepare_dataset(
        path, tmp_path / "out", options=PrepareOptions(), settings=settings, tokenizer=tokenizer
    )
    records = jsonl(result.train_path) + jsonl(result.validation_path)
    assert len(records) == 18
    by_row = {r["metadata"]["row"]: r["messages"] for r in records}
    assert by_row[3] == [
        {"role": "user", "content": "Add 0 and 0."},
        {"role": "assistant", "content": "0"},
    ]
    assert by_row[19][0]["content"] == "Translate to French.\n\ncat"  # instruction + input
    found = codes(result.report, result.validation_report)
    assert {"duplicate_examples", "empty_completion", "too_long"} <= found
    assert not result.ok
    # the duplicate pair shares one side of the split, so validation repeats no training prompt
    assert "eval_leakage" not in found


def test_unknown_prompt_column_names_the_columns(tmp_path, settings, tokenizer):
    source = messy_csv(tmp_path / "messy.csv")
    with pytest.raises(InvalidInput, match=r"'query_text'.*Question.*--prompt-column"):
        prepare_dataset(
            source,
            tmp_path / "out",
            options=PrepareOptions(prompt_column="query_text"),
            settings=settings,
            tokenizer=tokenizer,
        )


def products_csv(path: Path, missing_detail_row: bool = False) -> Path:
    rows = [["name", "Type", "detail", "description"]]
    for i in range(12):
        detail = "" if missing_detail_row and i == 4 else f"{i} speeds"
        rows.append([f"Bike {i}", "road bike" if i % 2 else "gravel bike", detail, f"Bike {i} ..."])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_template_filled_from_rows_with_completions_from_a_column(tmp_path, settings, tokenizer):
    source = products_csv(tmp_path / "products.csv")
    options = PrepareOptions(
        template="Write a description of {name}, mention {type} and {detail}",
        completion_column="description",
        system="You write product copy.",
        format="completion",
    )
    result = prepare_dataset(
        source, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    records = jsonl(result.train_path) + jsonl(result.validation_path)
    first = next(r for r in records if r["metadata"]["row"] == 2)
    assert first["prompt"] == (
        "You write product copy.\n\nWrite a description of Bike 0, mention gravel bike and "
        "0 speeds\n\n###\n\n"
    )
    assert first["completion"] == " Bike 0 ... END"
    # the prepared legacy data passes the separator / whitespace / stop-sequence advice
    advice = {"no_prompt_separator", "completion_no_leading_space", "no_stop_sequence"}
    assert not advice & result.report.codes()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["source"]["template"] == options.template
    assert manifest["counts"] == {"examples": 12, "train": 11, "validation": 1, "skipped": 0}


def test_template_field_without_column_is_a_clear_error(tmp_path, settings, tokenizer):
    source = products_csv(tmp_path / "products.csv")
    options = PrepareOptions(
        template="Describe {name} in {colour}", completion_column="description"
    )
    with pytest.raises(InvalidInput, match=r"\{colour\} is not a column of products.csv.*detail"):
        prepare_dataset(
            source, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
        )


def test_template_field_with_empty_cell_names_column_and_row(tmp_path, settings, tokenizer):
    source = products_csv(tmp_path / "products.csv", missing_detail_row=True)
    options = PrepareOptions(
        template="Describe {name} with {detail}", completion_column="description"
    )
    with pytest.raises(InvalidInput, match=r"\{detail\} \(column 'detail'\) is empty in row 6 "):
        prepare_dataset(
            source, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
        )


def test_template_without_completions_asks_for_a_column_or_model(tmp_path, settings, tokenizer):
    source = products_csv(tmp_path / "products.csv")
    with pytest.raises(InvalidInput, match="--completion-column COLUMN or --generate-with MODEL"):
        prepare_dataset(
            source,
            tmp_path / "out",
            options=PrepareOptions(template="Describe {name}"),
            settings=settings,
            tokenizer=tokenizer,
        )


# --- labelled folders --------------------------------------------------------------------------


def message(subject: str, body: str) -> str:
    return (
        f"From: someone@example.com (Some One)\nSubject: {subject}\nOrganization: Example\n"
        f"Lines: 3\n\n{body}\n"
    )


def assert_stratified(train: list[dict], validation: list[dict]) -> None:
    """Each label's share of train and of validation matches the whole within one example."""
    labels = Counter(r["metadata"]["label"] for r in train + validation)
    total = sum(labels.values())
    for part in (train, validation):
        counts = Counter(r["metadata"]["label"] for r in part)
        for label, n in labels.items():
            assert abs(counts[label] - len(part) * n / total) <= 1, (label, counts, labels)


def test_labelled_folder_gives_a_stratified_split(tmp_path, settings, tokenizer):
    folder = tmp_path / "labelled"
    sizes = {"billing": 10, "bugs": 20, "praise": 40}
    for label, n in sizes.items():
        (folder / label).mkdir(parents=True)
        for i in range(n):
            body = f"Message {i} about {label}. " + ("more words here " * 200 if i == 0 else "")
            (folder / label / f"{i}.txt").write_text(message(f"{label} case {i}", body))
    (folder / "bugs" / "blob.bin").write_bytes(b"\x00\x01binary")
    (folder / ".hidden").mkdir()

    options = PrepareOptions(text_budget=64)
    result = prepare_dataset(
        folder, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    train, validation = jsonl(result.train_path), jsonl(result.validation_path)
    assert Counter(r["metadata"]["label"] for r in validation) == {
        "billing": 1,
        "bugs": 2,
        "praise": 4,
    }
    assert_stratified(train, validation)
    first = next(r for r in train + validation if r["metadata"]["source"].endswith("praise/3.txt"))
    prompt = first["messages"][0]["content"]
    assert prompt.startswith("Classify this message into one of: billing, bugs, praise.\n\n")
    assert "Subject: praise case 3" in prompt and "From:" not in prompt
    assert first["messages"][-1] == {"role": "assistant", "content": "praise"}
    long_one = next(r for r in train + validation if r["metadata"]["source"].endswith("bugs/0.txt"))
    text = long_one["messages"][0]["content"].split("\n\n", 1)[1]
    assert TokenCounter(tokenizer).count_texts([text])[0] <= 64
    assert [s.reason for s in result.skipped] == ["binary file"]
    assert result.report.task_type == "classification"
    assert "class_imbalance" in result.report.codes()  # 40 vs 10
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["label_counts"]["validation"] == {"billing": 1, "bugs": 2, "praise": 4}
    assert manifest["source"]["labels"] == ["billing", "bugs", "praise"]


def test_labelled_messages_keep_the_headers_asked_for(tmp_path, settings, tokenizer):
    folder = tmp_path / "labelled"
    for label in ("autos", "bikes"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            (folder / label / f"{i}.txt").write_text(message(f"{label} {i}", "Body text."))
    options = PrepareOptions(keep_headers=("From", "organization", "subject"), val_fraction=0)
    result = prepare_dataset(
        folder, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    records = jsonl(result.train_path)
    first = next(r for r in records if r["metadata"]["source"].endswith("autos/0.txt"))
    prompt = first["messages"][0]["content"]
    assert prompt.endswith(
        "From: someone@example.com (Some One)\nOrganization: Example\nSubject: autos 0\n\n"
        "Body text."
    )
    assert "Lines:" not in prompt
    with pytest.raises(InvalidInput, match=r"keep_headers \['subject:'\] are not header names"):
        build(PrepareOptions, {"keep_headers": ["subject:"]})


@needs_shared_data("newsgroups")
def test_newsgroups_train_split_is_stratified(tmp_path, settings, tokenizer):
    result = prepare_dataset(
        NEWSGROUPS_TRAIN, tmp_path / "out", settings=settings, tokenizer=tokenizer
    )
    train, validation = jsonl(result.train_path), jsonl(result.validation_path)
    assert len(train) + len(validation) == 594 + 598
    assert len(validation) == 119
    assert_stratified(train, validation)
    assert result.ok, [i.message for i in result.report.errors]
    assert result.report.task_type == "classification"
    assert result.report.label_counts.keys() == {"rec.autos", "rec.motorcycles"}
    assert result.report.token_stats["max"] <= 2048
    prompts = [r["messages"][0]["content"] for r in train]
    assert all("\nFrom:" not in p and "Subject:" in p for p in prompts[:50])


CAR_BODIES = [
    "The sedan's engine stalls at idle and the dealer replaced the transmission twice.",
    "My hatchback needs new brake pads, tyres and an oil change before winter.",
    "Is the station wagon's four-door cabin roomy enough for a family road trip?",
    "The pickup truck's V8 engine burns oil; the mechanic suspects the piston rings.",
]
BIKE_BODIES = [
    "My motorcycle's chain needs wax after every ride; the rear sprocket is worn.",
    "Which helmet and leather jacket do riders wear on long motorbike tours?",
    "The sportbike leans into corners well but the clutch lever is stiff.",
    "Riding pillion on a motorcycle: how should the passenger lean in the twisties?",
]


def topic_folder(folder: Path, tag: str) -> Path:
    for label, bodies in (("autos", CAR_BODIES), ("bikes", BIKE_BODIES)):
        (folder / label).mkdir(parents=True)
        for i, body in enumerate(bodies):
            (folder / label / f"{i}.txt").write_text(message(f"{tag} {label} {i}", body))
    return folder


def neighbour_lines(record: dict) -> list[str]:
    prompt = record["messages"][0]["content"]
    block = prompt.split("most similar first:\n", 1)[1].split("\n\nThe message:", 1)[0]
    return block.split("\n")


def test_prompts_show_their_nearest_labelled_neighbours(tmp_path, settings, tokenizer):
    train_dir = topic_folder(tmp_path / "train", "train")
    options = PrepareOptions(neighbours=3, neighbour_tokens=10, val_fraction=0)
    result = prepare_dataset(
        train_dir, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    records = jsonl(result.train_path)
    assert len(records) == 8
    for record in records:
        label, number = Path(record["metadata"]["source"]).parent.name, record["metadata"]["source"]
        lines = neighbour_lines(record)
        assert len(lines) == 3
        # each example leaves itself out of its own neighbours
        own = f"Subject: train {label} {Path(number).stem}"
        assert not any(own in line for line in lines), (own, lines)
        # retrieval finds messages on the same topic: most neighbours share the label
        same = sum(line.startswith(f"{label}: Subject: train {label} ") for line in lines)
        assert same >= 2, (record["metadata"], lines)
    assert result.manifest["options"]["neighbours"] == 3

    # an evaluation split draws its neighbours from the training folder only
    test_dir = topic_folder(tmp_path / "test", "test")
    options = PrepareOptions(
        neighbours=2, neighbours_from=str(train_dir), neighbour_tokens=10, val_fraction=0
    )
    result = prepare_dataset(
        test_dir, tmp_path / "test_out", options=options, settings=settings, tokenizer=tokenizer
    )
    for record in jsonl(result.train_path):
        lines = neighbour_lines(record)
        assert len(lines) == 2 and all(": Subject: train " in line for line in lines), lines
        assert "The message:\n\nSubject: test " in record["messages"][0]["content"]


def test_the_pool_is_embedded_once_and_read_back_from_the_cache(tmp_path, tokenizer):
    import numpy as np

    from kb.finetune.builders import neighbour_pool

    settings = Settings(data_dir=tmp_path / "kb")  # a cache of its own: this test damages it
    folder = topic_folder(tmp_path / "train", "train")
    counter = TokenCounter(tokenizer)
    options = PrepareOptions(neighbours=2)

    def build():
        return neighbour_pool(folder, ["autos", "bikes"], options, counter, settings)

    first = build()
    cached = list((settings.cache_dir / "neighbour-pools").glob("*.npy"))
    assert len(cached) == 1
    assert np.array_equal(np.load(cached[0]), first.vectors)
    # the next build reads the file instead of embedding: what is in it is what it gets
    np.save(cached[0], np.zeros_like(first.vectors))
    assert not build().vectors.any()
    # a damaged file is embedded again and rewritten, not an error
    cached[0].write_bytes(b"not an array")
    assert np.allclose(build().vectors, first.vectors, atol=1e-3)
    # other texts are another entry
    (folder / "autos" / "0.txt").write_text(message("train autos 0", "A new text on brakes."))
    build()
    assert len(list((settings.cache_dir / "neighbour-pools").glob("*.npy"))) == 2


def test_neighbour_dropout_hides_them_from_a_seeded_share(
    tmp_path, settings, tokenizer, monkeypatch
):
    train_dir = topic_folder(tmp_path / "train", "train")

    def hidden(seed: int, out: str) -> list[str]:
        options = PrepareOptions(neighbours=3, neighbour_dropout=0.25, val_fraction=0, seed=seed)
        result = prepare_dataset(
            train_dir, tmp_path / out, options=options, settings=settings, tokenizer=tokenizer
        )
        records = jsonl(result.train_path)
        assert result.manifest["options"]["neighbour_dropout"] == 0.25
        none = [r for r in records if neighbour_lines(r) == [NO_NEIGHBOURS]]
        # the others keep all three neighbours
        assert all(len(neighbour_lines(r)) == 3 for r in records if r not in none)
        return sorted(r["metadata"]["source"] for r in none)

    first = hidden(0, "a")
    assert len(first) == 2  # a quarter of 8
    assert hidden(0, "b") == first  # the same seed hides the same examples

    # a share of 1 hides them from every prompt, without building a pool to search
    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was built for prompts that show no neighbours")

    monkeypatch.setattr("kb.finetune.neighbours.NeighbourPool.__init__", no_pool)
    options = PrepareOptions(neighbours=3, neighbour_dropout=1.0, val_fraction=0)
    result = prepare_dataset(
        train_dir, tmp_path / "alone", options=options, settings=settings, tokenizer=tokenizer
    )
    assert {tuple(neighbour_lines(r)) for r in jsonl(result.train_path)} == {(NO_NEIGHBOURS,)}


FILLER = "Hello all, a question for the group, thanks in advance. "


def late_topic_folder(folder: Path) -> Path:
    """Messages whose opening (subject and greeting) says nothing of their label; the words that
    do come after the first 16 tokens."""
    for side, (label, bodies) in enumerate((("autos", CAR_BODIES), ("bikes", BIKE_BODIES))):
        (folder / label).mkdir(parents=True)
        for i, body in enumerate(bodies):
            subject = f"note {2 * i + side}"  # numbers alternate between the labels
            (folder / label / f"{i}.txt").write_text(message(subject, FILLER + body))
    return folder


def same_label_neighbours(result, first: int = 3) -> int:
    """How many of each example's `first` neighbours share its label, over all examples."""
    records = jsonl(result.train_path)
    return sum(
        line.split(":", 1)[0] == r["metadata"]["label"]
        for r in records
        for line in neighbour_lines(r)[:first]
    )


def test_neighbours_are_found_by_the_whole_text_not_only_the_part_shown(
    tmp_path, settings, tokenizer
):
    folder = late_topic_folder(tmp_path / "train")
    options = PrepareOptions(neighbours=3, text_budget=16, val_fraction=0)
    result = prepare_dataset(
        folder, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    assert result.manifest["neighbour_search"] == "whole"
    # the prompts show the cut text: the topic words are past the 16-token budget
    for record in jsonl(result.train_path):
        text = record["messages"][0]["content"].split("The message:", 1)[1]
        assert "engine" not in text and "motorcycle" not in text
    # the whole text finds the same topic: the nearest neighbour shares the label for 7 of the 8
    # examples; the part shown, the same greeting in every message, does no better than chance
    # (4 of 8, when data was prepared with `--neighbour-search shown`)
    assert same_label_neighbours(result, first=1) >= 7


def test_the_classifier_rebuilds_the_prompts_of_its_training_data(tmp_path, settings, tokenizer):
    """`kb models classify` rebuilds each prompt with the recipe of the model's manifest; data
    whose neighbours were found by the part shown (an option kb no longer has, recorded as
    `neighbour_search: shown`, or by no key before that option) is refused with the fix."""
    from types import SimpleNamespace

    from kb.finetune.classify import Classifier, NotAClassifier
    from kb.models import ModelRecord

    train_dir = late_topic_folder(tmp_path / "train")
    test_dir = late_topic_folder(tmp_path / "test")
    # only the tokenizer of the model is needed to build prompts; nothing here is scored
    generator = SimpleNamespace(local_model=SimpleNamespace(tokenizer=tokenizer))

    def prepare(source: Path, out: str, **kwargs):
        options = PrepareOptions(neighbours=3, text_budget=16, val_fraction=0, **kwargs)
        return prepare_dataset(
            source, tmp_path / out, options=options, settings=settings, tokenizer=tokenizer
        )

    trained = prepare(train_dir, "train")
    held = jsonl(prepare(test_dir, "held", neighbours_from=str(train_dir)).train_path)
    record = ModelRecord(name="m", dataset={"path": str(trained.train_path)})
    texts = [Path(r["metadata"]["source"]).read_text() for r in held]
    assert Classifier(record, generator, settings).prompts(texts)[0] == [
        r["messages"][0]["content"] for r in held
    ]

    manifest_path = trained.train_path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for older in ({"neighbour_search": "shown"}, {}):  # as recorded, or before the option
        del manifest["neighbour_search"]
        manifest["options"].pop("neighbour_search", None)
        manifest["options"].update(older)
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(NotAClassifier, match="prepare the data again"):
            Classifier(record, generator, settings)
        manifest["neighbour_search"] = "whole"


SENDERS = {  # label -> the From header of each of its messages
    "autos": ["Ann <ann@cars.example>", "ann@CARS.example (Ann)", "ann@cars.example", "Bo Li"],
    "bikes": ["bo li", "Cy <cy@moto.example>", "cy@moto.example", None],
}


def sender_folder(folder: Path, tag: str) -> Path:
    for label, senders in SENDERS.items():
        (folder / label).mkdir(parents=True)
        for i, sender in enumerate(senders):
            head = f"From: {sender}\n" if sender else ""
            text = f"{head}Subject: {tag} {label} {i}\nOrganization: Example\n\nA short note {i}.\n"
            (folder / label / f"{i}.txt").write_text(text)
    return folder


def header_line_of(record: dict) -> str:
    return neighbour_lines(record)[-1]


def replayed(train_path: Path, held: list[dict], settings, tokenizer) -> list:
    """The classifier of a model trained on `train_path`: it must rebuild the `held` prompts
    from their files byte for byte; its results for them, each reporting the counts its prompt
    showed (label scoring, tested with the real model in test_finetune_train, is stubbed)."""
    from types import SimpleNamespace

    from kb.finetune.classify import Classifier
    from kb.models import ModelRecord

    generator = SimpleNamespace(local_model=SimpleNamespace(tokenizer=tokenizer))
    record = ModelRecord(name="replayed", dataset={"path": str(train_path)})
    texts = [Path(r["metadata"]["source"]).read_text() for r in held]
    classifier = Classifier(record, generator, settings)
    assert classifier.prompts(texts)[0] == [r["messages"][0]["content"] for r in held]
    classifier._scores = lambda prompt: [0.0, -1.0]
    return classifier.classify(texts)


def test_header_labels_count_the_labels_of_the_same_senders_messages(tmp_path, settings, tokenizer):
    train_dir = sender_folder(tmp_path / "train", "train")
    options = PrepareOptions(neighbours=2, header_labels=("From",), val_fraction=0)
    result = prepare_dataset(
        train_dir, tmp_path / "out", options=options, settings=settings, tokenizer=tokenizer
    )
    assert list(result.manifest["options"]["header_labels"]) == ["from"]
    lines = {
        "/".join(Path(r["metadata"]["source"]).parts[-2:]): neighbour_lines(r)
        for r in jsonl(result.train_path)
    }
    same = "Labelled messages with the same From: "
    # Ann writes her address three ways: each message counts her two others, not itself
    for i in range(3):
        assert lines[f"autos/{i}.txt"][-1] == same + "autos 2"
    # a name without an address matches with case and spacing ignored, across labels
    assert lines["autos/3.txt"][-1] == same + "bikes 1"
    assert lines["bikes/0.txt"][-1] == same + "autos 1"
    assert lines["bikes/1.txt"][-1] == same + "bikes 1"
    assert lines["bikes/3.txt"][-1] == same + "none"  # no From header
    assert all(len(block) == 3 for block in lines.values())  # 2 neighbours, then the count

    # a held-out split counts the whole training folder, and the classifier rebuilds its prompts
    test_dir = sender_folder(tmp_path / "test", "test")
    held = jsonl(
        prepare_dataset(
            test_dir,
            tmp_path / "held",
            options=PrepareOptions(
                neighbours=2,
                header_labels=("from",),
                neighbours_from=str(train_dir),
                val_fraction=0,
            ),
            settings=settings,
            tokenizer=tokenizer,
        ).train_path
    )
    ann = next(r for r in held if r["metadata"]["source"].endswith("autos/1.txt"))
    assert header_line_of(ann) == same + "autos 3"
    mixed = next(r for r in held if r["metadata"]["source"].endswith("autos/3.txt"))
    assert header_line_of(mixed) == same + "autos 1, bikes 1"  # ties ranked by label
    results = replayed(result.train_path, held, settings, tokenizer)
    by_source = {r["metadata"]["source"]: result for r, result in zip(held, results, strict=True)}
    assert by_source[mixed["metadata"]["source"]].header_labels == {
        "from": {"autos": 1, "bikes": 1}
    }
    assert by_source[ann["metadata"]["source"]].header_labels == {"from": {"autos": 3}}
    assert {r.header_labels["from"].get("bikes", 0) for r in results} == {0, 1, 2}


def test_header_keys_match_a_sender_however_the_address_is_written():
    from collections import Counter

    from kb.finetune.mail import header_key, header_label

    assert header_key("Ann Lee <Ann.Lee@Example.org>") == "ann.lee@example.org"
    assert header_key("ann.lee@example.org (Ann Lee)") == "ann.lee@example.org"
    assert header_key("  Some   Team ") == header_key("some team") == "some team"
    # a thread's subjects match: reply and forward prefixes are dropped
    assert header_key("Re: RE[2]: Fwd:Old  Corvettes") == header_key("old corvettes")
    assert header_key("Re: ") is None
    assert header_key("") is None and header_key(None) is None
    counts = Counter({"b": 1, "a": 3})
    line = header_label("reply-to").line(counts)
    assert line == "Labelled messages with the same Reply-To: a 3, b 1"


QUOTING = {  # label/file -> (From, body): whom each message quotes is on its attribution lines
    "autos/0.txt": ("Ann <ann@cars.example>", "Cars are fine."),
    "autos/1.txt": ("ann@cars.example (Ann)", "Still fine."),
    "autos/2.txt": (
        "ann@cars.example",
        "ann@CARS.example writes:\n> my own words\n"
        "In a previous article, dee@moto.example says:\n>> two wheels\nA reply.",
    ),
    "bikes/0.txt": ("cy@moto.example", "Bikes are fine."),
    "bikes/1.txt": (
        "Dee <dee@moto.example>",
        "In article <x1@news.example>, ann@cars.example (Ann) writes:\n> four wheels\n"
        ">cy@moto.example wrote:\n>> bikes\nA reply.",
    ),
    "bikes/2.txt": ("cy@moto.example", "Mail ann@cars.example for the manual."),
}


def test_quoted_labels_count_the_labels_of_the_authors_a_message_quotes(
    tmp_path, settings, tokenizer
):
    for folder in ("train", "test"):
        for name, (sender, body) in QUOTING.items():
            path = tmp_path / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"From: {sender}\nSubject: {folder} {name}\n\n{body}\n")
    options = PrepareOptions(neighbours=2, header_labels=("from", "quoted"), val_fraction=0)
    result = prepare_dataset(
        tmp_path / "train",
        tmp_path / "out",
        options=options,
        settings=settings,
        tokenizer=tokenizer,
    )
    tail = {
        "/".join(Path(r["metadata"]["source"]).parts[-2:]): neighbour_lines(r)[-2:]
        for r in jsonl(result.train_path)
    }
    quotes = "Labelled messages by the authors it quotes: "
    # Dee quotes Ann (three autos messages) and, one level deeper, Cy (two bikes messages)
    assert tail["bikes/1.txt"] == [
        "Labelled messages with the same From: none",
        quotes + "autos 3, bikes 2",
    ]
    # Ann quoting herself does not count; Dee's one message does
    assert tail["autos/2.txt"][-1] == quotes + "bikes 1"
    # an address outside an attribution line is not a quote
    assert tail["bikes/2.txt"][-1] == quotes + "none"
    assert tail["autos/0.txt"][-1] == quotes + "none"

    # a held-out split counts the training folder, and the classifier rebuilds the prompts
    held = jsonl(
        prepare_dataset(
            tmp_path / "test",
            tmp_path / "held",
            options=PrepareOptions(
                neighbours=2,
                header_labels=("from", "quoted"),
                neighbours_from=str(tmp_path / "train"),
                val_fraction=0,
            ),
            settings=settings,
            tokenizer=tokenizer,
        ).train_path
    )
    dee = next(r for r in held if r["metadata"]["source"].endswith("bikes/1.txt"))
    assert neighbour_lines(dee)[-1] == quotes + "autos 3, bikes 2"
    results = replayed(result.train_path, held, settings, tokenizer)
    got = next(c for r, c in zip(held, results, strict=True) if r is dee)
    assert got.header_labels == {"from": {"bikes": 1}, "quoted": {"autos": 3, "bikes": 2}}


def test_quoted_senders_are_read_from_attribution_lines():
    from kb.finetune.mail import quoted_senders

    text = (
        "From: Ed <ed@a.example>\nSubject: Re: wrote: in the subject, x@subject.example\n\n"
        "In article <1993Apr1.0@b.example>, Bo@B.example (Bo) writes:\n"
        "> In a previous article, cy@c.example says:\n"
        "> >ed@a.example wrote:\n"
        "| dee@d.example said:\n"
        "bo@b.example writes:\n"
        "Write to fay@f.example (not a quote).\n"
    )
    # the message id on the first line is address-shaped and kept: it matches no sender
    assert quoted_senders(text, "ed@A.example (Ed)") == [
        "1993apr1.0@b.example",
        "bo@b.example",
        "cy@c.example",
        "dee@d.example",
    ]
    assert quoted_senders("gus@g.example wrote:\n> hi") == ["gus@g.example"]  # not a message
    assert quoted_senders("No quotes here, hal@h.example.") == []


def test_the_neighbours_vote_is_their_majority_and_a_tie_goes_to_the_nearest():
    from kb.finetune.neighbours import majority_label

    assert majority_label(["b", "a", "a"]) == "a"
    assert majority_label(["b", "a", "a", "b"]) == "b"  # 2-2: the nearest's label
    assert majority_label(["a", "b"]) == "a" and majority_label(["c"]) == "c"


def test_neighbour_options_are_checked(tmp_path, settings, tokenizer):
    folder = topic_folder(tmp_path / "train", "train")
    other = tmp_path / "other"
    for label in ("autos", "boats"):
        (other / label).mkdir(parents=True)
        (other / label / "0.txt").write_text(message("x", "text"))

    def prepare(**kwargs):
        return prepare_dataset(
            folder,
            tmp_path / "out",
            options=build(PrepareOptions, {"val_fraction": 0, **kwargs}),
            settings=settings,
            tokenizer=tokenizer,
        )

    with pytest.raises(InvalidInput, match="no {neighbours} field"):
        prepare(neighbours=2, template="Label this: {text}")
    with pytest.raises(InvalidInput, match="pass --neighbours K"):
        prepare(neighbours_from=str(folder))
    with pytest.raises(InvalidInput, match=r"^neighbours: .* less than or equal to 32 \(got 33\)"):
        prepare(neighbours=33)
    with pytest.raises(InvalidInput, match=r"neighbour_dropout: .* less than or equal to 1"):
        prepare(neighbours=2, neighbour_dropout=1.5)
    with pytest.raises(InvalidInput, match="hides neighbours but neighbours is 0"):
        prepare(neighbour_dropout=0.3)
    with pytest.raises(InvalidInput, match=r"header_labels \['from'\] add lines.*--neighbours"):
        prepare(header_labels=("from",))
    with pytest.raises(InvalidInput, match=r"\['from:'\] are not header names"):
        prepare(neighbours=2, header_labels=("subject", "from:"))
    # an option that measured no gain is gone: it is refused by name, not ignored
    with pytest.raises(InvalidInput, match="neighbour_search: Extra inputs are not permitted"):
        prepare(neighbours=2, neighbour_search="shown")
    with pytest.raises(InvalidInput, match=r"labels \['boats'\]"):
        prepare(neighbours=2, neighbours_from=str(other))
    with pytest.raises(InvalidInput, match="may use {labels}; it uses"):
        prepare(template="{neighbours} {text}")  # no --neighbours: the field is unknown


# --- validation --------------------------------------------------------------------------------


def test_chat_format_errors_are_reported_with_lines(tmp_path, tokenizer):
    good = [chat(f"question {i}?", f"answer {i}") for i in range(12)]
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        good
        + [
            {
                "messages": [
                    {"role": "human", "content": "hi"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            {"messages": [{"role": "user", "content": "only a question"}]},
            "this is not json",
            '["a", "list"]',
            {"messages": "hello"},
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},
            {**chat("extra key", "z"), "label": "x"},
            {
                "messages": [
                    {"role": "user", "content": "q", "mood": 1},
                    {"role": "assistant", "content": "a"},
                ]
            },
            chat("empty reply", "  "),
        ],
    )
    report = validate_file(path, tokenizer=tokenizer)
    expected = {
        "unknown_role": [13],
        "no_assistant_message": [14],
        "invalid_json": [15],
        "not_an_object": [16],
        "messages_not_list": [17],
        "missing_content": [18],
        "unknown_key": [19],
        "message_unknown_key": [20],
        "empty_completion": [21],
    }
    for code, lines in expected.items():
        assert issue(report, code).lines == lines, code
    assert "'human'" in issue(report, "unknown_role").message
    assert "line 13" in issue(report, "unknown_role").message
    assert not report.ok
    assert report.format == "chat"


def test_too_few_examples_is_an_error_and_under_100_a_warning(tmp_path, tokenizer):
    few = write_jsonl(tmp_path / "few.jsonl", [chat(f"q{i}?", f"a {i}") for i in range(5)])
    report = validate_file(few, tokenizer=tokenizer)
    assert "too_few_examples" in {i.code for i in report.errors}
    some = write_jsonl(tmp_path / "some.jsonl", [chat(f"q{i}?", f"a {i}") for i in range(30)])
    report = validate_file(some, tokenizer=tokenizer)
    assert report.ok and [i.code for i in report.warnings] == ["few_examples"]
    assert report.task_type == "conditional generation"


def test_legacy_completion_advice(tmp_path, tokenizer):
    records = [
        {"prompt": f"Tell me about item {i}", "completion": f"It is number {i}"} for i in range(20)
    ]
    report = validate_file(write_jsonl(tmp_path / "legacy.jsonl", records), tokenizer=tokenizer)
    assert report.format == "completion"
    assert {"no_prompt_separator", "completion_no_leading_space", "no_stop_sequence"} <= {
        i.code for i in report.warnings
    }
    assert report.ok
    assert "common_prompt_prefix" in report.codes()  # "Tell me about item " is 19 chars


def test_classification_task_type_and_balance(tmp_path, tokenizer):
    records = [chat(f"review {i}", "positive" if i % 5 else "negative") for i in range(40)]
    report = validate_file(write_jsonl(tmp_path / "cls.jsonl", records), tokenizer=tokenizer)
    assert report.task_type == "classification"
    assert report.label_counts == {"positive": 32, "negative": 8}
    assert "class_imbalance" in {i.code for i in report.warnings}


def test_leakage_against_eval_file(tmp_path, tokenizer):
    train = [chat(f"What is the capital of country {i}?", f"City {i}") for i in range(20)]
    held_out = [
        chat("what is the CAPITAL of country 3", "City 3"),  # same prompt, other case/punctuation
        chat("What is the capital of country 7?", "Another answer"),
        chat("A question only the eval file has?", "x"),
    ]
    train_path = write_jsonl(tmp_path / "train.jsonl", train)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", held_out)
    report = validate_file(train_path, eval_file=eval_path, tokenizer=tokenizer)
    leak = issue(report, "eval_leakage")
    assert leak.lines == [4, 8]
    assert str(eval_path) in leak.message
    assert report.counts["leaked"] == 2
    assert not report.ok
    assert validate_file(train_path, tokenizer=tokenizer).ok


def test_parse_qa_handles_common_model_outputs():
    assert parse_qa("Question: What is X?\nAnswer: X is Y.")[0].answer == "X is Y."
    pair, _ = parse_qa("Sure!\n**Question:** Where is the valve?\n**Answer:** Under the seat.")
    assert (pair.question, pair.answer) == ("Where is the valve?", "Under the seat.")
    pair, _ = parse_qa('{"question": "Who wrote it?", "answer": "Ann."}')
    assert pair.answer == "Ann."
    pair, _ = parse_qa("Q: How many wheels does it have?\nA: Two.\nQuestion: Another one?")
    assert pair.answer == "Two."
    assert parse_qa("Question: <the question>\nAnswer: <the answer>")[0] is None
    assert parse_qa("I cannot help with that.")[0] is None
    assert parse_qa("Question: What?\nAnswer: ")[0] is None
    assert parse_qa("Question: Question: Is it red?\nAnswer: Yes.")[0].question == "Is it red?"
    assert parse_qa("Question: Is it red?\nAnswer: The answer is:")[0] is None


# --- collections -------------------------------------------------------------------------------


class ScriptedGenerators:
    """A registry-shaped stand-in that replies from a script, to test parsing and skipping."""

    def __init__(self, replies: list[str]):
        self.replies = replies
        self.calls: list[list[dict]] = []

    def get(self, name: str):
        return self

    def generate(self, messages, max_new_tokens=256):
        self.calls.append(messages)
        reply = self.replies[(len(self.calls) - 1) % len(self.replies)]
        return type("Reply", (), {"text": reply})()


def test_question_answer_pairs_from_a_collection(tmp_path, settings, tokenizer):
    from kb.service import KnowledgeBase
    from kb.types import Document, Section

    kb = KnowledgeBase(settings.model_copy(update={"data_dir": tmp_path / "kb"}))
    docs = [
        Document(
            source=f"doc{i}.txt",
            sections=[
                Section(f"Document {i} explains that part {i} needs oil every {i} weeks. " * 3)
            ],
        )
        for i in range(6)
    ]
    kb.ingest_documents(docs, collection="manuals")
    generators = ScriptedGenerators(
        ["Question: How often does the part need oil?\nAnswer: Every few weeks.", "no idea"]
    )
    options = PrepareOptions(from_collection="manuals", generate_with="scripted", max_examples=4)
    result = prepare_dataset(
        None,
        tmp_path / "out",
        options=options,
        settings=settings,
        kb=kb,
        generators=generators,
        tokenizer=tokenizer,
    )
    records = jsonl(result.train_path) + jsonl(result.validation_path)
    assert len(records) == 3  # 6 chunks tried, every second reply unusable
    assert sum("unusable model output" in s.reason for s in result.skipped) == 3
    chunk_ids = set()
    for record in records:
        assert record["messages"][-1]["content"] == "Every few weeks."
        assert record["metadata"]["source"].startswith("doc")
        chunk_ids.update(record["metadata"]["chunk_ids"])
    assert len(chunk_ids) == 3
    assert "Passage:" in generators.calls[0][-1]["content"]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["source"]["collection"]["name"] == "manuals"
    assert manifest["source"]["collection"]["generation"] >= 1


@pytest.mark.slow
def test_generate_with_bundled_model(tmp_path, settings, tokenizer):
    generators_module = pytest.importorskip("kb.generators")
    source = products_csv(tmp_path / "products.csv")
    options = PrepareOptions(
        template="Write one sentence about {name}, a {type}.",
        generate_with=settings.default_generator,
        max_examples=2,
        max_new_tokens=16,
    )
    result = prepare_dataset(
        source,
        tmp_path / "out",
        options=options,
        settings=settings,
        generators=generators_module.GeneratorRegistry(settings),
        tokenizer=tokenizer,
    )
    records = jsonl(result.train_path) + jsonl(result.validation_path)
    assert len(records) + len(result.skipped) == 2
    for record in records:
        assert record["messages"][-1]["content"].strip()
        assert record["metadata"]["generated_by"] == settings.default_generator


# --- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli(settings, monkeypatch):
    from kb.cli.finetune import finetune_app

    monkeypatch.setenv("KB_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    return lambda *args: runner.invoke(finetune_app, [str(a) for a in args])


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_validate_exit_codes(tmp_path, cli):
    warnings_only = write_jsonl(
        tmp_path / "w.jsonl", [chat(f"q {i}?", f"a {i}") for i in range(20)]
    )
    result = cli("validate", warnings_only, "--json")
    assert result.exit_code == 0, result.output
    out = last_json(result)
    assert out["ok"] is True and out["counts"]["examples"] == 20
    assert [w["code"] for w in out["warnings"]] == ["few_examples"]

    broken = write_jsonl(
        tmp_path / "b.jsonl", [chat(f"q {i}?", f"a {i}") for i in range(20)] + ["{"]
    )
    result = cli("validate", broken, "--json", "--max-tokens", 8)
    assert result.exit_code == 1
    out = last_json(result)
    assert out["ok"] is False
    assert {e["code"] for e in out["errors"]} == {"invalid_json", "too_long"}
    assert out["errors"][0]["lines"] == [21]
    assert out["token_stats"]["limit"] == 8


def test_cli_prepare_json_and_bad_input(tmp_path, cli):
    source = products_csv(tmp_path / "products.csv")
    out_dir = tmp_path / "data"
    result = cli(
        "prepare", source, "--out", out_dir, "--template", "Describe {name}",
        "--completion-column", "description", "--val-fraction", 0.2, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = last_json(result)
    assert out["counts"] == {"examples": 12, "train": 10, "validation": 2, "skipped": 0}
    assert out["report"]["warnings"][0]["code"] == "few_examples"
    assert (out_dir / "manifest.json").is_file()

    result = cli("prepare", source, "--out", out_dir, "--template", "Describe {colour}", "--json")
    assert result.exit_code == 1
    assert "colour" in last_json(result)["error"]["message"]

    result = cli("validate", tmp_path / "missing.jsonl")
    assert result.exit_code == 1

    folder = topic_folder(tmp_path / "topics", "train")
    result = cli(
        "prepare", folder, "--out", tmp_path / "nb", "--neighbours", 2, "--neighbours-from",
        folder, "--neighbour-tokens", 5, "--neighbour-dropout", 0.25, "--val-fraction", 0,
        "--header-labels", "from, subject", "--json",
    )  # fmt: skip
    # eight examples are written; too few to train on is the one error (exit code 1)
    assert [e["code"] for e in last_json(result)["report"]["errors"]] == ["too_few_examples"]
    shown = sorted(len(neighbour_lines(r)) for r in jsonl(tmp_path / "nb" / "train.jsonl"))
    assert shown == [1, 1] + [4] * 6  # a quarter show only `(none shown)`; 2 and two counts
    manifest = json.loads((tmp_path / "nb" / "manifest.json").read_text())
    assert manifest["neighbour_search"] == "whole"
    assert manifest["options"]["header_labels"] == ["from", "subject"]


# --- tables validated by their rows ------------------------------------------------------------


def rows_csv(path: Path) -> Path:
    """Twelve facts, the second with a two-line question (so rows and lines part ways), then a
    duplicate (row 14) and an empty answer (row 15)."""
    rows = [["question", "answer"]]
    rows += [
        [f"What is fact {i}?" + ("\nIn two lines." if i == 1 else ""), f"Fact {i}."]
        for i in range(12)
    ]
    rows += [["What is fact 3?", "Fact 3."], ["Why is the sky blue?", ""]]
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_validate_reports_a_csv_by_its_rows(tmp_path, tokenizer, cli):
    source = rows_csv(tmp_path / "facts.csv")
    report = validate_file(source, tokenizer=tokenizer)
    assert report.unit == "row" and report.format == "chat"
    assert issue(report, "duplicate_examples").lines == [14]
    assert issue(report, "empty_completion").lines == [15]
    assert f"{source}, row 15: an empty completion" in issue(report, "empty_completion").message
    assert report.counts["examples"] == 14 and not report.ok
    # the CLI reads the CSV instead of answering that it is not JSON Lines
    result = cli("validate", source, "--json")
    assert result.exit_code == 1, result.output
    out = last_json(result)
    assert out["unit"] == "row" and "invalid_json" not in {e["code"] for e in out["errors"]}
    assert [e["lines"] for e in out["errors"] if e["code"] == "empty_completion"] == [[15]]
    # the columns are found as prepare finds them, or named
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(source.read_text().replace("question,answer", "ask,reply", 1))
    result = cli("validate", renamed, "--json")
    assert result.exit_code == 1 and "--prompt-column" in last_json(result)["error"]["message"]
    result = cli(
        "validate", renamed, "--prompt-column", "ask", "--completion-column", "reply", "--json"
    )
    assert [e["lines"] for e in last_json(result)["errors"]] == [[15]]


def test_validate_reports_a_workbook_by_its_sheet_rows(tmp_path, tokenizer):
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Pairs"
    sheet.append([None])
    sheet.append([None])  # the header is on row 3 of the sheet
    sheet.append(["prompt", "completion"])
    for i in range(12):
        sheet.append([f"Add {i} and {i}.", i + i])
    sheet.append(["Add 5 and 5.", 11])  # row 16: the same prompt as row 9, another answer
    sheet.append(["Say nothing.", None])  # row 17
    path = tmp_path / "sums.xlsx"
    workbook.save(path)
    report = validate_file(path, tokenizer=tokenizer)
    assert report.path == f"{path} (sheet Pairs)"
    assert issue(report, "conflicting_completions").lines == [16]
    assert issue(report, "empty_completion").lines == [17]

    # a JSON list counts items; one that is not an object is what prepare would skip
    items = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(11)] + ["loose text"]
    listed = tmp_path / "pairs.json"
    listed.write_text(json.dumps(items))
    report = validate_file(listed, tokenizer=tokenizer)
    assert report.unit == "item" and issue(report, "skipped").lines == [12]
    assert "item 12: an entry `kb finetune prepare` would skip (not a JSON object" in (
        issue(report, "skipped").message
    )


# --- one spec per command: the CLI and the HTTP API show and check an option alike ------------


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    from tests.conftest import live_server

    root = tmp_path_factory.mktemp("ft-api")
    (root / "roots").mkdir()
    settings = Settings(data_dir=root / "data", ingest_roots=[root / "roots"])
    with live_server(settings, warm=False) as live:
        yield live


def flat(text: str) -> str:
    """CLI help as one line: the box drawing gone and wrapped lines joined."""
    return " ".join(text.replace("│", " ").split())


def cli_help(command: str) -> str:
    from kb.cli.finetune import finetune_app

    # wide enough that only the help column wraps, so flat() joins each option's text
    shown = CliRunner().invoke(finetune_app, [command, "--help"], env={"COLUMNS": "250"})
    return flat(shown.output)


def test_an_option_shows_the_same_help_and_bounds_in_cli_help_and_openapi(api_server):
    import httpx

    from kb.cli.specs import options_of
    from kb.finetune.options import EmbeddingsOptions, FineTuneOptions

    schemas = httpx.get(f"{api_server.url}/openapi.json").json()["components"]["schemas"]
    for command, spec, body in (
        ("prepare", PrepareOptions, "PrepareRequest"),
        ("run", FineTuneOptions, "FineTuneRequest"),
        ("embeddings", EmbeddingsOptions, "EmbeddingsOptions"),
    ):
        shown = cli_help(command)
        properties = schemas[body]["properties"]
        for option in options_of(spec):
            field = spec.model_fields[option.name]
            assert field.description, f"{option.name} has no help"
            assert properties[option.name]["description"] == field.description
            assert f"{option.flags[0]} " in shown and flat(option.help) in shown, option.name
    neighbours = schemas["PrepareRequest"]["properties"]["neighbours"]
    assert (neighbours["minimum"], neighbours["maximum"]) == (0, 32)
    assert "[0<=x<=32]" in cli_help("prepare")
    # the options that measured no gain are gone from both edges
    assert "neighbour_search" not in schemas["PrepareRequest"]["properties"]
    assert "token_dropout" not in schemas["FineTuneRequest"]["properties"]
    assert "both_views" not in schemas["ClassifyRequest"]["properties"]
    assert "--neighbour-search" not in cli_help("prepare")


def test_an_out_of_bounds_option_gets_the_same_error_from_cli_and_http(tmp_path, api_server, cli):
    import httpx

    source = api_server.settings.ingest_roots[0] / "pets"
    for label in ("cats", "dogs"):
        (source / label).mkdir(parents=True, exist_ok=True)
        (source / label / "0.txt").write_text(f"a {label} text")
    said = "neighbours: Input should be less than or equal to 32 (got 40)"
    answer = httpx.post(
        f"{api_server.url}/finetune/datasets/prepare",
        json={"name": "pets", "source": "pets", "neighbours": 40},
    )
    assert answer.status_code == 422 and said in answer.json()["error"]["message"]
    result = cli("prepare", source, "--out", tmp_path / "out", "--neighbours", 40, "--json")
    assert result.exit_code == 1
    assert last_json(result)["error"]["message"] == f"--{said}"
    assert not (tmp_path / "out").exists()  # refused before any work
    # a rule between options reads the same on both edges too
    answer = httpx.post(
        f"{api_server.url}/finetune/datasets/prepare",
        json={"name": "pets", "source": "pets", "header_labels": ["from"]},
    )
    result = cli("prepare", source, "--out", tmp_path / "out", "--header-labels", "from", "--json")
    rule = last_json(result)["error"]["message"]
    assert rule.startswith("header_labels ['from'] add lines") and rule in answer.text
