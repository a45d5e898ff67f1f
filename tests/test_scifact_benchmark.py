"""benchmarks/scifact.py --tiny: the whole pipeline (ingest, dense/bm25/hybrid, weighted fusion,
a one-step embedding fine-tune, re-index, evaluation again) on a generated mini BEIR fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # the whole pipeline, fine-tuning included


def test_scifact_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "scifact.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scifact.py"),
            "--tiny",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("settings", "results", "runs", "commands", "finetune", "targets"):
        assert key in report, key
    assert report["tiny"] is True
    assert report["settings"]["chunk_size"] == 512
    expected = {
        "dense",
        "bm25",
        "hybrid_rrf",
        "hybrid_weighted_0.3",
        "finetuned_dense",
        "finetuned_hybrid_rrf",
    }
    assert expected <= set(report["results"])
    for name, figures in report["results"].items():
        for metric in ("ndcg@10", "recall@100"):
            assert 0.0 <= figures[metric] <= 1.0, (name, metric)
    # the fixture's queries share words with their one relevant abstract
    assert report["results"]["bm25"]["ndcg@10"] > 0.5
    assert report["finetune"]["state"] == "succeeded"
    assert report["finetune"]["result"]["reindexed"] is True
    assert report["finetune"]["result"]["metrics"]["steps"] == 1
    assert all(c["returncode"] == 0 for c in report["commands"])
    assert all(".venv/bin/python -m kb " in c["command"] for c in report["commands"])
    assert "run" in proc.stdout and "nDCG@10" in proc.stdout
