"""Generation speed over HTTP: time to first token and tokens/s of streamed POST /query.

    python benchmarks/http_generation.py                 # own server on data/sample
    python benchmarks/http_generation.py --url http://127.0.0.1:8000 --collection default

Without --url it ingests data/sample into a temporary data folder, starts `kb serve` as a
subprocess (the default local model, warm-loaded), waits until the model is loaded, runs one
warm-up question and then the timed ones. Writes benchmarks/results/http_generation.json.

Per answer: ttft_s (request sent -> first `delta` event, client side), total_s (-> `done`),
decode_tokens_per_s (completion tokens after the first / time between first delta and done),
end_to_end_tokens_per_s (completion tokens / total_s).
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
QUESTIONS = [
    "Which port does the service listen on after kb serve?",
    "What does the compare mode do?",
    "Which file types can kb ingest?",
    "What does kb finetune run train?",
    "What does the --prune option remove?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, model_cache: Path | None) -> subprocess.Popen:
    if model_cache is not None:  # reuse converted weights instead of converting the GGUF again
        model_cache.mkdir(parents=True, exist_ok=True)
        (data_dir / "cache").symlink_to(model_cache.resolve(), target_is_directory=True)
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "kb", "ingest", str(ROOT / "data" / "sample"), "--json"],
        env=env,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "kb", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=ROOT,
    )


def wait_ready(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=5).json()
            if health.get("generator_loaded"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not load its model within {timeout} s")


def timed_query(client: httpx.Client, body: dict) -> dict:
    started = time.perf_counter()
    first = None
    done = None
    with client.stream("POST", "/query", json={**body, "stream": True}) as r:
        r.raise_for_status()
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "delta" and first is None:
                    first = time.perf_counter()
                elif event == "done":
                    done = json.loads(line[6:])
                elif event == "error":
                    raise SystemExit(f"server error: {line[6:]}")
    end = time.perf_counter()
    assert done is not None, "the stream ended without a done event"
    tokens = done["usage"]["completion_tokens"]
    ttft = (first or end) - started
    decode_s = end - (first or end)
    return {
        "question": body["question"],
        "completion_tokens": tokens,
        "prompt_tokens": done["usage"]["prompt_tokens"],
        "ttft_s": round(ttft, 4),
        "total_s": round(end - started, 4),
        "decode_tokens_per_s": round((tokens - 1) / decode_s, 2)
        if tokens > 1 and decode_s
        else None,
        "end_to_end_tokens_per_s": round(tokens / (end - started), 2),
        "server_timings": done["timings"],
        "model": done["model"],
        "not_covered": done["not_covered"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--collection", default="default")
    parser.add_argument("--mode", default="rag")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=len(QUESTIONS))
    parser.add_argument(
        "--model-cache", type=Path, help="a cache folder of converted weights to reuse"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "http_generation.json"
    )
    args = parser.parse_args()

    server = None
    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="kb-bench-")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        setup = time.perf_counter()
        server = start_server(Path(tmp.name), port, args.model_cache)
    try:
        if server is not None:
            wait_ready(url)
            print(
                f"server ready in {time.perf_counter() - setup:.1f} s (ingest + start + model load)"
            )
        base = {
            "mode": args.mode,
            "collection": args.collection,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 0.0,
        }
        with httpx.Client(base_url=url, timeout=600) as client:
            timed_query(client, {**base, "question": "What is kb?"})  # warm-up, not counted
            runs = []
            for i in range(args.runs):
                run = timed_query(client, {**base, "question": QUESTIONS[i % len(QUESTIONS)]})
                runs.append(run)
                print(
                    f"{run['completion_tokens']:4d} tokens  ttft {run['ttft_s']:.3f} s  "
                    f"decode {run['decode_tokens_per_s']} tok/s  total {run['total_s']:.2f} s"
                )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 4) if values else None

    summary = {
        "benchmark": "http_generation",
        "endpoint": "POST /query (stream: true, server-sent events)",
        "mode": args.mode,
        "max_new_tokens": args.max_new_tokens,
        "model": runs[0]["model"] if runs else None,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # other work on the machine slows generation: the 1-minute load average at the end
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "median": {
            "ttft_s": median("ttft_s"),
            "decode_tokens_per_s": median("decode_tokens_per_s"),
            "end_to_end_tokens_per_s": median("end_to_end_tokens_per_s"),
            "total_s": median("total_s"),
            "completion_tokens": median("completion_tokens"),
            "prompt_tokens": median("prompt_tokens"),
        },
        "runs": runs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["median"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
