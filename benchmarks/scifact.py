"""SciFact retrieval benchmark: nDCG@10 and Recall@100 of kb's search methods, before and after
fine-tuning the embedder on the SciFact train split, through the real `kb` CLI.

    .venv/bin/python benchmarks/scifact.py                      # full run (tens of minutes)
    .venv/bin/python benchmarks/scifact.py --skip-finetune      # base methods only
    .venv/bin/python benchmarks/scifact.py --tiny --out /tmp/scifact.json   # seconds, a fixture

Steps, each a `python -m kb ...` subprocess in a fresh data dir (--data-dir, wiped first if this
script created it) with KB_CHUNK_SIZE=--chunk-size (512 by default: a SciFact abstract is one
chunk, BM25 scores the whole abstract and the dense vector reads its first 256 tokens, as in the
BEIR/MTEB protocol):

  1. `kb eval retrieval --beir DIR --methods dense,bm25,hybrid` (ingests the corpus, one
     document per abstract with its title prepended; hybrid = reciprocal rank fusion, KB_RRF_K)
  2. `kb eval retrieval --methods hybrid` with KB_FUSION=weighted and each KB_DENSE_WEIGHT of
     --weights (the corpus is already ingested: nothing is re-embedded)
  3. `kb finetune embeddings --collection NAME --beir DIR --split train` (MultipleNegatives
     RankingLoss with hard negatives, then the collection is re-indexed with the new model)
  4. step 1 and 2 again (dense and hybrid) on the re-indexed collection

Figures are on the test qrels. Results: a table on stdout and JSON at --out (figures, settings,
every command with its environment overrides, timings).

--tiny writes a generated mini BEIR fixture (a dozen made-up abstracts, a few test and train
queries) and fine-tunes on 5 pairs for one step: a smoke test of the pipeline, not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
DEFAULT_DATA_DIR = ROOT / "benchmarks" / ".cache" / "scifact"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scifact.json"
MARKER = ".kb-scifact-benchmark"  # the data dir is ours to wipe only when this file is in it
HEADLINE = ("ndcg@10", "recall@100")
# measured on this machine by others (nDCG@10, SciFact test), for the table's context
REFERENCES = {
    "MiniLM dense": 0.645,
    "BM25 (bm25s, stemmed)": 0.686,
    "RRF fusion": 0.716,
    "RRF fusion, MiniLM fine-tuned on SciFact train": 0.731,
}
TARGETS = {"hybrid_rrf": 0.71, "finetuned_hybrid_rrf": 0.73}


# -- the tiny fixture ----------------------------------------------------------------------

TINY_DOCS = {
    "d1": (
        "Aspirin and heart attacks",
        "Daily low-dose aspirin reduces the risk of a first "
        "myocardial infarction in men over fifty.",
    ),
    "d2": (
        "Vitamin D and bone density",
        "Vitamin D supplementation increases bone mineral "
        "density in elderly women with osteoporosis.",
    ),
    "d3": (
        "Smoking and lung cancer",
        "Tobacco smoking is the leading cause of lung cancer; the "
        "risk falls steadily after quitting.",
    ),
    "d4": (
        "Exercise and depression",
        "Aerobic exercise three times a week lowers depressive "
        "symptoms as much as antidepressant medication in mild depression.",
    ),
    "d5": (
        "Sleep and memory",
        "Slow-wave sleep consolidates declarative memories learned during the previous day.",
    ),
    "d6": (
        "Antibiotic resistance",
        "Overuse of antibiotics in livestock drives resistant "
        "bacterial strains that spread to humans.",
    ),
    "d7": (
        "Coffee and liver disease",
        "Coffee consumption is associated with a lower risk of "
        "liver cirrhosis and hepatocellular carcinoma.",
    ),
    "d8": (
        "Gut microbiome and obesity",
        "Germ-free mice colonised with microbiota from obese "
        "donors gain more fat than those given lean donor microbiota.",
    ),
    "d9": (
        "Measles vaccination",
        "Two doses of the measles vaccine give lifelong immunity in about 97 percent of children.",
    ),
    "d10": (
        "Salt intake and blood pressure",
        "Reducing dietary sodium lowers systolic blood pressure in people with hypertension.",
    ),
    "d11": (
        "Statins and cholesterol",
        "Statins inhibit HMG-CoA reductase and lower LDL cholesterol by up to half.",
    ),
    "d12": (
        "Insulin resistance",
        "Visceral fat releases free fatty acids that impair insulin "
        "signalling in muscle and liver.",
    ),
}
TINY_TEST = {
    "t1": ("Does aspirin prevent heart attacks?", "d1"),
    "t2": ("smoking causes lung cancer", "d3"),
    "t3": ("Can exercise treat depression?", "d4"),
    "t4": ("sodium and hypertension", "d10"),
}
TINY_TRAIN = {
    "q1": ("vitamin D osteoporosis", "d2"),
    "q2": ("sleep helps memory", "d5"),
    "q3": ("antibiotics in farm animals cause resistance", "d6"),
    "q4": ("coffee protects the liver", "d7"),
    "q5": ("microbiome makes mice obese", "d8"),
    "q6": ("measles vaccine immunity", "d9"),
}


def write_tiny_fixture(folder: Path) -> Path:
    """A mini BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv and train.tsv)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for doc_id, (title, text) in TINY_DOCS.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
        for qid, (text, _) in {**TINY_TEST, **TINY_TRAIN}.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, queries in (("test", TINY_TEST), ("train", TINY_TRAIN)):
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{qid}\t{doc}\t1" for qid, (_, doc) in queries.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# -- running kb ----------------------------------------------------------------------------


