"""The query encoder in process: CPU per query of kb's ONNX graphs, one thread, SciFact claims.

    .venv/bin/python benchmarks/query_encoder.py                  # 300 claims, 3 rounds
    .venv/bin/python benchmarks/query_encoder.py --queries 50 --rounds 1 --out /tmp/q.json

Graphs, all exported from the bundled MiniLM by kb's own code (`kb/embedders/onnx.py`) into a
temporary folder, each run through `session()` with one intra-op thread, the way a search
embeds its query (one text, no padding):
  int8          kb's query encoder: attention fused, SkipLayerNormalization not (UNFUSED);
  int8 fused    the same export with ONNX Runtime's SkipLayerNormalization fusion on, at export
                and at load (kb's graph before it was left out);
  float32       kb's float32 export (KB_EMBED_QUERY_RUNTIME=onnx).
Rounds alternate the graphs; the CPU time (process time, the benchmark alone on its thread) per
query is the median over rounds. Vectors: cosine of each int8 graph's query vectors to float32.
And the operator itself: SkipLayerNormalization against Add + Add + LayerNormalization on one
query's [1, tokens, 384] tensor, microseconds per session call, the same two rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import cpu_model  # noqa: E402 - after the path is set

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SCIFACT, help="BEIR folder whose queries to embed")
    p.add_argument("--queries", type=int, default=300, help="queries embedded per graph and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "query_encoder.json"
    )
    return p.parse_args(argv)


def build_graphs(work: Path) -> dict[str, Path]:
    """kb's int8 and float32 exports, and an int8 export with SkipLayerNormalization fused."""
    from kb.embedders import onnx as kb_onnx
    from kb.embedders.sentence_transformers import bundled_minilm_path

    folder = Path(bundled_minilm_path())
    graphs = {
        "int8": kb_onnx.exported_model(folder, work, "int8"),
        "float32": kb_onnx.exported_model(folder, work, "float32"),
    }
    exported = work / "exported.onnx"
    kb_onnx._export(folder, exported)
    config = kb_onnx._st_config(folder)
    kb_onnx._fuse(exported, work / "fused.float32.onnx", config, skip_layer_norm=True)
    kb_onnx._quantize(work / "fused.float32.onnx", work / "fused.int8.onnx")
    graphs["int8 fused"] = work / "fused.int8.onnx"
    return graphs


