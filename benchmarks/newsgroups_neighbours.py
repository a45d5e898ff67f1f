"""Neighbour-vote benchmark: how often the labelled neighbours of `kb finetune prepare
--neighbours K` agree with a test message's label, with no model at all.

For each test message of 20 Newsgroups (rec.autos vs rec.motorcycles), the K training messages
found the way `--neighbours` finds them (BM25 and the embedder, fused by reciprocal rank; or
one ranking alone) vote; the majority label wins and a tie goes to the nearest. Messages are
read as `kb finetune prepare` reads them (kept headers and body); the search key is each whole
message (`whole`, what `--neighbours` searches with) or its first TEXT_BUDGET tokens (`shown`,
the part a prompt shows). A fine-tuned classifier mostly follows its neighbours, so this vote
is the baseline it must beat, and the measure that made the whole message the only key.

    nice .venv/bin/python benchmarks/newsgroups_neighbours.py [--max-test N] [--max-train N]

Prints a table and writes benchmarks/results/newsgroups_neighbours.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kb.finetune import TokenCounter, load_tokenizer  # noqa: E402
from kb.finetune.neighbours import DEPTH_FACTOR, NeighbourPool, majority_label  # noqa: E402
from kb.finetune.sources import read_labelled_folder  # noqa: E402
from kb.settings import Settings  # noqa: E402

METHODS = ("fused", "bm25", "dense")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "newsgroups")
    p.add_argument("--ks", default="4,8,12,16", help="comma-separated neighbour counts")
    p.add_argument("--text-budget", type=int, default=256, help="tokens shown (the 'shown' key)")
    p.add_argument("--keep-headers", default="subject,from,organization")
    p.add_argument("--max-train", type=int, default=None, help="a seeded sample of N messages")
    p.add_argument("--max-test", type=int, default=None, help="a seeded sample of N messages")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="kb data folder whose cache/ keeps the tokenizer and pool vectors (default: "
        "KB_DATA_DIR, else ./kb_data)",
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "newsgroups_neighbours.json"
    )
    return p.parse_args(argv)


def sample(items: list, n: int | None) -> list:
    """A seeded sample of n items in their folder order (both labels, not the first folder's)."""
    if n is None or n >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(0).sample(range(len(items)), n))]


def rankings(pool: NeighbourPool, text: str, vector: np.ndarray, depth: int) -> dict:
    """The pool rows BM25 and the dense vectors each rank first for one text."""
    dense = np.argsort(-(pool.vectors @ vector), kind="stable")[:depth]
    lexical = pool.bm25.search(text, depth)
    return {"bm25": [int(i) for i, _ in lexical], "dense": [int(i) for i in dense]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = Settings(data_dir=args.work) if args.work else Settings()
    ks = [int(k) for k in args.ks.split(",")]
    headers = tuple(h for h in args.keep_headers.split(",") if h)
    counter = TokenCounter(load_tokenizer(cache_dir=settings.cache_dir))
    _, train, _ = read_labelled_folder(args.data / "train", headers)
    _, test, _ = read_labelled_folder(args.data / "test", headers)
    train, test = sample(train, args.max_train), sample(test, args.max_test)
    gold = [item.label for item in test]
    whole = [[item.text for item in items] for items in (train, test)]
    cells, seconds = [], {}
    for search in ("shown", "whole"):
        started = time.monotonic()
        keys = (
            whole if search == "whole" else [counter.truncate(w, args.text_budget) for w in whole]
        )
        pool = NeighbourPool(train, keys[0], counter, 16, settings)
        vectors = pool.embedder.embed(keys[1])
        depth = DEPTH_FACTOR * max(ks)
        ranked = [rankings(pool, t, v, depth) for t, v in zip(keys[1], vectors, strict=True)]
        for k in ks:
            # the fusion of each ranking's best DEPTH_FACTOR * k, as `nearest` fuses them
            fused = pool.nearest(keys[1], [None] * len(test), k, vectors)
            for method in METHODS:
                rows = fused if method == "fused" else [r[method][:k] for r in ranked]
                right = sum(
                    majority_label([pool.items[i].label for i in r]) == g
                    for r, g in zip(rows, gold, strict=True)
                )
                cells.append(
                    {"search": search, "k": k, "method": method, "correct": right,
                     "accuracy": right / len(test)}
                )  # fmt: skip
        seconds[search] = round(time.monotonic() - started, 1)
    result = {
        "benchmark": "newsgroups_neighbours",
        "command": " ".join(["benchmarks/newsgroups_neighbours.py", *(argv or sys.argv[1:])]),
        "test_messages": len(test),
        "train_messages": len(train),
        "text_budget": args.text_budget,
        "cells": cells,
        "seconds": seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, ks)
    return result


def print_table(result: dict, ks: list[int]) -> None:
    n = result["test_messages"]
    print(f"neighbours' majority label right, of {n} test messages")
    header = ["search key", "method", *(f"k={k}" for k in ks)]
    rows = [header]
    for search in ("shown", "whole"):
        key = f"first {result['text_budget']} tokens" if search == "shown" else "whole message"
        for method in METHODS:
            by_k = {
                c["k"]: c for c in result["cells"] if (c["search"], c["method"]) == (search, method)
            }
            rows.append(
                [key, method, *(f"{by_k[k]['correct']} ({by_k[k]['accuracy']:.3f})" for k in ks)]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