class Runner:
    """Runs `python -m kb ...` with the benchmark's environment and records every command."""

    def __init__(
        self, data_dir: Path, chunk_size: int, log: Path, verbose: bool, in_process: bool = False
    ):
        self.in_process = in_process
        self.base_env = {
            "KB_DATA_DIR": str(data_dir),
            "KB_CHUNK_SIZE": str(chunk_size),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.log = log
        self.verbose = verbose
        self.commands: list[dict[str, Any]] = []

    def kb(self, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run kb with `args` (plus --json); returns the JSON of its last stdout line."""
        overrides = {**self.base_env, **(env or {})}
        argv = [sys.executable, "-m", "kb", *args, "--json"]
        shown = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in overrides.items() if k.startswith("KB_")
        )
        shown += " .venv/bin/python -m kb " + " ".join(shlex.quote(a) for a in args + ["--json"])
        print(f"$ {shown}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if self.in_process:
            proc = self._in_process([*args, "--json"], overrides)
        else:
            proc = subprocess.run(
                argv,
                cwd=ROOT,
                env={**os.environ, **overrides},
                capture_output=True,
                text=True,
            )
        seconds = time.perf_counter() - started
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"$ {shown}\n[rc {proc.returncode}, {seconds:.1f}s]\n")
            f.write(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:] + "\n\n")
        self.commands.append(
            {
                "command": shown,
                "env": overrides,
                "returncode": proc.returncode,
                "seconds": round(seconds, 1),
            }
        )
        if self.verbose:
            sys.stderr.write(proc.stderr[-4000:])
        if proc.returncode != 0:
            raise RuntimeError(
                f"`{shown}` failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
                f"\n{proc.stdout[-2000:]}"
            )
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return json.loads(lines[-1]), seconds

    def _in_process(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        """The same typer app called in this process (torch and the model load once): the
        environment patched, stdout and stderr captured. The settings are read from the
        environment afresh by each command, as in a new process."""
        import contextlib
        import io

        from kb.cli import app

        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        out, err = io.StringIO(), io.StringIO()
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                result = app(argv, standalone_mode=False)
                code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - reported like a failed command
            err.write(f"{type(exc).__name__}: {exc}\n")
            code = 1
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())

    def __call__(self, args, env=None):
        return self.kb(args, env)


def eval_runs(
    run: Runner,
    args: argparse.Namespace,
    beir: Path,
    stage: str,
    methods: list[str],
    weights: list[float],
) -> list[dict[str, Any]]:
    """The RRF methods in one `kb eval retrieval`, then hybrid with each weighted dense weight."""
    prefix = "" if stage == "base" else f"{stage}_"
    common = ["eval", "retrieval", "--beir", str(beir), "--collection", args.collection]
    if args.max_queries:
        common += ["--max-queries", str(args.max_queries)]
    rows = []
    plans = [(methods, {"KB_FUSION": "rrf"}, None)]
    plans += [
        (["hybrid"], {"KB_FUSION": "weighted", "KB_DENSE_WEIGHT": str(w)}, w) for w in weights
    ]
    for plan_methods, env, weight in plans:
        out, seconds = run(
            [*common, "--methods", ",".join(plan_methods), "--name", f"scifact-{stage}"], env
        )
        for method in plan_methods:
            metrics = out["methods"][method]
            if method == "hybrid":
                key = "hybrid_rrf" if weight is None else f"hybrid_weighted_{weight:g}"
            else:
                key = method
            rows.append(
                {
                    "name": prefix + key,
                    "stage": stage,
                    "method": method,
                    "fusion": env["KB_FUSION"] if method == "hybrid" else None,
                    "dense_weight": weight,
                    **{m: metrics.get(m) for m in HEADLINE},
                    "metrics": metrics,
                    "eval_id": out.get("eval_id"),
                    "command": run.commands[-1]["command"],
                    "command_seconds": round(seconds, 1),
                }
            )
    return rows


# -- output --------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("run", "stage", "method", "fusion", "w_dense", "nDCG@10", "R@100")
    table = [header] + [
        (
            r["name"],
            r["stage"],
            r["method"],
            r["fusion"] or "",
            "" if r["dense_weight"] is None else f"{r['dense_weight']:g}",
            fmt(r["ndcg@10"]),
            fmt(r["recall@100"]),
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print(
            "  ".join(
                str(c).ljust(w) if i < 5 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def prepare_data_dir(path: Path, reuse: bool) -> None:
    """A fresh data dir: wipe it when this script made it; refuse a foreign non-empty one."""
    if path.exists() and not reuse:
        if (path / MARKER).is_file():
            shutil.rmtree(path)
        elif any(path.iterdir()):
            raise SystemExit(
                f"--data-dir {path} is not empty and was not made by this benchmark: "
                "pass an empty or new folder (or --reuse)"
            )
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by benchmarks/scifact.py; wiped on its next run\n")


def build_report(
    args: argparse.Namespace,
    beir: Path,
    data_dir: Path,
    weights: list[float],
    in_process: bool,
    rows: list[dict[str, Any]],
    run: Runner,
    started: float,
) -> dict[str, Any]:
    results = {r["name"]: {m: r[m] for m in HEADLINE} for r in rows}
    report = {
        "benchmark": "scifact",
        "dataset": str(beir),
        "tiny": args.tiny,
        "in_process": in_process,
        "split": "test",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.perf_counter() - started, 1),
        "settings": {
            "chunk_size": args.chunk_size,
            "collection": args.collection,
            "data_dir": str(data_dir),
            "weights": weights,
            "max_queries": args.max_queries,
            "title_mode": "prepend",
            "reuse": args.reuse,  # True: the collection came from an earlier run (no ingest)
            "finetune": None
            if args.skip_finetune
            else {
                "epochs": args.ft_epochs,
                "batch_size": args.ft_batch_size,
                "lr": args.ft_lr,
                "hard_negatives": args.ft_hard_negatives,
                "mine_method": args.ft_mine_method,
                "max_pairs": args.ft_max_pairs,
                "dtype": args.ft_dtype,
            },
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "results": results,
        "targets": {
            k: {
                "target": v,
                "measured": results.get(k, {}).get("ndcg@10"),
                "met": (results.get(k, {}).get("ndcg@10") or 0) >= v,
            }
            for k, v in TARGETS.items()
            if k in results
        },
        "references_ndcg@10": REFERENCES,
        "runs": rows,
        "commands": run.commands,
    }
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--beir", type=Path, default=SCIFACT, help="BEIR folder (default SciFact)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--collection", default="scifact")
    p.add_argument("--chunk-size", type=int, default=512, help="KB_CHUNK_SIZE (tokens)")
    p.add_argument(
        "--weights",
        default="0.3,0.5,0.7",
        help="dense weights of the weighted-fusion hybrid runs (comma-separated)",
    )
    p.add_argument("--max-queries", type=int, default=None, help="seeded sample of test queries")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--ft-batch-size", type=int, default=32)
    p.add_argument("--ft-lr", type=float, default=3e-5)
    p.add_argument("--ft-hard-negatives", type=int, default=1)
    p.add_argument("--ft-mine-method", default="hybrid")
    p.add_argument("--ft-max-pairs", type=int, default=None)
    p.add_argument("--ft-dtype", default="float32", help="float32 or bfloat16")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a generated mini BEIR fixture, one weight, 5 fine-tuning pairs: seconds",
    )
    p.add_argument("--reuse", action="store_true", help="keep the data dir (incremental ingest)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="call the kb CLI app in this process instead of a subprocess per command "
        "(implied by --tiny: torch and the model load once)",
    )
    p.add_argument("--verbose", action="store_true", help="echo each command's stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    if args.tiny:
        if args.data_dir == DEFAULT_DATA_DIR:
            args.data_dir = DEFAULT_DATA_DIR.with_name("scifact-tiny")
        if args.out == DEFAULT_OUT:
            args.out = args.data_dir / "scifact-tiny.json"
        weights = weights[:1] or [0.5]
        args.ft_max_pairs, args.ft_batch_size = 5, 8  # one optimizer step
    data_dir = args.data_dir.resolve()
    prepare_data_dir(data_dir, args.reuse)
    beir = write_tiny_fixture(data_dir / "tiny-beir") if args.tiny else args.beir.resolve()
    if not (beir / "corpus.jsonl").is_file():
        raise SystemExit(f"no BEIR data set at {beir}: pass --beir DIR (or --tiny)")
    log = data_dir / "commands.log"
    in_process = args.in_process or args.tiny
    if in_process:
        sys.path.insert(0, str(ROOT))
        os.chdir(ROOT)
    run = Runner(data_dir, args.chunk_size, log, args.verbose, in_process)
    print(f"data dir {data_dir}; each command's output in {log}", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {"finetune": None, "error": None}

    def save(complete: bool) -> dict[str, Any]:
        """Write the JSON (after every stage, so a cut-off run keeps its figures)."""
        report = build_report(args, beir, data_dir, weights, in_process, rows, run, started)
        report.update(complete=complete, finetune=state["finetune"], error=state["error"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(args.out)
        return report

    try:
        rows += eval_runs(run, args, beir, "base", ["dense", "bm25", "hybrid"], weights)
        save(complete=False)
        if not args.skip_finetune:
            ft_args = [
                "finetune", "embeddings", "--collection", args.collection, "--beir", str(beir),
                "--split", "train", "--epochs", str(args.ft_epochs),
                "--batch-size", str(args.ft_batch_size), "--lr", str(args.ft_lr),
                "--hard-negatives", str(args.ft_hard_negatives),
                "--mine-method", args.ft_mine_method, "--dtype", args.ft_dtype,
                "--out", f"{args.collection}-emb-bench",
            ]  # fmt: skip
            if args.ft_max_pairs:
                ft_args += ["--max-pairs", str(args.ft_max_pairs)]
            record, seconds = run(ft_args)
            state["finetune"] = {
                "job_id": record.get("id"),
                "state": record.get("state"),
                "result": record.get("result"),
                "command": run.commands[-1]["command"],
                "seconds": round(seconds, 1),
            }
            save(complete=False)
            ft_weights = [] if args.tiny else weights  # tiny: keep the test short
            rows += eval_runs(run, args, beir, "finetuned", ["dense", "hybrid"], ft_weights)
    except RuntimeError as exc:  # a failed kb command: keep and show what was measured
        state["error"] = str(exc)
        print(f"error: {exc}", file=sys.stderr)
    report = save(complete=state["error"] is None)

    print_table(rows)
    print(
        "\nreference nDCG@10 (others, this machine): "
        + "; ".join(f"{k} {v:.3f}" for k, v in REFERENCES.items())
    )
    print(f"results: {args.out} ({report['duration_s']:.0f}s)")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