def fused_session(path: Path):
    """A session that lets ONNX Runtime fuse SkipLayerNormalization again at load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encode(session, encodings) -> tuple[float, np.ndarray]:
    """CPU milliseconds per query, and the normalised vectors."""
    names = [i.name for i in session.get_inputs()]
    feeds = [
        {
            "input_ids": np.array([e.ids], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids], dtype=np.int64),
        }
        for e in encodings
    ]
    for feed in feeds[:10]:  # warm-up
        session.run(None, {n: feed[n] for n in names})
    vectors = []
    start = time.process_time()
    for feed in feeds:
        vectors.append(session.run(None, {n: feed[n] for n in names})[0][0])
    cpu = time.process_time() - start
    out = np.array(vectors, dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return 1000 * cpu / len(feeds), out


def layer_norm_models(tokens: int) -> dict[str, bytes]:
    """SkipLayerNormalization, and the Add + Add + LayerNormalization it stands for."""
    from onnx import TensorProto, helper

    shape = [1, tokens, 384]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    weights = [
        helper.make_tensor("gamma", TensorProto.FLOAT, [384], np.ones(384, np.float32)),
        helper.make_tensor("beta", TensorProto.FLOAT, [384], np.zeros(384, np.float32)),
        helper.make_tensor("bias", TensorProto.FLOAT, [384], np.full(384, 0.1, np.float32)),
    ]
    nodes = {
        "SkipLayerNormalization": [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "skip", "gamma", "beta", "bias"],
                ["y"],
                domain="com.microsoft",
                epsilon=1e-12,
            )
        ],
        "Add + Add + LayerNormalization": [
            helper.make_node("Add", ["x", "skip"], ["sum"]),
            helper.make_node("Add", ["sum", "bias"], ["biased"]),
            helper.make_node(
                "LayerNormalization", ["biased", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12
            ),
        ],
    }
    models = {}
    for name, graph_nodes in nodes.items():
        graph = helper.make_graph(graph_nodes, name, inputs, [output], initializer=weights)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 8
        models[name] = model.SerializeToString()
    return models


def op_microseconds(model: bytes, tokens: int, calls: int = 3000) -> float:
    from kb.embedders.onnx import session

    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(model)
        f.flush()
        loaded = session(Path(f.name), 1)
    x = np.random.default_rng(0).random((1, tokens, 384), dtype=np.float32)
    for _ in range(100):
        loaded.run(None, {"x": x, "skip": x})
    start = time.process_time()
    for _ in range(calls):
        loaded.run(None, {"x": x, "skip": x})
    return 1e6 * (time.process_time() - start) / calls


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tokenizers import Tokenizer

    from kb.embedders.onnx import session
    from kb.embedders.sentence_transformers import bundled_minilm_path
    from kb.eval.beir import load_beir

    queries = list(load_beir(args.data, "test").queries.values())[: args.queries]
    tokenizer = Tokenizer.from_file(str(Path(bundled_minilm_path()) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    encodings = [tokenizer.encode(q) for q in queries]
    tokens = round(statistics.mean(len(e.ids) for e in encodings))

    with tempfile.TemporaryDirectory(prefix="kb-bench-encoder-") as tmp:
        graphs = build_graphs(Path(tmp))
        sessions = {
            name: fused_session(path) if name == "int8 fused" else session(path, 1)
            for name, path in graphs.items()
        }
        ms: dict[str, list[float]] = {name: [] for name in graphs}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, loaded in sessions.items():
                cpu, vectors[name] = encode(loaded, encodings)
                ms[name].append(cpu)
        models = layer_norm_models(tokens)
        ops: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(2):
            for name, model in models.items():
                ops[name].append(op_microseconds(model, tokens))

    result = {
        "benchmark": "query_encoder",
        "queries": len(queries),
        "tokens_mean": statistics.mean(len(e.ids) for e in encodings),
        "rounds": args.rounds,
        "cpu_ms_per_query": {
            name: {"median": statistics.median(v), "runs": [round(x, 3) for x in v]}
            for name, v in ms.items()
        },
        "cosine_to_float32": {
            name: {
                "mean": float(np.mean(np.sum(vectors[name] * vectors["float32"], axis=1))),
                "min": float(np.min(np.sum(vectors[name] * vectors["float32"], axis=1))),
            }
            for name in ("int8", "int8 fused")
        },
        "layer_norm_us_per_call": {
            name: {"median": statistics.median(v), "runs": [round(x, 1) for x in v]}
            for name, v in ops.items()
        },
        "machine": {"cpu": cpu_model(), "python": platform.python_version()},
        "command": "benchmarks/query_encoder.py " + " ".join(argv or sys.argv[1:]),
    }
    print(f"Query encoder, {len(queries)} SciFact claims ({result['tokens_mean']:.1f} tokens)")
    print(f"{'graph':<14} {'CPU ms/query':>13} {'cosine to fp32 (mean / min)':>28}")
    for name, row in result["cpu_ms_per_query"].items():
        cos = result["cosine_to_float32"].get(name)
        shown = f"{cos['mean']:.4f} / {cos['min']:.4f}" if cos else "-"
        print(f"{name:<14} {row['median']:>13.3f} {shown:>28}")
    print(f"\nOne layer norm on [1, {tokens}, 384], microseconds per session call:")
    for name, row in result["layer_norm_us_per_call"].items():
        print(f"  {name:<32} {row['median']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
