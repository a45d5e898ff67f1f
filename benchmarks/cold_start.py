"""The first answer after start against the tenth: does the warm-up leave anything cold?

    python benchmarks/cold_start.py --model-cache /tmp/kb-model-cache

Ingests data/sample into a temporary data folder, then per variant starts `kb serve` as a
subprocess, waits until it is ready (warm: GET /ready answers 200, i.e. the warm-up has
loaded the embedder, the collection's indexes and query encoder and the default model; cold,
`--no-warm`: GET /health answers) and times ten identical POST /query requests (mode rag,
generate true, temperature 0, so each generates the same tokens). The query-vector cache is
off (KB_EMBED_QUERY_CACHE=0), so every request embeds its question as the first one does.
Before the runs one `kb search` exports the query encoder to ONNX into the cache, as any
server started before has it. Writes benchmarks/results/cold_start.json.

On a shared machine the decoding time swings with the other load, so the table also gives
each request's time outside generation (the server's total less its `generate` step:
retrieval, prompt, extracts and the support check), where what was left cold shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Which port does the service listen on after kb serve?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(data_dir: Path, model_cache: Path | None, env: dict[str, str]) -> None:
    """Ingest data/sample and export the query encoder once, as a server used before has."""
    if model_cache is not None:  # reuse converted weights instead of converting the GGUF again
        model_cache.mkdir(parents=True, exist_ok=True)
        (data_dir / "cache").symlink_to(model_cache.resolve(), target_is_directory=True)
    for args in (["ingest", str(ROOT / "data" / "sample")], ["search", QUESTION, "-k", "1"]):
        subprocess.run(
            [sys.executable, "-m", "kb", *args, "--json"],
            env=env,
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )


def wait_until(url: str, path: str, timeout: float = 900) -> float:
    """Seconds until GET `path` answers 200."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server at {url} was not ready within {timeout} s")


def run_variant(warm: bool, env: dict[str, str], runs: int, max_new_tokens: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "kb", "serve", "--port", str(port), "--log-level", "warning"]
    started = time.perf_counter()
    server = subprocess.Popen(command + ([] if warm else ["--no-warm"]), env=env, cwd=ROOT)
    try:
        wait_until(url, "/ready" if warm else "/health")
        ready_s = time.perf_counter() - started
        body = {
            "question": QUESTION,
            "mode": "rag",
            "generate": True,
            "max_new_tokens": max_new_tokens,
            "temperature": 0.0,
        }
        queries = []
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(runs):
                sent = time.perf_counter()
                r = client.post("/query", json=body)
                seconds = time.perf_counter() - sent
                r.raise_for_status()
                answer = r.json()
                queries.append(
                    {
                        "seconds": round(seconds, 4),
                        "outside_generation_s": round(
                            answer["timings"]["total"] - answer["timings"].get("generate", 0.0), 4
                        ),
                        "server_timings": answer["timings"],
                        "completion_tokens": answer["usage"]["completion_tokens"],
                        "not_covered": answer["not_covered"],
                    }
                )
    finally:
        server.terminate()
        server.wait(timeout=180)
    times = [q["seconds"] for q in queries]
    outside = [q["outside_generation_s"] for q in queries]
    last = min(9, len(times) - 1)
    return {
        "variant": "warm" if warm else "cold (--no-warm)",
        "start_to_ready_s": round(ready_s, 2),
        "first_s": times[0],
        "tenth_s": times[last],
        "median_after_first_s": round(statistics.median(times[1:]), 4) if len(times) > 1 else None,
        "first_over_tenth": round(times[0] / times[last], 3),
        "first_outside_generation_s": outside[0],
        "tenth_outside_generation_s": outside[last],
        "queries": queries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="queries per server start")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--starts", type=int, default=1, help="server starts per variant")
    parser.add_argument(
        "--variants", default="warm,cold", help="comma-separated: warm, cold (--no-warm)"
    )
    parser.add_argument(
        "--model-cache", type=Path, help="a cache folder of converted weights to reuse"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_start.json"
    )
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        env = {
            **os.environ,
            "KB_DATA_DIR": tmp,
            "HF_HUB_OFFLINE": "1",
            "KB_EMBED_QUERY_CACHE": "0",
        }
        prepare(Path(tmp), args.model_cache, env)
        for _ in range(args.starts):  # alternating, so drifting load hits both alike
            for variant in args.variants.split(","):
                warm = variant.strip() == "warm"
                results.append(run_variant(warm, env, args.runs, args.max_new_tokens))

    print(
        f"{'variant':18} {'ready s':>8} {'1st s':>7} {'10th s':>7} {'median 2+':>9} "
        f"{'1st/10th':>8} {'outside generation 1st / 10th s':>32}"
    )
    for r in results:
        outside = f"{r['first_outside_generation_s']:.3f} / {r['tenth_outside_generation_s']:.3f}"
        print(
            f"{r['variant']:18} {r['start_to_ready_s']:8.2f} {r['first_s']:7.3f} "
            f"{r['tenth_s']:7.3f} {r['median_after_first_s']:9.3f} {r['first_over_tenth']:8.3f} "
            f"{outside:>32}"
        )
    summary = {
        "benchmark": "cold_start",
        "endpoint": "POST /query (mode rag, generate true, temperature 0)",
        "question": QUESTION,
        "max_new_tokens": args.max_new_tokens,
        "runs": args.runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # other work on the machine slows generation: the 1-minute load average at the end
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "results": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
