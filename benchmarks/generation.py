"""Local generation speed of the bundled SmolLM2 on llama.cpp against transformers, in one run.

    .venv/bin/python benchmarks/generation.py [--prompts 4] [--repeats 1] [--threads 1,2]
        [--flash-attn] [--float32]

Loads the model on each runtime (transformers: the GGUF de-quantized into an empty cache, then
read back; llama.cpp: the GGUF as shipped, and its bfloat16 and Q8_0 copies), then answers the
same RAG-sized prompts (SciFact claims over their abstracts, ~940 prompt tokens, 128 new tokens,
greedy) on each runtime, weights and thread count, taking turns prompt by prompt so that load on
the shared machine hits them alike. Per setup: time to first token, prompt tokens/s (prompt
tokens over the time to the first token), decode tokens/s, decode tokens per CPU-second (less
swayed by other processes than wall time, though a busy machine slows each CPU-second too),
the time a whole 128-token answer takes at those rates (answers stop at different lengths),
and how many greedy answers equal, token for token, those of each transformers setup (the
first: bfloat16, its default, at the first thread count). Prints a table and writes
benchmarks/results/generation.json, with the load average.
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

from kb.generators.base import Generation, Generator  # noqa: E402
from kb.generators.local import (  # noqa: E402
    GENERATION_THREADS,
    INFERENCE_DTYPE,
    LocalGenerator,
    LocalModelPool,
)
from kb.prompting import build_rag_messages  # noqa: E402
from kb.settings import GeneratorSpec  # noqa: E402
from kb.types import Passage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared/data/scifact"
NEW_TOKENS = 128
#: the prompt budget: 1,100 tokens less the answer's 128 leaves ~900 for instructions and passages
CONTEXT = 1100


def rag_prompts(count_tokens, n: int) -> list[list[dict]]:
    """`n` RAG prompts: a SciFact claim over its relevant abstract and the abstracts after it."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        guide = (ROOT / "data/sample/kb-guide.md").read_text()
        texts = [guide[i : i + 1500] for i in range(0, len(guide), 1500)]
        questions = [
            "How does kb answer questions from documents?",
            "How do I fine-tune a model with kb?",
            "Which settings change retrieval?",
            "How do I run the kb service?",
        ]
        return [_messages(q, texts[i:] + texts[:i], count_tokens) for i, q in enumerate(questions)][
            :n
        ]
    with (SCIFACT / "corpus.jsonl").open() as lines:
        docs = [json.loads(line) for line in lines]
    position = {d["_id"]: i for i, d in enumerate(docs)}
    with (SCIFACT / "queries.jsonl").open() as lines:
        claims = {q["_id"]: q["text"] for q in map(json.loads, lines)}
    prompts, seen = [], set()
    for row in (SCIFACT / "qrels/test.tsv").read_text().splitlines()[1:]:
        query, doc, _ = row.split("\t")
        if query in seen or doc not in position:
            continue
        seen.add(query)
        first = position[doc]
        texts = [f"{d['title']}. {d['text']}" for d in docs[first : first + 4]]
        prompts.append(_messages(f"Is it true that {claims[query]}", texts, count_tokens))
        if len(prompts) == n:
            break
    return prompts


def _messages(question: str, texts: list[str], count_tokens) -> list[dict]:
    passages = [
        Passage(chunk_id=i, doc_id=str(i), source=f"doc{i}", text=t, score=1.0, start=0, end=len(t))
        for i, t in enumerate(texts)
    ]
    messages, _ = build_rag_messages(
        question,
        passages,
        count_tokens=count_tokens,
        context_window=CONTEXT,
        max_new_tokens=NEW_TOKENS,
    )
    return messages


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def answer(generator: Generator, messages: list[dict]) -> Generation:
    """A streamed greedy answer (streaming is what the service does).

    Also times the CPU the process spent from the first text to the end: tokens per CPU-second
    leave out the time other processes held the cores.
    """
    first_cpu, final = None, None
    for final in generator.stream(messages, max_new_tokens=NEW_TOKENS, temperature=0):  # noqa: B007
        if first_cpu is None:
            first_cpu = time.process_time()
    generation = final.generation
    generation.timings["decode_cpu_s"] = time.process_time() - first_cpu
    return generation


