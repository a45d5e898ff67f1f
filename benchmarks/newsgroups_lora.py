"""LoRA fine-tuning benchmark: 20 Newsgroups rec.autos vs rec.motorcycles on the bundled SmolLM2.

Prepares the labelled folders with the same code as `kb finetune prepare` (the Subject, From and
Organization headers and the body, cut to TEXT_BUDGET tokens), trains through the same job code as `kb finetune run`, then
reports test-split accuracy of the base and the fine-tuned model with the same prompt, and the
training time. Answers are read by constrained scoring (log-likelihood of each label as the
whole answer, one prompt pass) or, with --eval generation, by greedy decoding.

    nice -n 10 .venv/bin/python benchmarks/newsgroups_lora.py [--max-train N] [--max-test N]

With --adapter DIR it evaluates a saved adapter (say an epoch checkpoint in an earlier job's
folder) instead of training; with --base-from FILE it reuses an earlier run's base result.
The options shared with `kb finetune prepare` and `kb finetune run` (--neighbours, --epochs...)
come from the same specs, with their help and bounds.

Writes benchmarks/results/newsgroups_lora.json and prints a table.
"""

from __future__ import annotations

import os

# idle OpenMP threads must sleep, not spin: on shared cores spinning makes torch ~10x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kb.cli.specs import add_spec_arguments, cli_build  # noqa: E402
from kb.errors import InvalidInput  # noqa: E402
from kb.finetune import prepare_dataset  # noqa: E402
from kb.finetune.backends import FineTuneSpec  # noqa: E402
from kb.finetune.builders import NO_NEIGHBOURS, folder_template  # noqa: E402
from kb.finetune.datasets import NEIGHBOUR_SEARCH  # noqa: E402
from kb.finetune.encoding import completion_text, prompt_messages, read_examples  # noqa: E402
from kb.finetune.jobs import run_finetune  # noqa: E402
from kb.finetune.neighbours import majority_label  # noqa: E402
from kb.finetune.options import FineTuneOptions, PrepareOptions, S  # noqa: E402
from kb.jobs import JobManager  # noqa: E402
from kb.models import ModelRegistry  # noqa: E402
from kb.settings import Settings  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "newsgroups"
RESULTS = ROOT / "benchmarks" / "results" / "newsgroups_lora.json"


