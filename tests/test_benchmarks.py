"""Each performance benchmark runs end to end on a tiny input and writes the JSON it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import data_dir_with_cache, needs_shared_data

ROOT = Path(__file__).resolve().parents[1]

#: each test runs a benchmark script end to end: the full suite's (scripts/test.sh), not the fast lane
pytestmark = [needs_shared_data("scifact"), pytest.mark.slow]


def run_benchmark(script: str, *args: str, out: Path, env: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_ingest_benchmark_tiny(tmp_path):
    report = run_benchmark(
        "ingest.py",
        "--limit", "12",
        "--reps", "1",
        "--lever-chunks", "8",
        "--overlap-docs", "4",
        "--quality", "int8",
        out=tmp_path / "ingest.json",
    )  # fmt: skip
    assert report["documents"] == 12 and report["chunks"] >= 12
    headline = report["headline"]
    assert headline["plain"]["chunks_per_s"] > 0
    assert set(headline["kb"]) == {"bfloat16", "int8"}  # a kb leg per KB_EMBED_DTYPE
    for leg in headline["kb"].values():
        assert {"docs_per_s", "chunks_per_s", "tokens_per_s", "seconds"} <= set(leg)
        assert leg["chunks_per_s"] > 0 and leg["ratio"] > 0 and leg["cpu_ratio"] > 0
    settings = [q["setting"] for q in report["quality"]]
    assert settings[0] == "float32 (plain encode)" and any("int8" in s for s in settings)
    assert all(0.0 <= q["ndcg@10"] <= 1.0 for q in report["quality"])
    levers = {row["lever"] for row in report["levers"]}
    assert {"baseline", "bfloat16", "onnx int8", "threads", "batch", "overlap"} <= levers


def test_query_benchmark_tiny(tmp_path):
    report = run_benchmark("query.py", "--tiny", out=tmp_path / "query.json")
    assert report["collection"]["chunks"] >= 2000
    cells = {(c["endpoint"], c["clients"]): c for c in report["cells"]}
    assert set(cells) == {("search", 1), ("search", 4), ("query", 1), ("query", 4)}
    for cell in cells.values():
        assert cell["errors"] == 0 and cell["requests"] >= 16
        assert 0 < cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"]
        assert cell["throughput_rps"] > 0
        # the server embeds and searches each query: real CPU per request, more than the client's
        assert cell["server_cpu_ms_per_request"] > cell["client_cpu_ms_per_request"] > 0
    for clients in (1, 4):  # generate=false: retrieval and prompt only, the model never ran
        assert set(cells[("query", clients)]["finish_reasons"]) <= {"skipped", "not_covered"}


def test_query_encoder_benchmark_tiny(tmp_path):
    report = run_benchmark(
        "query_encoder.py", "--queries", "12", "--rounds", "1", out=tmp_path / "qe.json"
    )
    assert report["queries"] == 12 and report["tokens_mean"] > 2
    assert set(report["cpu_ms_per_query"]) == {"int8", "int8 fused", "float32"}
    assert all(row["median"] > 0 for row in report["cpu_ms_per_query"].values())
    for row in report["cosine_to_float32"].values():  # int8 stays close to float32, not equal
        assert 0.95 < row["min"] <= row["mean"] < 0.99999
    assert set(report["layer_norm_us_per_call"]) == {
        "SkipLayerNormalization",
        "Add + Add + LayerNormalization",
    }


TRAIN_FILES = ("train.jsonl", "validation.jsonl")


@needs_shared_data("newsgroups")
def test_newsgroups_lora_benchmark_tiny(tmp_path, model_cache):
    """Trains a tiny adapter through the job code and scores it; a second run evaluates the saved
    adapter without training and reuses the first run's base result, and gets the same answers."""
    from tests.conftest import data_dir_with_cache

    work = data_dir_with_cache(tmp_path / "work", model_cache)
    tiny = ["--work", str(work), "--max-train", "8", "--max-test", "6", "--epochs", "1"]
    tiny += ["--text-budget", "48", "--max-seq-len", "160", "--neighbours", "2"]
    tiny += ["--neighbour-dropout", "0.25", "--header-labels", "from,quoted"]
    first = run_benchmark("newsgroups_lora.py", *tiny, out=tmp_path / "first.json")
    assert first["base"]["examples"] == first["finetuned"]["examples"] == 6
    assert first["training"]["epochs"] == 1 and first["training"]["history"]
    assert Path(first["adapter"], "adapter_config.json").is_file()
    test_prompts = (work / "data" / "test" / "train.jsonl").read_text()
    assert test_prompts.count("most similar first:") == 6  # --neighbours reached the prompts
    assert test_prompts.count("Labelled messages with the same From: ") == 6  # --header-labels
    assert test_prompts.count("Labelled messages by the authors it quotes: ") == 6
    # --neighbour-dropout hid a quarter of the training prompts' neighbours, none of the test's
    training = "".join((work / "data" / "train" / f).read_text() for f in TRAIN_FILES)
    assert training.count("(none shown)") == 2 and "(none shown)" not in test_prompts
    # the neighbours' majority label (the sender line is no neighbour); of two neighbours, a
    # tie or not, that is the nearest's
    nearest_right = 0
    for line, gold in zip(test_prompts.splitlines(), _test_golds(work), strict=True):
        prompt = json.loads(line)["messages"][0]["content"]
        nearest_right += prompt.split("most similar first:\n", 1)[1].startswith(f"{gold}: ")
    assert first["neighbour_vote"] == {
        "accuracy": nearest_right / 6,
        "correct": nearest_right,
        "examples": 6,
    }

    again = run_benchmark(
        "newsgroups_lora.py",
        *tiny,
        "--adapter", first["adapter"],
        "--base-from", str(tmp_path / "first.json"),
        out=tmp_path / "again.json",
    )  # fmt: skip
    assert again["base"]["reused_from"]
    # the adapter's job is found in the work folder, so its training figures are kept
    assert again["training"] == first["training"] and again["job_id"] == first["job_id"]
    assert again["finetuned"]["mistakes"] == first["finetuned"]["mistakes"]
    assert again["finetuned"]["correct"] == first["finetuned"]["correct"]

    # --eval-dtype float32 scores the same adapter in float32: a bfloat16 run's base result is
    # refused for it, and each label log-likelihood moves by bfloat16 rounding, within 15%
    fp32_args = [*tiny, "--adapter", first["adapter"], "--eval-dtype", "float32"]
    with pytest.raises(AssertionError, match="other prompt options \\(eval_dtype\\)"):
        run_benchmark(
            "newsgroups_lora.py", *fp32_args, "--base-from", str(tmp_path / "first.json"),
            out=tmp_path / "refused.json",
        )  # fmt: skip
    fp32 = run_benchmark(
        "newsgroups_lora.py", *fp32_args, "--skip-base", out=tmp_path / "fp32.json"
    )
    assert fp32["options"]["eval_dtype"] == "float32" and fp32["base"] is None
    moved = []
    for scores, seen in zip(fp32["finetuned"]["scores"], first["finetuned"]["scores"], strict=True):
        assert scores == pytest.approx(seen, rel=0.15, abs=0.5)
        moved += [abs(a - b) for a, b in zip(scores, seen, strict=True)]
    assert max(moved) > 0  # not the bfloat16 scores again


