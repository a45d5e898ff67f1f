"""Local generation speed of the bundled SmolLM2: load times, time to first token, tokens/s.

    .venv/bin/python benchmarks/generation.py [--repeats 3] [--cache DIR]

Measures a cold load (GGUF de-quantized into an empty cache, then loaded and warmed up), a
cached load (a new generator reading the converted safetensors), and, per dtype and torch
thread count, a ~100-token answer to a short prompt and to a RAG-sized prompt (~1,000 tokens).
Prints a table and writes benchmarks/results/generation.json. Timings on a shared machine vary
with its load; the load average is recorded with the results.
"""

from __future__ import annotations

import os

# idle OpenMP threads must sleep, not spin: on shared cores spinning makes torch far slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from kb.generators.local import GENERATION_THREADS, INFERENCE_DTYPE, LocalGenerator, LocalModelPool  # noqa: E402
from kb.prompting import build_rag_messages  # noqa: E402
from kb.settings import GeneratorSpec  # noqa: E402
from kb.types import Passage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHORT = [{"role": "user", "content": "Write a short story about a cat who learns to fly."}]
QUESTION = "How does kb answer questions from documents?"


def rag_messages(generator: LocalGenerator) -> list[dict]:
    """~1,000 prompt tokens: the kb guide plus SciFact abstracts as passages."""
    texts = [(ROOT / "data/sample/kb-guide.md").read_text()]
    corpus = ROOT.parent / "shared/data/scifact/corpus.jsonl"
    if corpus.is_file():
        with corpus.open() as lines:
            texts += [json.loads(next(lines))["text"][:1200] for _ in range(3)]
    passages = [
        Passage(chunk_id=i, doc_id=str(i), source=f"doc{i}", text=t, score=1.0, start=0, end=len(t))
        for i, t in enumerate(texts)
    ]
    messages, _ = build_rag_messages(
        QUESTION,
        passages,
        count_tokens=generator.count_tokens,
        context_window=1200,
        max_new_tokens=100,
    )
    return messages


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(generator: LocalGenerator, messages: list[dict], repeats: int) -> dict:
    """Median over `repeats` streamed answers of exactly 100 new tokens at most, greedy."""
    runs = []
    for _ in range(repeats):
        final = list(generator.stream(messages, max_new_tokens=100, temperature=0))[-1].generation
        runs.append(final)
    return {
        "prompt_tokens": runs[0].prompt_tokens,
        "completion_tokens": statistics.median(r.completion_tokens for r in runs),
        "first_token_s": round(statistics.median(r.timings["first_token"] for r in runs), 3),
        "total_s": round(statistics.median(r.timings["total"] for r in runs), 3),
        "decode_tokens_per_s": round(statistics.median(r.tokens_per_second or 0 for r in runs), 2),
        "sample": runs[0].text[:120],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="answers per configuration")
    parser.add_argument("--cache", type=Path, help="reuse this cache dir (skips the cold load)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generation.json")
    args = parser.parse_args()

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "defaults": {"dtype": INFERENCE_DTYPE, "threads": GENERATION_THREADS},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        spec = GeneratorSpec(name="smollm2")
        if args.cache is None:
            cold, _ = timed(lambda: LocalGenerator(spec, cache).load())
            results["load_cold_s"] = round(cold, 2)
        cached, generator = timed(lambda: _loaded(spec, cache))
        results["load_cached_s"] = round(cached, 2)
        prompts = {"short": SHORT, "rag": rag_messages(generator)}

        rows = []
        for dtype in ("bfloat16", "float32"):
            pool = LocalModelPool(cache)
            for threads in (1, 2):
                gen = LocalGenerator(spec, cache, pool=pool, dtype=dtype, threads=threads)
                gen.load()
                for label, messages in prompts.items():
                    row = {"dtype": dtype, "threads": threads, "prompt": label}
                    row.update(measure(gen, messages, args.repeats))
                    rows.append(row)
                    print(_line(row), flush=True)
        results["runs"] = rows
    results["machine"]["load_average_end"] = os.getloadavg()

    print()
    print(f"load: cold {results.get('load_cold_s', '-')} s, cached {results['load_cached_s']} s")
    print(
        f"{'dtype':9} {'thr':>3} {'prompt':6} {'p_tok':>5} {'c_tok':>5} {'ttft_s':>7} {'tok/s':>6}"
    )
    for row in rows:
        print(_line(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _loaded(spec: GeneratorSpec, cache: Path) -> LocalGenerator:
    generator = LocalGenerator(spec, cache)
    generator.load()
    return generator


def _line(row: dict) -> str:
    return (
        f"{row['dtype']:9} {row['threads']:>3} {row['prompt']:6} {row['prompt_tokens']:>5} "
        f"{row['completion_tokens']:>5} {row['first_token_s']:>7} {row['decode_tokens_per_s']:>6}"
    )


if __name__ == "__main__":
    main()