def summary(runs: list[Generation], references: dict[str, list[Generation]], count_tokens) -> dict:
    """Medians over a setup's answers, and how many equal each reference setup's answers.

    The first reference (transformers' default) also gives the tokens shared before parting.
    """
    reference = next(iter(references.values()))
    shared = [_common_prefix(r.text, ref.text) for r, ref in zip(runs, reference, strict=True)]
    return {
        "answers": len(runs),
        "prompt_tokens": statistics.median(r.prompt_tokens for r in runs),
        "completion_tokens": statistics.median(r.completion_tokens for r in runs),
        "first_token_s": round(statistics.median(r.timings["first_token"] for r in runs), 3),
        "prompt_tokens_per_s": round(
            statistics.median(r.prompt_tokens / r.timings["first_token"] for r in runs), 1
        ),
        "decode_tokens_per_s": round(statistics.median(r.tokens_per_second or 0 for r in runs), 1),
        "decode_tokens_per_cpu_s": round(
            statistics.median(
                (r.completion_tokens - 1) / r.timings["decode_cpu_s"]
                for r in runs
                if r.timings["decode_cpu_s"] > 0
            ),
            1,
        ),
        "total_s": round(statistics.median(r.timings["total"] for r in runs), 2),
        # answers stop at different lengths: the time one of NEW_TOKENS tokens would take
        "full_answer_s": round(
            statistics.median(
                r.timings["first_token"] + (NEW_TOKENS - 1) / (r.tokens_per_second or float("inf"))
                for r in runs
            ),
            2,
        ),
        "same_answers_as": {
            label: sum(r.text == ref.text for r, ref in zip(runs, answers, strict=True))
            for label, answers in references.items()
        },
        # tokens the answer shares with the reference before they part (all of it when equal)
        "common_prefix_tokens": [count_tokens(p) for p in shared],
        "samples": [r.text[:160] for r in runs[:2]],
    }


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="RAG prompts to answer")
    parser.add_argument("--repeats", type=int, default=1, help="answers per prompt and setup")
    parser.add_argument("--threads", default="1,2", help="thread counts to try, comma-separated")
    parser.add_argument(
        "--weights",
        default="gguf,bf16,q8_0",
        help="llama.cpp weights to try (gguf: as shipped)",
    )
    parser.add_argument(
        "--flash-attn",
        action="store_true",
        help="also llama.cpp with flash attention, decoding on 1 thread and reading the prompt "
        "on the most threads tried, for each weights (only when --threads has 1 and more)",
    )
    parser.add_argument(
        "--float32",
        action="store_true",
        help="also transformers in float32 at the first thread count: how much the answers "
        "move with the arithmetic alone",
    )
    parser.add_argument("--cache", type=Path, help="reuse this cache dir (skips the cold load)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generation.json")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    from kb.generators.llamacpp import (
        LLAMACPP_FLASH_ATTN,
        LLAMACPP_PROMPT_THREADS,
        LLAMACPP_THREADS,
        LLAMACPP_WEIGHTS,
        LlamaCppGenerator,
        _cpu_model,
        llamacpp_unavailable,
    )

    spec = GeneratorSpec(name="smollm2", context_window=CONTEXT + 64)
    unavailable = llamacpp_unavailable(spec)
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "amx": _has_amx(),
            "platform": platform.platform(),
            "load_average_start": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "defaults": {
            "transformers": {"dtype": INFERENCE_DTYPE, "threads": GENERATION_THREADS},
            "llamacpp": {
                "threads": LLAMACPP_THREADS,
                "prompt_threads": LLAMACPP_PROMPT_THREADS or "every usable core",
                "weights": LLAMACPP_WEIGHTS,
                "flash_attn": LLAMACPP_FLASH_ATTN,
                "unavailable": unavailable,
            },
        },
        "new_tokens": NEW_TOKENS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        loads = {}
        if args.cache is None:
            loads["transformers_cold_s"], _ = timed(lambda: LocalGenerator(spec, cache).load())
        loads["transformers_cached_s"], reference_generator = timed(
            lambda: _loaded(LocalGenerator(spec, cache, threads=GENERATION_THREADS))
        )
        setups: dict[str, Generator] = {}
        pools = {dtype: LocalModelPool(cache) for dtype in ("bfloat16", "float32")}
        for n in threads:
            setups[f"transformers bf16 {n}t"] = LocalGenerator(
                spec, cache, pool=pools["bfloat16"], dtype="bfloat16", threads=n
            )
        if args.float32:
            setups[f"transformers fp32 {threads[0]}t"] = LocalGenerator(
                spec, cache, pool=pools["float32"], dtype="float32", threads=threads[0]
            )
        if unavailable is None:
            for kind in args.weights.split(","):
                loads[f"llamacpp_{kind}_s"], _ = timed(
                    lambda kind=kind: _loaded(LlamaCppGenerator(spec, cache, weights=kind))
                )
                for n in threads:
                    setups[f"llama.cpp {kind} {n}t"] = LlamaCppGenerator(
                        spec, cache, threads=n, weights=kind, prompt_threads=n
                    )
                # decode on one thread, read the prompt on the most threads tried (the default
                # on a machine of that many cores)
                if len(threads) > 1 and min(threads) == 1:
                    setups[f"llama.cpp {kind} 1t+{max(threads)}p"] = LlamaCppGenerator(
                        spec, cache, threads=1, weights=kind, prompt_threads=max(threads)
                    )
                    if args.flash_attn:
                        setups[f"llama.cpp {kind} 1t+{max(threads)}p fa"] = LlamaCppGenerator(
                            spec,
                            cache,
                            threads=1,
                            weights=kind,
                            prompt_threads=max(threads),
                            flash_attn=True,
                        )
        else:
            print(f"llama.cpp skipped: {unavailable}")
        for generator in setups.values():
            generator.load()
        results["load_s"] = {k: round(v, 2) for k, v in loads.items()}

        prompts = rag_prompts(reference_generator.count_tokens, args.prompts)
        runs: dict[str, list[Generation]] = {label: [] for label in setups}
        for i, messages in enumerate(prompts):
            for _ in range(args.repeats):
                for label, generator in setups.items():  # take turns: load hits all alike
                    runs[label].append(answer(generator, messages))
                    print(f"prompt {i + 1}/{len(prompts)} {label}: {_line(runs[label][-1])}")
        references = {
            label: answers for label, answers in runs.items() if label.startswith("transformers")
        }
        count = reference_generator.count_tokens
        rows = {label: summary(r, references, count) for label, r in runs.items()}
        for label, generator in setups.items():  # how each llama.cpp setup ran
            if isinstance(generator, LlamaCppGenerator):
                rows[label]["extra_buffers"] = generator.extra_buffers
                rows[label]["flash_attn"] = generator.flash_attn
        results["runs"] = rows
        results["prompt_tokens_per_prompt"] = [
            g.prompt_tokens for g in runs[reference_label(threads)]
        ]
        if unavailable is None:
            llamacpp = next(g for label, g in setups.items() if label.startswith("llama.cpp"))
            results["prompt_tokens_llamacpp"] = [llamacpp.count_message_tokens(m) for m in prompts]
        results["ratios"] = _ratios(rows)
    results["machine"]["load_average_end"] = os.getloadavg()

    print()
    print("load: " + ", ".join(f"{k} {v} s" for k, v in results["load_s"].items()))
    print(
        f"{'setup':24} {'p_tok':>5} {'c_tok':>5} {'ttft_s':>7} {'prompt/s':>8} {'decode/s':>8} "
        f"{'/cpu-s':>6} {'128 tok s':>9} "
        + " ".join(f"{'= ' + label.removeprefix('transformers '):>10}" for label in references)
    )
    for label, row in rows.items():
        same = row["same_answers_as"]
        print(
            f"{label:24} {row['prompt_tokens']:>5} {row['completion_tokens']:>5} "
            f"{row['first_token_s']:>7} {row['prompt_tokens_per_s']:>8} "
            f"{row['decode_tokens_per_s']:>8} {row['decode_tokens_per_cpu_s']:>6} "
            f"{row['full_answer_s']:>9} "
            + " ".join(f"{same[ref]:>7}/{row['answers']:<2}" for ref in references)
        )
    for name, ratio in results["ratios"].items():
        print(f"{name}: {ratio}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _has_amx() -> bool | None:
    try:
        return " amx_" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def reference_label(threads: list[int]) -> str:
    """The setup whose answers are the reference: transformers' default dtype, first thread count."""
    return f"transformers bf16 {threads[0]}t"


def _loaded(generator: Generator) -> Generator:
    generator.load()
    return generator


def _ratios(rows: dict[str, dict]) -> dict[str, float]:
    """Each llama.cpp setup over transformers bfloat16 at its thread count, in this run."""
    ratios = {}
    for label, row in rows.items():
        if not label.startswith("llama.cpp"):
            continue
        threads = label.split()[-1]
        base = rows.get(f"transformers bf16 {threads}")
        if base is None:
            continue
        for key in ("decode_tokens_per_s", "decode_tokens_per_cpu_s", "prompt_tokens_per_s"):
            if base[key]:
                ratios[f"{key}: {label} / transformers"] = round(row[key] / base[key], 2)
        ratios[f"first_token_s: transformers / {label}"] = round(
            base["first_token_s"] / row["first_token_s"], 2
        )
    return ratios


def _line(g: Generation) -> str:
    return (
        f"{g.prompt_tokens} prompt, {g.completion_tokens} new tokens, "
        f"first {g.timings['first_token']:.2f} s, {g.tokens_per_second or 0:.1f} tok/s"
    )


if __name__ == "__main__":
    main()