@needs_shared_data("newsgroups")
def test_newsgroups_neighbours_benchmark_tiny(tmp_path, model_cache):
    """The neighbour vote on a sample; with one neighbour, the dense vote is the label of the
    training message nearest by cosine, recomputed here from the embedder."""
    import numpy as np

    from kb.embedders import load_embedder
    from kb.finetune.sources import read_labelled_folder
    from kb.settings import Settings
    from tests.conftest import data_dir_with_cache

    work = data_dir_with_cache(tmp_path / "work", model_cache)
    args = ["--work", str(work), "--max-train", "40", "--max-test", "10", "--ks", "1,3"]
    result = run_benchmark("newsgroups_neighbours.py", *args, out=tmp_path / "vote.json")
    assert result["test_messages"] == 10 and result["train_messages"] == 40
    cells = {(c["search"], c["method"], c["k"]): c for c in result["cells"]}
    assert len(cells) == 2 * 3 * 2  # search keys x methods x ks
    assert all(
        0 <= c["correct"] <= 10 and c["accuracy"] == c["correct"] / 10 for c in cells.values()
    )

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from newsgroups_neighbours import sample

    headers = ("subject", "from", "organization")
    data = ROOT.parent / "shared" / "data" / "newsgroups"
    train = sample(read_labelled_folder(data / "train", headers)[1], 40)
    test = sample(read_labelled_folder(data / "test", headers)[1], 10)
    assert {item.label for item in test} == {"rec.autos", "rec.motorcycles"}
    embedder = load_embedder("minilm", Settings(data_dir=work))
    pool, queries = (np.asarray(embedder.embed([i.text for i in x])) for x in (train, test))
    nearest = (queries @ pool.T).argmax(axis=1)
    right = sum(train[j].label == item.label for j, item in zip(nearest, test, strict=True))
    assert cells[("whole", "dense", 1)]["correct"] == right


