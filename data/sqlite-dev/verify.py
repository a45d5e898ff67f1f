#!/usr/bin/env python3
"""Check the development QA set against the SQLite HTML manual.

Every answer string must occur in the visible text of at least one of its gold
pages; every unanswerable question's terms must occur on no page. Page text and
normalisation come from the test set's verify.py, so both sets are checked alike.

Usage: python3 verify.py [HTML_DIR]   (default: the shared manual)
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data" / "sqlite-docs"


def load_test_checker():
    spec = importlib.util.spec_from_file_location("sqlite_docs_verify", SHARED / "verify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_answerable(rows, pages, tv):
    failures, kinds = 0, {}
    if len({r["id"] for r in rows}) != len(rows):
        print("FAIL duplicate ids")
        failures += 1
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        problems = [f"missing gold page {g}" for g in r["gold_pages"] if g not in pages]
        if r["kind"] not in tv.KINDS:
            problems.append(f"bad kind {r['kind']!r}")
        if not (1 <= len(r["gold_pages"]) <= 3 and 1 <= len(r["answers"]) <= 4):
            problems.append("needs 1-3 gold pages and 1-4 answers")
        counts = []
        for a in r["answers"]:
            na = tv.norm(a)
            if not any(na in pages.get(g, "") for g in r["gold_pages"]):
                problems.append(f"answer {a!r} not in any gold page")
            n = sum(na in text for text in pages.values())
            counts.append(f"{a!r}:{n}" + ("(GENERIC)" if n > tv.GENERIC else ""))
        failures += bool(problems)
        print(
            f"{'FAIL' if problems else 'ok  '} {r['id']} [{r['kind']}] "
            f"gold={','.join(r['gold_pages'])} pages-containing: {' '.join(counts)}"
        )
        for p in problems:
            print(f"     - {p}")
    print(
        f"questions: {len(rows)}; failed: {failures}; kinds: "
        + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    )
    return failures


def check_unanswerable(rows, pages, tv):
    failures = 0
    for u in rows:
        complete = {"id", "question", "why", "terms"} <= set(u) and u["terms"]
        problems = [] if complete else ["needs id, question, why and a non-empty terms list"]
        for term in u.get("terms", []):
            found = [rel for rel, text in pages.items() if tv.norm(term) in text]
            if found:
                problems.append(f"term {term!r} occurs on {len(found)} page(s), e.g. {found[0]}")
        failures += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {u['id']} terms: {', '.join(u.get('terms', []))}")
        for p in problems:
            print(f"     - {p}")
    print(f"unanswerable: {len(rows)}; failed: {failures}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "html_dir",
        nargs="?",
        type=Path,
        default=SHARED / "html",
        help="folder of the manual's HTML pages (default: %(default)s)",
    )
    html_dir = parser.parse_args().html_dir
    if not html_dir.is_dir():
        sys.exit(f"no manual at {html_dir}: pass the sqlite-docs html/ folder")
    tv = load_test_checker()
    pages = {
        p.relative_to(html_dir).as_posix(): tv.visible_text(p)
        for p in sorted(html_dir.rglob("*.html"))
    }
    print(f"manual: {len(pages)} pages under {html_dir}")

    rows = read_jsonl(HERE / "qa.jsonl")
    failures = check_answerable(rows, pages, tv)
    test_rows = read_jsonl(SHARED / "qa.jsonl")
    gold = {g for r in rows for g in r["gold_pages"]}
    test_gold = {g for r in test_rows for g in r["gold_pages"]}
    print(
        f"distinct gold pages: {len(gold)}, of which also gold in the test set: {len(gold & test_gold)}"
    )
    test_answers = {tv.norm(a) for r in test_rows for a in r["answers"]}
    shared = sorted({a for r in rows for a in r["answers"] if tv.norm(a) in test_answers})
    print(f"answer strings also in the test set: {', '.join(shared) or 'none'}")
    failures += check_unanswerable(read_jsonl(HERE / "unanswerable.jsonl"), pages, tv)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
