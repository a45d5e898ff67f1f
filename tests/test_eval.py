"""Evaluation: exact retrieval metrics, the BEIR loader, answer metrics and the per-mode runner,
records (save, list, load, compare), and `kb eval retrieval` end to end on a real KnowledgeBase."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from kb.errors import InvalidInput, ModeUnavailable, NotFound
from kb.eval.answers import (
    MAX_ANSWER_WORDS,
    AnswerEvalSpec,
    AnswerOutcome,
    answer_words,
    citation_scores,
    contains_gold,
    exact_match,
    label_correct,
    load_questions,
    normalize_answer,
    percentile,
    run_answer_eval,
    source_matches,
    token_f1,
)
from kb.eval.beir import beir_documents, default_collection_name, load_beir
from kb.eval.metrics import (
    average_precision_at_k,
    evaluate,
    mrr_at_k,
    ndcg_at_k,
    parse_metric,
    per_query_scores,
    ranked,
    recall_at_k,
)
from kb.eval.records import compare_evals, list_evals, load_eval, save_eval
from kb.settings import Settings

# --- retrieval metrics, checked exactly against hand computations ---------------------------


def test_ndcg_binary_relevance_ranks_1_and_3_of_2_relevant():
    run = {"q": {"d1": 0.9, "x": 0.8, "d2": 0.7, "y": 0.6}}
    qrels = {"q": {"d1": 1, "d2": 1}}
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert evaluate(run, qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx(expected, abs=1e-12)


def test_ndcg_uses_linear_graded_gains_and_ideal_order_from_qrels():
    # the grade-1 doc first, the grade-2 doc second; the ideal puts the grade-2 doc first
    ranking = ["b", "a"]
    rels = {"a": 2, "b": 1, "c": 0}
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranking, rels, 10) == pytest.approx(dcg / idcg, abs=1e-12)
    # a relevant doc judged but never retrieved still counts in the ideal DCG
    assert ndcg_at_k(["b"], rels, 10) == pytest.approx(1 / idcg, abs=1e-12)


def test_ndcg_ignores_relevant_docs_past_the_cutoff():
    ranking = [f"n{i}" for i in range(10)] + ["rel"]
    assert ndcg_at_k(ranking, {"rel": 1}, 10) == 0.0
    assert ndcg_at_k(ranking, {"rel": 1}, 11) == pytest.approx(1 / math.log2(12), abs=1e-12)


def test_recall_at_k_counts_relevant_in_top_k_over_all_relevant():
    ranking = ["a", "x", "b", "y", "z", "c"]
    rels = {"a": 1, "b": 2, "c": 1, "d": 1}  # d is never retrieved
    assert recall_at_k(ranking, rels, 1) == 1 / 4
    assert recall_at_k(ranking, rels, 5) == 2 / 4
    assert recall_at_k(ranking, rels, 10) == 3 / 4
    assert recall_at_k(ranking, {"a": 0}, 10) == 0.0


def test_mrr_at_10_is_reciprocal_rank_of_first_relevant_within_10():
    assert mrr_at_k(["x", "y", "a", "b"], {"a": 1, "b": 1}, 10) == 1 / 3
    assert mrr_at_k([f"n{i}" for i in range(10)] + ["a"], {"a": 1}, 10) == 0.0
    assert mrr_at_k(["a"], {"a": 0}, 10) == 0.0  # grade 0 is not relevant


def test_average_precision_divides_by_all_relevant():
    # relevant at ranks 1 and 3, a third relevant doc never retrieved
    ranking = ["a", "x", "b", "y"]
    rels = {"a": 1, "b": 1, "c": 1}
    assert average_precision_at_k(ranking, rels, 100) == pytest.approx(
        (1 / 1 + 2 / 3) / 3, abs=1e-12
    )
    # the cutoff drops hits past it but keeps the denominator
    assert average_precision_at_k(ranking, rels, 2) == pytest.approx(1 / 3, abs=1e-12)


def test_ties_are_broken_by_doc_id_ascending():
    assert ranked({"b": 1.0, "c": 2.0, "a": 1.0}) == ["c", "a", "b"]
    run = {"q": {"z": 0.5, "a": 0.5}}
    assert evaluate(run, {"q": {"z": 1}}, ["mrr@10"])["mrr@10"] == 0.5
    assert evaluate(run, {"q": {"a": 1}}, ["mrr@10"])["mrr@10"] == 1.0


def test_evaluate_averages_over_judged_queries_and_skips_queries_without_relevant_docs():
    run = {
        "q1": {"a": 3.0, "b": 2.0},  # relevant at rank 1: perfect
        "q2": {"x": 3.0, "c": 2.0},  # relevant at rank 2
        "q3": {"a": 1.0},  # judged, but nothing relevant: skipped
    }
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}, "q3": {"a": 0}, "q4": {"d": 1}}  # q4 missing from run
    per_query = per_query_scores(run, qrels)
    assert sorted(per_query) == ["q1", "q2", "q4"]
    assert per_query["q4"] == dict.fromkeys(per_query["q4"], 0.0)
    scores = evaluate(run, qrels)
    assert scores["mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3, abs=1e-12)
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3, abs=1e-12)
    assert scores["recall@1"] == pytest.approx(1 / 3, abs=1e-12)
    assert scores["recall@5"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["map@100"] == pytest.approx((1 + 1 / 2) / 3, abs=1e-12)
    assert list(scores) == [
        "ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "map@100",
    ]  # fmt: skip


def test_unknown_metric_names_the_value_and_the_choices():
    assert parse_metric("recall@100") == ("recall", 100)
    with pytest.raises(InvalidInput, match=r"'precision@5'.*ndcg, recall, mrr, map"):
        parse_metric("precision@5")


# --- BEIR loader ----------------------------------------------------------------------------

BEIR_CORPUS = {
    "d1": ("Photosynthesis", "Green plants turn sunlight, water and carbon dioxide into glucose and oxygen inside chloroplasts."),
    "d2": ("Volcanic eruptions", "Magma rises through the crust of the earth and erupts from a volcano as lava, ash and hot gases."),
    "d3": ("Neural networks", "Deep learning models are trained with backpropagation and stochastic gradient descent on GPUs."),
    "d4": ("Espresso", "Espresso coffee is brewed by forcing pressurised hot water through finely ground coffee beans."),
    "d5": ("Emperor penguins", "Emperor penguins breed during the Antarctic winter and huddle together against the freezing wind."),
    "d6": ("Medieval castles", "Stone castles with moats, towers and drawbridges protected medieval lords from siege armies."),
}  # fmt: skip
BEIR_QUERIES = {
    "q1": "How do plants make glucose from sunlight?",
    "q2": "What comes out of a volcano when it erupts?",
    "q3": "How is espresso coffee brewed?",
    "q4": "How do penguins survive the Antarctic winter?",
    "q9": "A query judged with nothing relevant",
}


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as f:
        for doc_id, (title, text) in BEIR_CORPUS.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for qid, text in BEIR_QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    test = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td4\t1\nq4\td5\t2\nq9\td3\t0\n"
    (root / "qrels" / "test.tsv").write_text(test)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def test_load_beir_reads_corpus_queries_and_the_split_qrels(tmp_path):
    root = write_beir(tmp_path / "tiny")
    test = load_beir(root, "test")
    assert sorted(test.queries) == ["q1", "q2", "q3", "q4", "q9"]
    assert test.qrels["q4"] == {"d5": 2}
    assert test.corpus["d4"].title == "Espresso"
    assert sorted(load_beir(root, "train").queries) == ["q1"]
    docs = {d.source: d for d in beir_documents(test.corpus)}
    assert docs["d1"].text == "Photosynthesis\n\n" + BEIR_CORPUS["d1"][1]
    assert docs["d1"].title == "Photosynthesis"
    omitted = next(beir_documents(test.corpus, "omit"))
    assert omitted.text == BEIR_CORPUS["d1"][1]
    assert default_collection_name(root) == "beir-tiny"
    assert default_collection_name(Path("../shared/data/scifact")) == "beir-scifact"


def test_load_beir_errors_name_the_missing_file_and_the_fix(tmp_path):
    root = write_beir(tmp_path / "tiny")
    with pytest.raises(InvalidInput, match=r"qrels/dev\.tsv.*--split"):
        load_beir(root, "dev")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(
        InvalidInput, match=r"test\.tsv:2 .*query-id<TAB>corpus-id<TAB>integer score"
    ):
        load_beir(root, "test")


# --- answer metrics -------------------------------------------------------------------------


def test_squad_normalisation_exact_match_and_token_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat sat.", ["A dog", "Cat sat"]) == 1.0
    assert exact_match("cat", ["cat sat"]) == 0.0
    # pred {cat, sat} vs gold {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("The cat sat", ["cat sat down"]) == pytest.approx(0.8, abs=1e-12)
    assert token_f1("cat sat", ["dog", "cat sat down"]) == pytest.approx(0.8, abs=1e-12)
    assert token_f1("nothing shared", ["cat"]) == 0.0


def test_label_accuracy_equal_or_the_only_label_named():
    labels = ["rec.autos", "rec.motorcycles"]
    assert label_correct("rec.autos", "rec.autos", labels)
    assert label_correct("This post belongs to rec.autos.", "rec.autos", labels)
    assert not label_correct("rec.autos or rec.motorcycles", "rec.autos", labels)
    assert not label_correct("rec.motorcycles", "rec.autos", labels)
    assert label_correct("Positive", "positive", ["positive", "negative"])
    assert not label_correct("it is not clear", "positive", ["positive", "negative"])


def test_citation_matching_by_path_suffix_at_a_boundary():
    assert source_matches("/data/docs/a.md", "docs/a.md")
    assert source_matches("a.md", "a.md")
    assert not source_matches("/data/docs/xa.md", "a.md")
    assert source_matches("/data/table.csv#3", "table.csv")
    assert citation_scores(["/x/a.md", "/x/b.md", "/x/a.md"], ["a.md", "c.md"]) == (0.5, 0.5)
    assert citation_scores([], ["a.md"]) == (None, 0.0)
    assert citation_scores(["a.md"], []) == (None, None)


def test_source_root_matches_by_the_path_relative_to_it():
    root = "/data/sqlite/html"
    assert source_matches("/data/sqlite/html/backup.html", "backup.html", root)
    assert not source_matches("/data/sqlite/html/c3ref/backup.html", "backup.html", root)
    assert source_matches("/data/sqlite/html/c3ref/backup.html", "c3ref/backup.html", root)
    # sources shown relative to the ingested folder are compared as they are
    assert source_matches("c3ref/open.html", "c3ref/open.html", root)
    assert not source_matches("c3ref/backup.html", "backup.html", root)
    assert not source_matches("/elsewhere/backup.html", "backup.html", root)
    # without a root, the suffix rule cannot tell them apart
    assert source_matches("/data/sqlite/html/c3ref/backup.html", "backup.html")


def test_gold_string_counts_in_answers_of_at_most_80_words():
    assert contains_gold("The maximum is 281  TERABYTES [1].", ["281 terabytes", "256 tebibytes"])
    assert contains_gold("about 1 billion\nbytes", ["1,000,000,000", "1 billion bytes"])
    assert not contains_gold("It is 32766.", ["32767"])
    padding = " ".join(["word"] * 78)
    assert answer_words(f"{padding} is 32766 [1][2, 3]") == 80  # citation marks are not words
    assert contains_gold(f"{padding} is 32766 [1][2, 3]", ["32766"])
    assert not contains_gold(f"{padding} is really 32766", ["32766"])  # 81 words
    assert MAX_ANSWER_WORDS == 80


def write_sqlite_style_questions(folder: Path) -> Path:
    """The sqlite-docs layout: qa.jsonl (answers, gold_pages, kind) and unanswerable.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    qa = [
        {"id": "sq01", "question": "How big may a string be?", "gold_pages": ["limits.html"], "answers": ["1,000,000,000", "1 billion"], "kind": "number"},
        {"id": "sq02", "question": "Which page backs up?", "gold_pages": ["backup.html", "c3ref/backup_finish.html"], "answers": ["sqlite3_backup_init"], "kind": "how-to"},
    ]  # fmt: skip
    unanswerable = [
        {"id": "sqx1", "question": "How do I write a stored procedure?", "why": "not in the manual"}
    ]
    for name, lines in (("qa.jsonl", qa), ("unanswerable.jsonl", unanswerable)):
        (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_sqlite_docs_format_reads_as_it_is(tmp_path):
    folder = write_sqlite_style_questions(tmp_path / "sqlite-docs")
    questions = load_questions(folder)  # a folder: its *.jsonl files, in name order
    assert [q.id for q in questions] == ["sq01", "sq02", "sqx1"]
    assert questions[0].answers == ["1,000,000,000", "1 billion"]
    assert questions[1].sources == ["backup.html", "c3ref/backup_finish.html"]
    assert [q.unanswerable for q in questions] == [False, False, True]
    assert questions[2].answers == [] and questions[2].sources == []
    both = load_questions([folder / "unanswerable.jsonl", folder / "qa.jsonl"])
    assert [q.id for q in both] == ["sqx1", "sq01", "sq02"]

    with pytest.raises(InvalidInput, match=r"repeats id 'sq01'"):
        load_questions([folder / "qa.jsonl", folder / "qa.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "unanswerable": True, "answers": ["x"]}) + "\n")
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:1 is marked unanswerable"):
        load_questions(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"no \*\.jsonl question file in folder"):
        load_questions(tmp_path / "empty")


def test_answer_runner_scores_gold_strings_support_and_unanswerable_questions(tmp_path):
    folder = write_sqlite_style_questions(tmp_path / "sqlite-docs")
    root = "/manual/html"
    answers = {
        "How big may a string be?": AnswerOutcome(
            "At most 1 billion bytes [1].", ["/manual/html/limits.html"],
            supported_share=1.0, latency_s=1.0,
        ),
        "Which page backs up?": AnswerOutcome(
            "Call sqlite3_backup_init [2] as [7] says.", ["/manual/html/c3ref/backup.html"],
            supported_share=0.5, stray_citations=[7], latency_s=3.0,
        ),
        "How do I write a stored procedure?": AnswerOutcome(
            "The documents do not cover this question.", supported_share=None, latency_s=2.0
        ),
    }  # fmt: skip
    spec = AnswerEvalSpec(questions=folder, modes=["rag"], source_root=root)
    record = run_answer_eval(lambda q, mode: answers[q], spec)
    rag = record.metrics["rag"]
    assert rag["gold_answer_rate"] == 1.0  # both answerable answers hold a gold string
    # sq02 cites c3ref/backup.html, which is not its gold backup.html under the root
    assert rag["gold_citation_rate"] == 0.5
    assert rag["supported_share"] == 0.75
    assert rag["unanswerable_not_covered_rate"] == 1.0  # the model said the sentence itself
    assert rag["not_covered_rate"] == 0.0
    assert rag["stray_citation_rate"] == pytest.approx(1 / 3)
    assert rag["answer_words_p50"] == 5.0  # 6 and 4 words, citation marks left out
    assert rag["latency_p50_s"] == 2.0
    assert record.rows[2]["gold"]["unanswerable"] is True
    assert record.spec["source_root"] == root


def test_outcome_reads_cited_sources_and_citations_of_passages_not_given():
    from kb.answering import AnswerResult
    from kb.eval.answers import outcome_from_result
    from kb.prompting import extract_citations
    from kb.types import Passage

    passages = [
        Passage(1, "d1", "limits.html", "Strings are at most 1,000,000,000 bytes.", 0.9, 0, 40),
        Passage(2, "d2", "about.html", "SQLite is small.", 0.5, 0, 16),
    ]
    answer = "A billion bytes [1], see also [3] and [4, 1]."
    result = AnswerResult(question="q", mode="rag", answer=answer, passages=passages)
    result.citations = extract_citations(answer, passages)
    outcome = outcome_from_result(result, latency_s=0.25)
    assert outcome.cited_sources == ["limits.html"]
    assert outcome.stray_citations == [3, 4]
    assert outcome.latency_s == 0.25


def test_percentile_interpolates_linearly():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85, abs=1e-12)
    assert percentile([], 50) is None


# --- the per-mode runner with a deterministic answer function --------------------------------

QUESTIONS = [
    {"id": "a", "question": "Which forum is this post from: my carburetor leaks", "label": "autos"},
    {"id": "b", "question": "Which forum is this post from: my chain is loose", "label": "motorcycles"},
    {"question": "What does espresso use?", "answer": ["hot water", "pressurised water"], "sources": ["docs/coffee.md"]},
    {"id": "c", "question": "Where do penguins breed?", "answer": "Antarctica", "sources": ["docs/penguins.md", "docs/birds.md"]},
]  # fmt: skip


class Oracle:
    """Deterministic modes: "base" answers without citations, "rag" cites, "finetuned" is missing."""

    def __call__(self, question: str, mode: str) -> AnswerOutcome:
        if mode == "finetuned":
            raise ModeUnavailable("no fine-tuned model registered: run `kb finetune train` first")
        if mode == "base":
            text = {"Which": "autos", "What": "coffee beans", "Where": "Antarctica"}[
                question.split()[0]
            ]
            return AnswerOutcome(text, latency_s=1.0, model="smollm2")
        if question.startswith("Which"):
            return AnswerOutcome("motorcycles or autos", latency_s=2.0, model="smollm2")
        if question.startswith("What"):
            cited = ["/kb/docs/coffee.md", "/kb/docs/tea.md"]
            return AnswerOutcome("Hot water!", cited, latency_s=3.0, model="smollm2")
        return AnswerOutcome("not covered", [], not_covered=True, latency_s=4.0, model="smollm2")


@pytest.fixture
def question_file(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    return path


def test_load_questions_fills_ids_and_names_bad_lines(tmp_path, question_file):
    questions = load_questions(question_file)
    assert [q.id for q in questions] == ["a", "b", "q3", "c"]
    assert questions[2].answers == ["hot water", "pressurised water"]
    assert questions[3].answers == ["Antarctica"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"answer": "x"}\n')
    with pytest.raises(InvalidInput, match=r'bad\.jsonl:2 has no "question"'):
        load_questions(bad)


def test_answer_runner_scores_each_mode_and_records_unavailable_ones(question_file):
    spec = AnswerEvalSpec(questions=question_file, modes=["base", "rag", "finetuned"], seed=7)
    record = run_answer_eval(Oracle(), spec, context={"collection": "docs", "generation": 3})
    assert list(record.metrics) == ["base", "rag"]
    assert "kb finetune train" in record.errors["finetuned"]
    base, rag = record.metrics["base"], record.metrics["rag"]
    # base: says "autos" to both forum questions, "coffee beans" wrong, "Antarctica" right
    assert base["label_accuracy"] == 0.5
    assert base["exact_match"] == pytest.approx(0.5) and base["f1"] == pytest.approx(0.5)
    assert base["citation_precision"] is None and base["citation_recall"] == 0.0
    assert base["grounded_rate"] == 0.0
    assert base["latency_mean_s"] == 1.0 and base["latency_p95_s"] == 1.0
    # rag: both labels named -> wrong; "Hot water!" EM; not covered on the penguin question
    assert rag["label_accuracy"] == 0.0
    assert rag["exact_match"] == pytest.approx(0.5)
    assert rag["citation_precision"] == 0.5  # only the espresso question cited anything
    assert rag["citation_recall"] == pytest.approx((1 + 0) / 2)
    assert rag["grounded_rate"] == pytest.approx(1 / 4)
    assert rag["not_covered_rate"] == pytest.approx(1 / 4)
    # latencies 2, 2, 3, 4: p50 between 2 and 3, p95 at 2.85 of the way -> 3 + 0.85
    assert rag["latency_p50_s"] == 2.5 and rag["latency_p95_s"] == pytest.approx(3.85)
    assert record.seed == 7 and record.context["generation"] == 3
    assert record.context["models_by_mode"] == {"base": ["smollm2"], "rag": ["smollm2"]}
    assert [row["id"] for row in record.rows] == ["a", "b", "q3", "c"]


def test_unknown_mode_names_the_choices(question_file):
    with pytest.raises(InvalidInput, match=r"'oracle'.*base, rag, .*rag\+finetuned"):
        run_answer_eval(Oracle(), AnswerEvalSpec(questions=question_file, modes=["oracle"]))


def test_answer_reports_have_one_row_per_question_and_records_round_trip(tmp_path, question_file):
    settings = Settings(data_dir=tmp_path / "data")
    spec = AnswerEvalSpec(questions=question_file, modes=["base", "rag"], name="first")
    record = run_answer_eval(Oracle(), spec, context={"collection": "docs", "generation": 3})
    folder = save_eval(settings, record)
    assert sorted(p.name for p in folder.iterdir()) == [
        "chart.png", "report.html", "report.md", "result.json",
    ]  # fmt: skip
    markdown = (folder / "report.md").read_text()
    per_question = markdown.split("## Per question", 1)[1]
    rows = [
        line for line in per_question.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(rows) == 1 + len(QUESTIONS)  # header + one row per question
    assert "| base answer | base scores | rag answer | rag scores |" in rows[0]
    assert rows[3].startswith("| q3 | What does espresso use? |") and "Hot water!" in rows[3]
    html = (folder / "report.html").read_text()
    rows_table = html.split('<table id="rows">', 1)[1]
    assert rows_table.count("<tr>") == 1 + len(QUESTIONS)
    assert "Where do penguins breed?" in rows_table
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    again = run_answer_eval(Oracle(), spec, context={"collection": "docs", "generation": 4})
    save_eval(settings, again)
    listed = list_evals(settings)
    assert {s.eval_id for s in listed} == {record.eval_id, again.eval_id}
    assert listed[0].collection == "docs" and listed[0].kind == "answers"
    loaded = load_eval(settings, record.eval_id)
    assert loaded.metrics == record.metrics and loaded.rows == record.rows
    comparison = compare_evals(loaded, load_eval(settings, again.eval_id))
    deltas = {(d.group, d.metric): d.delta for d in comparison.deltas}
    assert deltas[("rag", "f1")] == 0.0
    assert comparison.context_changes == {"generation": (3, 4)}


def test_record_lookups_name_the_bad_id_and_the_fix(tmp_path):
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(NotFound, match=r"'answers-nope'.*kb eval list"):
        load_eval(settings, "answers-nope")
    with pytest.raises(InvalidInput, match=r"'\.\./etc'"):
        load_eval(settings, "../etc")
    assert list_evals(settings) == []


# --- `kb eval retrieval` end to end on the real KnowledgeBase --------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kb.cli.eval import eval_app

    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(eval_app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    return invoke


def test_eval_retrieval_cli_on_a_tiny_beir_set(tmp_path, cli):
    root = write_beir(tmp_path / "tiny")
    out = cli("retrieval", "--beir", str(root), "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary["methods"]) == {"dense", "bm25", "hybrid"}
    for method, scores in summary["methods"].items():
        # every query has one unambiguous relevant doc: each method ranks it first
        assert scores["ndcg@10"] == 1.0, method
        assert scores["recall@1"] == 1.0 and scores["mrr@10"] == 1.0 and scores["map@100"] == 1.0
    first = summary["eval_id"]
    folder = tmp_path / "data" / "evals" / first
    record = json.loads((folder / "result.json").read_text())
    assert record["spec"]["query_count"] == 4  # q9 has no relevant doc
    assert record["context"]["collection"] == "beir-tiny"
    assert record["context"]["embedder"] and record["context"]["collection_generation"] >= 1
    assert record["context"]["ingest"]["added"] == len(BEIR_CORPUS)
    assert [row["methods"]["dense"]["top"][0] for row in record["rows"]] == ["d1", "d2", "d4", "d5"]
    markdown = (folder / "report.md").read_text()
    assert re.search(r"\| dense \| 1\.0000 \|", markdown)
    assert (folder / "chart.png").read_bytes()[:4] == b"\x89PNG"

    # re-running is cheap (nothing re-embedded), and a question file works on the collection
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "How is espresso coffee brewed?", "sources": ["d4"]}) + "\n"
    )
    out = cli(
        "retrieval", "--questions", str(questions), "-c", "beir-tiny", "--methods", "bm25", "--json"
    )
    second = json.loads(out.strip().splitlines()[-1])
    assert list(second["methods"]) == ["bm25"] and second["methods"]["bm25"]["recall@1"] == 1.0

    listed = json.loads(cli("list", "--json").strip().splitlines()[-1])
    assert {e["eval_id"] for e in listed["evals"]} == {first, second["eval_id"]}
    compared = json.loads(
        cli("compare", first, second["eval_id"], "--json").strip().splitlines()[-1]
    )
    deltas = {(d["group"], d["metric"]): d["delta"] for d in compared["deltas"]}
    assert deltas[("bm25", "ndcg@10")] == 0.0 and deltas[("dense", "ndcg@10")] is None
    shown = json.loads(cli("show", first, "--json").strip().splitlines()[-1])
    assert shown["eval_id"] == first


def test_eval_retrieval_cli_refuses_unknown_methods_before_touching_data(tmp_path, cli):
    root = write_beir(tmp_path / "tiny")
    with pytest.raises(InvalidInput, match=r"'sparse'.*dense, bm25, hybrid"):
        cli("retrieval", "--beir", str(root), "--methods", "dense,sparse")
    assert not (tmp_path / "data").exists()


def test_a_failing_question_is_recorded_and_the_rest_still_scored(tmp_path, question_file):
    from kb.errors import BackendError

    def flaky(question: str, mode: str) -> AnswerOutcome:
        if question.startswith("Where"):
            raise BackendError("endpoint http://localhost:11434 refused the connection: start it")
        return AnswerOutcome("hot water", latency_s=0.5)

    record = run_answer_eval(flaky, AnswerEvalSpec(questions=question_file, modes=["base"]))
    assert record.metrics["base"]["answered"] == 3.0
    assert record.metrics["base"]["exact_match"] == 1.0  # only the espresso question has answers
    assert "refused the connection" in record.rows[3]["modes"]["base"]["error"]
    folder = save_eval(Settings(data_dir=tmp_path), record)
    assert "error: endpoint http://localhost:11434 refused" in (folder / "report.md").read_text()


# --- `kb eval answers` end to end through the real answering core ---------------------------


@pytest.mark.slow  # loads and runs the bundled SmolLM2
def test_eval_answers_cli_runs_the_real_modes(tmp_path, cli, monkeypatch, model_cache):
    from kb.service import KnowledgeBase
    from kb.types import Document, Section
    from tests.conftest import data_dir_with_cache

    data_dir_with_cache(tmp_path / "data", model_cache)  # converted SmolLM2 weights, shared

    # a short answer budget keeps the bundled SmolLM2 quick on CPU
    generators = [{"name": "smollm2", "backend": "local", "model": "smollm2", "max_new_tokens": 8}]
    monkeypatch.setenv("KB_GENERATORS", json.dumps(generators))
    docs = [
        Document("notes/espresso.md", [Section("Espresso is brewed by forcing hot water through finely ground coffee.")]),
        Document("notes/penguins.md", [Section("Emperor penguins breed during the Antarctic winter.")]),
    ]  # fmt: skip
    KnowledgeBase(Settings()).ingest_documents(docs, collection="notes")
    questions = tmp_path / "questions.jsonl"
    lines = [
        {"id": "espresso", "question": "How is espresso brewed?", "answer": "hot water through coffee", "sources": ["espresso.md"]},
        {"id": "penguins", "question": "When do emperor penguins breed?", "answer": "in winter", "sources": ["notes/penguins.md"]},
    ]  # fmt: skip
    questions.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    out = cli(
        "answers",
        "--questions",
        str(questions),
        "--modes",
        "base,rag,finetuned",
        "-c",
        "notes",
        "--json",
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert list(summary["modes"]) == ["base", "rag"]
    assert "fine-tuned" in summary["errors"]["finetuned"]  # none is registered
    for mode in ("base", "rag"):
        assert summary["modes"][mode]["answered"] == 2
        assert summary["modes"][mode]["latency_p50_s"] > 0
        assert 0.0 <= summary["modes"][mode]["f1"] <= 1.0
    folder = tmp_path / "data" / "evals" / summary["eval_id"]
    record = json.loads((folder / "result.json").read_text())
    assert (
        record["context"]["collection"] == "notes"
        and record["context"]["collection_generation"] >= 1
    )
    assert record["context"]["models_by_mode"]["base"] == ["smollm2"] or record["context"][
        "models_by_mode"
    ]["base"][0].startswith("smollm2")
    rows = (folder / "report.md").read_text().split("## Per question", 1)[1]
    assert "| espresso | How is espresso brewed? |" in rows and "| penguins |" in rows
    assert (folder / "report.html").read_text().split('<table id="rows">')[1].count("<tr>") == 3
    assert (folder / "chart.png").stat().st_size > 1000