def _test_golds(work: Path) -> list[str]:
    records = (work / "data" / "test" / "train.jsonl").read_text().splitlines()
    return [json.loads(line)["metadata"]["label"] for line in records]


def test_newsgroups_lora_header_labels_need_neighbours(tmp_path):
    script = ROOT / "benchmarks" / "newsgroups_lora.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--header-labels", "from", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "pass --neighbours K as well" in proc.stderr


SQLITE_DOCS = ROOT.parent / "shared" / "data" / "sqlite-docs"
SQLITE_PAGES = (
    "limits.html", "whentouse.html", "about.html", "backup.html", "c3ref/backup.html",
    "c3ref/backup_finish.html", "lang_vacuum.html", "pragma.html",
)  # fmt: skip


def sqlite_subset(folder: Path, questions: int = 3) -> Path:
    """A handful of the manual's pages, the questions whose gold pages they hold, and one
    unanswerable question, laid out as the shared set is."""
    dataset = folder / "sqlite-docs"
    for page in SQLITE_PAGES:
        (dataset / "html" / page).parent.mkdir(parents=True, exist_ok=True)
        (dataset / "html" / page).write_bytes((SQLITE_DOCS / "html" / page).read_bytes())
    lines = (SQLITE_DOCS / "qa.jsonl").read_text().splitlines()
    held = [line for line in lines if set(json.loads(line)["gold_pages"]) <= set(SQLITE_PAGES)]
    (dataset / "qa.jsonl").write_text("\n".join(held[:questions]) + "\n")
    unanswerable = (SQLITE_DOCS / "unanswerable.jsonl").read_text().splitlines()[:1]
    (dataset / "unanswerable.jsonl").write_text(unanswerable[0] + "\n")
    return dataset