#: `kb finetune prepare` options the benchmark passes on, with its own defaults
PREPARE = {
    "text_budget": 256,
    "keep_headers": "subject,from,organization",
    "template": None,
    "neighbours": 0,
    "neighbour_tokens": 16,
    "neighbour_dropout": 0.0,
    "header_labels": "",
    "seed": 0,
}
#: `kb finetune run` options the benchmark passes on, with its own defaults
TRAIN = {
    "epochs": 2,
    "lr": 1e-3,
    "r": 8,
    "alpha": 16,
    "lora_layers": 16,
    "batch_size": 4,
    "max_seq_len": 384,
    "dtype": "bfloat16",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train/ and test/")
    p.add_argument(
        "--work", type=Path, default=Path("/tmp/kb-bench-newsgroups"), help="KB data dir"
    )
    p.add_argument("--max-train", type=int, default=None, help="training examples (default: all)")
    p.add_argument("--max-test", type=int, default=None, help="test examples (default: all)")
    add_spec_arguments(p, PrepareOptions, PREPARE, PREPARE)
    add_spec_arguments(p, FineTuneOptions, TRAIN, TRAIN)
    p.add_argument(
        "--eval-dtype",
        default="bfloat16",
        choices=["float32", "bfloat16"],
        help="precision both models are scored in: bfloat16, as `kb models classify` serves them, "
        "puts the margin between two labels' log-likelihoods on steps of 0.25 (a close call can "
        "tie); float32 scores take ~1.45x as long",
    )
    p.add_argument("--eval", dest="eval_mode", default="scoring", choices=["scoring", "generation"])
    p.add_argument("--skip-base", action="store_true", help="do not evaluate the base model")
    p.add_argument(
        "--base-from",
        type=Path,
        default=None,
        help="reuse the base model's result from an earlier results file whose prompt options "
        "(data, text budget, headers, template, test size, eval mode, seed) are the same",
    )
    p.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="evaluate this saved adapter (e.g. an epoch checkpoint of an earlier run's job) "
        "instead of training one",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:  # the specs check every bound before anything runs
        options(args, PrepareOptions, PREPARE)
        options(args, FineTuneOptions, TRAIN)
    except InvalidInput as exc:
        p.error(str(exc))
    return args


def options(args: argparse.Namespace, spec: type[S], names: dict, **extra) -> S:
    """The spec built from the benchmark's flags for its fields in `names`, and `extra`."""
    return cli_build(spec, {**{k: getattr(args, k) for k in names}, **extra})


def prepare(args: argparse.Namespace, settings: Settings) -> tuple[Path, Path, list[str]]:
    """The training data's folder, the test file, and the labels."""
    train = prepare_dataset(
        args.data / "train",
        args.work / "data" / "train",
        options=options(
            args, PrepareOptions, PREPARE, max_examples=args.max_train, val_fraction=0.05
        ),
        settings=settings,
    )
    test_options = options(
        args,
        PrepareOptions,
        PREPARE,
        neighbour_dropout=0.0,  # test prompts show them all
        neighbours_from=str(args.data / "train") if args.neighbours else None,
        max_examples=args.max_test,
        val_fraction=0.0,
    )
    test = prepare_dataset(
        args.data / "test", args.work / "data" / "test", options=test_options, settings=settings
    )
    labels = train.manifest["source"]["labels"]
    return train.out_dir, test.train_path, labels


def neighbour_vote(path: Path, template: str, labels: list[str]) -> dict | None:
    """What copying the neighbours would score: each test prompt's majority neighbour label (a
    tie goes to the nearest), read back from the prompt's `label: opening` lines (a
    --header-labels line is not a neighbour); None when the template does not set the neighbour
    lines apart with fixed text on both sides."""
    head, _, tail = template.partition("{neighbours}")
    before, after = head.rsplit("}", 1)[-1], tail.split("{", 1)[0]
    if not before.strip() or not after.strip():
        return None
    correct = shown = 0
    for record in read_examples(path):
        prompt = prompt_messages(record)[-1]["content"]
        block = prompt.split(before, 1)[1].split(after, 1)[0]
        if block == NO_NEIGHBOURS:
            continue
        shown += 1
        shown_labels = [line.split(": ", 1)[0] for line in block.splitlines()]
        shown_labels = [label for label in shown_labels if label in labels]
        correct += majority_label(shown_labels) == completion_text(record)
    return {"accuracy": correct / shown, "correct": correct, "examples": shown} if shown else None


def evaluate(model, tokenizer, path: Path, labels: list[str], mode: str) -> dict:
    """Accuracy on the test split; by scoring, each message's label log-likelihoods are kept
    (`scores`)."""
    from kb.finetune.scoring import classify_by_generation, label_logprobs

    started = time.monotonic()
    records = read_examples(path)
    correct = unparsed = 0
    mistakes, scores = [], []
    for i, record in enumerate(records, 1):
        gold = completion_text(record)
        source = (record.get("metadata") or {}).get("source", f"#{i}")
        if mode == "scoring":
            logprobs = label_logprobs(model, tokenizer, prompt_messages(record), labels)
            guess = labels[logprobs.index(max(logprobs))]
            scores.append([round(x, 6) for x in logprobs])
        else:
            guess = classify_by_generation(model, tokenizer, prompt_messages(record), labels)
            unparsed += guess is None
        correct += guess == gold
        if guess != gold:
            mistakes.append({"source": source, "gold": gold, "guess": guess})
        if i % 100 == 0:
            print(f"  {i}/{len(records)}: accuracy so far {correct / i:.4f}", file=sys.stderr)
    result = {
        "accuracy": correct / len(records),
        "correct": correct,
        "examples": len(records),
        "unparsed": unparsed,
        "eval_seconds": round(time.monotonic() - started, 1),
        "mistakes": mistakes,
    }
    if mode == "scoring":
        result["scores"] = scores  # per message, in test-file order: each label's log-likelihood
    return result


PROMPT_OPTIONS = (
    "data",
    "text_budget",
    "keep_headers",
    "template",
    "neighbours",
    "neighbour_tokens",
    "header_labels",
    "max_test",
    "eval_mode",
    "eval_dtype",
    "seed",
)


def reused_base(path: Path, args: argparse.Namespace) -> dict:
    """The base model's result from an earlier run with the same prompts; the base model is fixed
    and scoring is deterministic, so re-evaluating it would give the same answers."""
    earlier = json.loads(path.read_text())
    theirs = earlier["options"]
    ours = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    # older results files lack eval_dtype, and record an unset option as None
    before = {"eval_dtype": "bfloat16"}
    differ = [
        k for k in PROMPT_OPTIONS if (theirs.get(k, before.get(k)) or None) != (ours[k] or None)
    ]
    # runs from before the whole text was the only neighbour search key, or scored both views
    search = earlier.get("neighbour_search") or theirs.get("neighbour_search", "shown")
    if theirs.get("neighbours") and search != NEIGHBOUR_SEARCH:
        differ.append("neighbour_search")
    if theirs.get("both_views"):
        differ.append("both_views")
    if differ or not earlier.get("base"):
        raise SystemExit(
            f"--base-from {path}: its base result was measured with other prompt options "
            f"({', '.join(differ) or 'no base result'}); drop --base-from to evaluate the base model"
        )
    return {**earlier["base"], "reused_from": str(path)}


def load(settings: Settings, adapter: str | None = None, dtype: str = "bfloat16"):
    import torch

    from kb.generators.local import load_base_model

    model, tokenizer = load_base_model("smollm2", settings.cache_dir, dtype="float32")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model.to(getattr(torch, dtype)), tokenizer


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = Settings(data_dir=args.work)
    started = time.monotonic()
    data_dir, test_file, labels = prepare(args, settings)
    prepare_seconds = time.monotonic() - started
    print(f"prepared {data_dir} and {test_file} in {prepare_seconds:.0f} s", file=sys.stderr)
    vote = None
    if args.neighbours:
        template = folder_template(options(args, PrepareOptions, PREPARE))
        vote = neighbour_vote(test_file, template, labels)

    base = reused_base(args.base_from, args) if args.base_from else None  # checked before training
    if args.adapter:
        name, job_id, training = trained_by(settings, args.adapter)
        adapter = str(args.adapter)
    else:
        name, job_id, training, adapter = train(args, settings, data_dir)

    def save(base: dict | None, tuned: dict, complete: bool) -> dict:
        result = {
            "benchmark": "newsgroups_lora",
            "command": " ".join(["benchmarks/newsgroups_lora.py", *(argv or sys.argv[1:])]),
            "labels": labels,
            "eval_mode": args.eval_mode,
            "base": base,
            "finetuned": tuned,
            "neighbour_vote": vote,  # the majority label of each test prompt's neighbours
            "neighbour_search": NEIGHBOUR_SEARCH if args.neighbours else None,
            "model": name,
            "job_id": job_id,
            "adapter": adapter,
            "training": training,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "prepare_seconds": round(prepare_seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "complete": complete,  # false: written before the base model was scored
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(result))
        return result

    # the fine-tuned model first, its result written at once: the base model's scoring can take
    # as long again
    print(f"evaluating the fine-tuned model ({adapter})", file=sys.stderr)
    model, tokenizer = load(settings, adapter, args.eval_dtype)
    tuned = evaluate(model, tokenizer, test_file, labels, args.eval_mode)
    del model
    if name:
        registry = ModelRegistry(settings)
        registry.update_metrics(name, accuracy=tuned["accuracy"], accuracy_eval=args.eval_mode)

    if base is None and not args.skip_base:
        save(None, tuned, complete=False)
        print(f"fine-tuned: {tuned['accuracy']:.4f}; evaluating the base model", file=sys.stderr)
        model, tokenizer = load(settings, dtype=args.eval_dtype)
        base = evaluate(model, tokenizer, test_file, labels, args.eval_mode)
    result = save(base, tuned, complete=True)
    print_table(result)
    return result


def train(args: argparse.Namespace, settings: Settings, data_dir: Path) -> tuple:
    """Train through the job code of `kb finetune run`; the registered model's name, the job
    id, the training figures and the adapter's folder."""
    name = f"newsgroups-{time.strftime('%Y%m%d-%H%M%S')}"
    chosen = options(args, FineTuneOptions, TRAIN, seed=args.seed, name=name)
    spec = FineTuneSpec(
        **chosen.to_dict(),
        train_file=str(data_dir / "train.jsonl"),
        validation_file=str(data_dir / "validation.jsonl"),
    )
    print(f"training {name}", file=sys.stderr)
    record = run_finetune(JobManager(settings.jobs_dir), spec, settings, ModelRegistry(settings))
    if record.state != "succeeded":
        raise SystemExit(f"training {record.state}: {record.error}")
    training = training_figures(record.result["metrics"])
    return name, record.id, training, record.result["model_record"]["adapter"]


def training_figures(metrics: dict) -> dict:
    return {
        "seconds": metrics["train_seconds"],
        "examples": metrics["train_examples"],
        "epochs": metrics["epochs"],
        "examples_per_s": metrics["examples_per_s"],
        "train_loss": metrics["train_loss"],
        "eval_loss": metrics["eval_loss"],
        "history": metrics.get("history"),
    }


def trained_by(settings: Settings, adapter: Path) -> tuple:
    """(model name, job id, training figures) of the job in this work folder that saved
    `adapter`, so evaluating a trained model again keeps how it was trained; all None for
    another adapter (an epoch checkpoint, another folder's)."""
    # the job files are read, not loaded into a JobManager, which would mark a job that
    # another process is running as interrupted
    for path in sorted(settings.jobs_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        result = record.get("result") or {}
        saved = result.get("model_record") or {}
        same = saved.get("adapter") and Path(saved["adapter"]).resolve() == adapter.resolve()
        if record.get("state") == "succeeded" and same:
            return saved.get("name"), record["id"], training_figures(result["metrics"])
    return None, None, None


def to_json(result: dict, width: int = 120) -> str:
    """Indented JSON with every list or object that fits in `width` characters on one line, so
    the per-message scores take a line each rather than four."""
    short: dict[str, str] = {}

    def mark(value):
        if isinstance(value, dict | list):
            flat = json.dumps(value)
            if len(flat) <= width:
                short[key := f"@{len(short)}@"] = flat
                return key
            if isinstance(value, dict):
                return {k: mark(v) for k, v in value.items()}
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(result), indent=2)
    for key, flat in short.items():
        text = text.replace(json.dumps(key), flat, 1)
    return text + "\n"


def print_table(result: dict) -> None:
    rows = [("model", "accuracy", "correct", "eval s")]
    for label, key in (("base SmolLM2-135M", "base"), ("LoRA fine-tuned", "finetuned")):
        r = result[key]
        if r:
            rows.append(
                (
                    label,
                    f"{r['accuracy']:.4f}",
                    f"{r['correct']}/{r['examples']}",
                    str(r["eval_seconds"]),
                )
            )
    if vote := result.get("neighbour_vote"):
        rows.append(
            (
                "neighbours' majority",
                f"{vote['accuracy']:.4f}",
                f"{vote['correct']}/{vote['examples']}",
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    t = result["training"]
    if not t:
        print(
            f"adapter {result['adapter']} (not trained by this run); eval by {result['eval_mode']}"
        )
        return
    print(
        f"training: {t['examples']} examples x {t['epochs']} epoch(s) in {t['seconds']:.0f} s "
        f"({t['examples_per_s']} ex/s); eval by {result['eval_mode']}"
    )


if __name__ == "__main__":
    main()