@needs_shared_data("sqlite-docs")
def test_answers_benchmark_tiny(tmp_path):
    """Every mode's row, unavailable modes named, the ingest cached, questions from elsewhere."""
    dataset = sqlite_subset(tmp_path)
    generators = [{"name": "smollm2", "backend": "local", "model": "smollm2", "max_new_tokens": 8}]
    common = ["--dataset", str(dataset), "--cache", str(tmp_path / "cache"), "-k", "3"]
    env = {"KB_GENERATORS": json.dumps(generators), "KB_DATA_DIR": str(tmp_path / "empty")}

    report = run_benchmark(
        "answers.py", *common, "--modes", "rag,base,finetuned", out=tmp_path / "a.json", env=env
    )
    assert report["questions"] == {"answerable": 3, "unanswerable": 1}
    assert report["ingest"]["documents"] == len(SQLITE_PAGES) and not report["ingest"]["cached"]
    retrieval = report["retrieval"]
    assert retrieval["summary"]["questions"] == 3
    # the gold pages are among 8: each question finds one in its top 5
    assert retrieval["summary"]["gold_top5"] == 1.0
    for row in retrieval["questions"].values():
        assert row["rank"] is not None and row["rank"] <= 5 and row["top"][row["rank"] - 1]
    rows = {row["mode"]: row for row in report["modes"]}
    assert set(rows) == {"rag", "base"}
    assert "fine-tuned" in report["unavailable"]["finetuned"]
    assert rows["rag"]["gold_first"] == retrieval["summary"]["gold_first"]
    assert "gold_first" not in rows["base"]  # an ungrounded mode has no retrieval figures
    for row in rows.values():
        assert row["answered"] == 4 and row["latency_p50_s"] > 0
        assert 0.0 <= row["gold_answer_rate"] <= 1.0 and row["answer_words_p50"] >= 0
        assert row["unanswerable_not_covered_rate"] in (0.0, 1.0)
    assert len(report["answers"]) == 4

    again = run_benchmark(
        "answers.py", *common, "--retrieval-only", out=tmp_path / "b.json", env=env
    )
    assert (
        again["ingest"]["cached"] and again["ingest"]["cache_key"] == report["ingest"]["cache_key"]
    )
    assert again["retrieval"]["summary"] == retrieval["summary"] and again["modes"] == []

    # development questions over the same manual: the ingest is shared, the questions are not
    questions = tmp_path / "dev"
    questions.mkdir()
    first = (dataset / "qa.jsonl").read_text().splitlines()[0]
    (questions / "qa.jsonl").write_text(first + "\n")
    (questions / "unanswerable.jsonl").write_text((dataset / "unanswerable.jsonl").read_text())
    dev = run_benchmark(
        "answers.py", *common, "--retrieval-only", "--questions", str(questions),
        out=tmp_path / "c.json", env=env,
    )  # fmt: skip
    assert dev["ingest"]["cached"] and dev["questions"] == {"answerable": 1, "unanswerable": 1}
    assert dev["questions_from"] == str(questions)


@needs_shared_data("sqlite-docs")
def test_raft_benchmark_tiny(tmp_path, model_cache):
    """RAFT data prepared from the collection, a LoRA trained through the job code, rag,
    rag+finetuned and extract scored in one table; scoring the registered model again trains
    nothing and reports the training the registry recorded."""
    dataset = sqlite_subset(tmp_path, questions=2)
    common = [
        "--dataset", str(dataset), "--cache", str(tmp_path / "cache"), "--work",
        str(tmp_path / "work"), "-k", "3", "--modes", "rag,rag+finetuned,extract",
        "--support-policy", "fallback", "--no-hold-out-gold-pages", "--max-examples", "32", "--val-fraction", "0.1",
        "--max-train-examples", "6", "--max-seq-len", "512", "--lora-layers", "1", "--r", "4",
    ]  # fmt: skip
    generators = [{"name": "smollm2", "backend": "local", "model": "smollm2", "max_new_tokens": 8}]
    env = {"KB_GENERATORS": json.dumps(generators)}
    data_dir_with_cache(tmp_path / "work", model_cache)  # the converted model, once a session

    report = run_benchmark("raft.py", *common, out=tmp_path / "r.json", env=env)
    assert report["prepare"]["counts"]["train"] > 0
    assert 0 < report["training"]["examples"] <= 6 and report["training"]["seconds"] > 0
    rows = {row["mode"]: row for row in report["modes"]}
    assert set(rows) == {"rag", "rag+finetuned", "extract"}, report["unavailable"]
    for row in rows.values():
        assert row["answered"] == 3 and 0.0 <= row["gold_answer_rate"] <= 1.0
    assert report["context"]["models_by_mode"]["rag+finetuned"][0].startswith(report["model"])

    again = run_benchmark(
        "raft.py", *common, "--model", report["model"], "--modes", "extract",
        out=tmp_path / "s.json", env=env,
    )  # fmt: skip
    assert again["prepare"] is None and again["model"] == report["model"]
    assert again["training"]["examples"] == report["training"]["examples"]
