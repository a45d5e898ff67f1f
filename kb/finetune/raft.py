"""RAFT: retrieval-augmented fine-tuning examples from a collection (Zhang et al. 2024,
arXiv 2403.10131).

Each example asks a question about one chunk, its oracle, in the very prompt `rag` mode sends
(`kb.prompting.build_rag_messages` over kb/prompts/rag.yaml): the oracle shuffled among the
chunks kb's own search retrieves for the question (its distractors), and as the answer the
oracle's supporting sentence quoted and cited `[n]`, with the sentence after it when both
are short. A seeded share of the examples leaves the
oracle out and answers with the not-covered sentence, so that the model learns to say so
rather than quote a distractor. A model trained on them drops into `rag+finetuned` as it is.

Questions come from the configured generator (`generate_with`, any OpenAI-compatible model),
or, offline, from the documents' own structure: function declarations, `term: definition`
lines, a short line (a heading, a definition list's term) followed by its text, a sentence
that defines its subject, table rows. A question the structure asks of more than one chunk is
ambiguous and left out.

The split is by document: a seeded `val_fraction` of the documents asked about is held out,
and no training prompt shows a chunk of a held-out document, as oracle or as distractor.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from kb.errors import InvalidInput
from kb.finetune.examples import Example
from kb.finetune.options import PrepareOptions
from kb.finetune.sources import Skipped
from kb.finetune.synthetic import QA_PROMPT_FILE, parse_qa
from kb.finetune.templates import fill_template, package_prompt
from kb.finetune.tokens import TokenCounter
from kb.grounding.sentences import split_sentences, word_count
from kb.prompting import build_rag_messages, load_prompt, not_covered_answer
from kb.types import Passage

Progress = Callable[[int, int], None]

RECIPE = "raft"
TRAIN, VALIDATION = "train", "validation"
#: search hits fetched beyond the passages wanted, for those the filters take away
SEARCH_SLACK = 6
#: an answer sentence is a claim a reader can check: not a fragment, not a paragraph
MIN_ANSWER_WORDS = 4
MAX_ANSWER_WORDS = 60
#: the quote goes on into the oracle's next sentence while it stays this short: a reader gets
#: the answer's context, as extract mode gives it
MAX_QUOTE_WORDS = 60
MAX_TERM_WORDS = 6
MAX_SUBJECT_WORDS = 8
#: a long reference page (a list of requirements) would otherwise ask most of the questions
MAX_CHUNKS_PER_DOCUMENT = 8
#: chunks asked per wanted example when a generator writes the questions (it often misfires)
GENERATOR_ATTEMPTS = 2

_NUMBERING = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.?|[A-Z]\.|[ivx]+\.)\s+")
_C_DECLARATION = re.compile(
    r"^(?:(?:const|unsigned|signed|struct|static|extern|SQLITE_API)\s+)*[A-Za-z_]\w*"
    r"[\s*]+\**([A-Za-z_]\w*)\s*\(([^;{}]*)\)\s*;$"
)
_PY_DEFINITION = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\((.*)\)\s*(?:->.*)?:$")
_DEFINITION = re.compile(r"^([^:;.?!]{2,60}?)\s*(?::|\s[-\u2013]\s)\s*(\S.{15,})$")
_TERM = re.compile(r"[A-Za-z][\w' -]*[A-Za-z0-9]")
#: requirement numbers, versions and dates name no concept a question could ask about
_REFERENCE = re.compile(r"\d[\d.-]*\d|^R-\d|\bRelease\b|\bVersion\b", re.IGNORECASE)
_DEFINING = re.compile(
    r"^((?:The|An?)\s+)?([^,;:()]{3,80}?)\s+(is|are|returns|specifies|controls|determines|"
    r"causes|means|allows|provides|contains)\s+(\S.{10,})$"
)
#: words a definition's term or a sentence's subject may not start with: they refer elsewhere
_REFERRING = "it this that these those there they which what when where if each all some any above"
_LABELS = "note example examples see warning tip important usage syntax answer question"
_LINKING = "for in on as but and or so such however also"
_NOT_A_TERM = frozenset(f"{_REFERRING} {_LABELS} {_LINKING}".split())
_BASE_VERB = {"specifies": "specify", "means": "mean"}


@dataclass(frozen=True)
class Question:
    """A question about one chunk and the sentence of it that answers, as the chunk has it."""

    text: str
    answer: str
    kind: str


@dataclass
class _Item:
    question: Question
    oracle: Passage
    split: str
    distractors: list[Passage]


# -- questions from the documents' structure -----------------------------------------------


def structure_questions(text: str, heading: str | None = None, title: str | None = None):
    """Every question the structure of a chunk's text asks, with the sentence that answers."""
    lines = [line.strip() for line in text.split("\n")]
    found: list[Question] = []
    table_header: list[str] | None = None
    for i, line in enumerate(lines):
        following = next((x for x in lines[i + 1 :] if x), "")
        question = (
            _declaration(line)
            or _table_row(line, table_header)
            or _definition(line)
            or _term(line, following, heading, title)
            or _defining_sentence(line)
        )
        if _cells(line) and table_header is None:
            table_header = _cells(line)
        if question is not None and _checkable(question.answer):
            found.append(question)
    return found


def _checkable(answer: str) -> bool:
    return MIN_ANSWER_WORDS <= word_count(answer) <= MAX_ANSWER_WORDS


def _declaration(line: str) -> Question | None:
    match = _C_DECLARATION.match(line) or _PY_DEFINITION.match(line)
    if not match:
        return None
    return Question(f"How is {match.group(1)}() declared?", line, "signature")


def _cells(line: str) -> list[str]:
    if line.count("|") < 2:
        return []
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table_row(line: str, header: list[str] | None) -> Question | None:
    cells = _cells(line)
    if not header or len(cells) != len(header) or len(cells) < 2 or cells == header:
        return None
    if not _is_term(header[1]) or not re.search(r"\w\w", cells[0]) or not cells[1].strip("-: "):
        return None
    return Question(f"What is the {header[1]} of {cells[0]}?", line, "table_row")


def _is_term(text: str) -> bool:
    """A name a reader could ask about: a few words, no code, no reference number or date."""
    words = text.split()
    return (
        0 < len(words) <= MAX_TERM_WORDS
        and bool(_TERM.fullmatch(text))
        and not _REFERENCE.search(text)
        and not any(w.casefold() in _NOT_A_TERM for w in words[:1])
    )


def _is_sentence(text: str) -> bool:
    """Prose that ends as a sentence ends, not a table dump or a lead-in to a list."""
    return text.endswith((".", "!", "?")) and "  " not in text and _checkable(text)


def _definition(line: str) -> Question | None:
    match = _DEFINITION.match(line)
    if not match or not _is_term(match.group(1).strip()):
        return None
    answer = split_sentences(line)[0].text
    if not _is_sentence(answer) or word_count(match.group(2)) < 5:
        return None
    return Question(f"What is {match.group(1).strip()}?", answer, "definition")


def _term(line: str, following: str, heading: str | None, title: str | None) -> Question | None:
    """A short line before a paragraph: a heading or a definition list's term (one lower-case
    word is more often a list of methods or keywords, each without its own text)."""
    term = _NUMBERING.sub("", line).strip()
    if not _is_term(term) or not following or not following[:1].isupper():
        return None
    if " " not in term and term.islower():
        return None
    answer = split_sentences(following)[0].text
    if word_count(answer) < 6 or not _is_sentence(answer):
        return None
    is_heading = bool(heading) and " ".join(line.split()) == " ".join(str(heading).split())
    if is_heading and title and title.casefold() != term.casefold():
        return Question(f"What does {title} say about {term}?", answer, "heading")
    return Question(f"What is {term}?", answer, "term")


def _defining_sentence(line: str) -> Question | None:
    """A paragraph opening with the thing it explains: "The X opcode is used to ..."."""
    sentences = split_sentences(line)
    if not sentences:
        return None
    answer = sentences[0].text
    match = _DEFINING.match(answer)
    if not match or not _is_sentence(answer):
        return None
    article, subject, verb = (match.group(1) or "").strip(), match.group(2).strip(), match.group(3)
    words = subject.split()
    if len(words) > MAX_SUBJECT_WORDS or any(w.casefold() in _NOT_A_TERM for w in words):
        return None
    the = f"{article.lower()} " if article else ""
    if verb in ("is", "are"):
        return Question(f"What {verb} {the}{subject}?", answer, "defining_sentence")
    base = _BASE_VERB.get(verb, verb[:-1])
    return Question(f"What does {the}{subject} {base}?", answer, "defining_sentence")


# -- questions from a generator ------------------------------------------------------------


def _generated_question(generator: Any, model: str, passage: Passage, max_new_tokens: int):
    """The generator's question about a passage, answered by the passage's best sentence for
    its question and answer; or None and why."""
    from kb.grounding.evidence import terms

    prompt = fill_template(package_prompt(QA_PROMPT_FILE), {"text": passage.text})
    reply = generator.generate([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens)
    pair, why = parse_qa(getattr(reply, "text", None) or "")
    if pair is None:
        return None, f"unusable model output: {why}"
    wanted = terms(f"{pair.question} {pair.answer}")
    best, overlap = None, 0
    for span in split_sentences(passage.text):
        if _checkable(span.text):
            shared = len(wanted & terms(span.text))
            if shared > overlap:
                best, overlap = span.text, shared
    if best is None:
        return None, "no sentence of the passage shares a word with the model's answer"
    return Question(pair.question, best, f"generator:{model}"), ""


# -- the recipe ----------------------------------------------------------------------------


def _passage(chunk: Any) -> Passage:
    return Passage(
        chunk_id=chunk.chunk_id,
        doc_id=chunk.doc_id,
        source=chunk.source,
        text=chunk.text,
        score=0.0,
        start=chunk.start,
        end=chunk.end,
        ordinal=chunk.ordinal,
        page=chunk.page,
        heading=chunk.heading,
        title=chunk.title,
    )


def _excluded(source: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(source, p) for p in patterns)


def _flat(text: str) -> str:
    return " ".join(text.split()).casefold()


def held_out_documents(doc_ids: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The seeded share of the documents whose examples are held out for validation."""
    documents = sorted(set(doc_ids))
    want = round(val_fraction * len(documents))
    if val_fraction > 0 and want == 0 and len(documents) > 1:
        want = 1
    random.Random(f"{seed}:raft-split").shuffle(documents)
    return set(documents[:want])


def raft_examples(
    options: PrepareOptions,
    kb: Any,
    counter: TokenCounter,
    *,
    generator: Any = None,
    max_examples: int,
    progress: Progress | None = None,
) -> tuple[list[Example], list[Skipped], dict[str, Any]]:
    """RAFT examples from `options.from_collection`, each marked with its side of the split,
    the skipped inputs, and what the manifest records of the recipe."""
    if options.system or options.template:
        raise InvalidInput(
            "--recipe raft writes the rag prompt itself (kb/prompts/rag.yaml), so that the "
            "trained model answers as rag+finetuned does: drop --system and --template"
        )
    name = options.from_collection
    collection = kb.collection(name)
    rng = random.Random(f"{options.seed}:raft")
    skipped: list[Skipped] = []
    chunks = [
        c for c in collection.iter_chunks() if not _excluded(c.source, options.exclude_sources)
    ]
    if not chunks:
        raise InvalidInput(
            f"collection {name!r} has no chunks outside --exclude-sources "
            f"{list(options.exclude_sources)}: ingest documents or exclude fewer"
        )
    if generator is None:
        asked = _structure_candidates(chunks, rng)
        if not asked:
            raise InvalidInput(
                f"the documents of collection {name!r} have no headings, definitions, "
                "declarations or defining sentences to ask about: pass --generate-with MODEL "
                "so that a model writes the questions"
            )
        rng.shuffle(asked)
    else:
        asked = []
        for chunk in rng.sample(chunks, min(len(chunks), max_examples * GENERATOR_ATTEMPTS)):
            if len(asked) >= max_examples:
                break
            passage = _passage(chunk)
            question, why = _generated_question(
                generator, options.generate_with or "", passage, options.max_new_tokens
            )
            if question is None:
                skipped.append(Skipped(f"chunk {chunk.chunk_id} of {chunk.source}", why))
            else:
                asked.append((question, passage))
            if progress:
                progress(len(asked), max_examples)

    held = held_out_documents((p.doc_id for _, p in asked), options.val_fraction, options.seed)
    # each side gets its share of the examples, however the documents' questions fell
    wanted = round(options.val_fraction * max_examples) or int(bool(held))
    quota = {VALIDATION: wanted, TRAIN: max_examples - wanted}
    items: list[_Item] = []
    for question, oracle in asked:
        split = VALIDATION if oracle.doc_id in held else TRAIN
        if sum(item.split == split for item in items) >= quota[split]:
            continue
        distractors = _distractors(kb, name, question, oracle, split, held, options)
        if not distractors:
            skipped.append(
                Skipped(
                    f"chunk {oracle.chunk_id} of {oracle.source}",
                    f"search found no passage besides the oracle for {question.text!r}",
                )
            )
            continue
        items.append(_Item(question, oracle, split, distractors))
    hidden = set(rng.sample(range(len(items)), round(options.no_oracle_share * len(items))))
    prompt = load_prompt("rag")
    examples = []
    for i, item in enumerate(items):
        example = _example(item, i in hidden, options, counter, prompt, rng)
        if example is None:
            skipped.append(
                Skipped(
                    f"chunk {item.oracle.chunk_id} of {item.oracle.source}",
                    f"the oracle does not fit in {options.max_tokens} tokens with the "
                    "question and answer: raise --max-tokens",
                )
            )
        else:
            examples.append(example)
    kinds = Counter(e.metadata["question_from"] for e in examples)
    recipe = {
        "recipe": RECIPE,
        "distractors": options.distractors,
        "no_oracle_share": options.no_oracle_share,
        "no_oracle": sum(not e.metadata["oracle_shown"] for e in examples),
        "questions_from": dict(sorted(kinds.items())),
        "exclude_sources": list(options.exclude_sources),
        "split": {
            "by": "document",
            "train_documents": len({e.metadata["oracle_doc_id"] for e in examples} - held),
            "validation_documents": len({e.metadata["oracle_doc_id"] for e in examples} & held),
        },
    }
    return examples, skipped, recipe


def _structure_candidates(chunks: list[Any], rng: random.Random) -> list[tuple[Question, Any]]:
    """One question per chunk that asks any, drawn at random, from at most
    MAX_CHUNKS_PER_DOCUMENT chunks of a document; a question asked of more than one chunk is
    ambiguous and left out."""
    per_chunk = [
        (chunk, structure_questions(chunk.text, chunk.heading, chunk.title)) for chunk in chunks
    ]
    asked = Counter(_flat(q.text) for _, questions in per_chunk for q in set(questions))
    by_document: dict[str, list[tuple[Question, Passage]]] = {}
    for chunk, questions in per_chunk:
        clear = [q for q in questions if asked[_flat(q.text)] == 1]
        if clear:
            by_document.setdefault(chunk.doc_id, []).append((rng.choice(clear), _passage(chunk)))
    out = []
    for found in by_document.values():
        out += rng.sample(found, min(len(found), MAX_CHUNKS_PER_DOCUMENT))
    return out


def _distractors(
    kb: Any,
    name: str,
    question: Question,
    oracle: Passage,
    split: str,
    held: set[str],
    options: PrepareOptions,
) -> list[Passage]:
    """The top hits of kb's own search for the question, less the oracle, any passage that
    holds the answer too (an overlapping chunk), excluded sources, and for a training example
    the held-out documents; one more than `distractors`, for an example without its oracle."""
    wanted = options.distractors + 1
    hits = kb.search(question.text, collection=name, k=wanted + SEARCH_SLACK)
    answer = _flat(question.answer)
    kept = []
    for hit in hits:
        if hit.chunk_id == oracle.chunk_id or answer in _flat(hit.text):
            continue
        if _excluded(hit.source, options.exclude_sources):
            continue
        if split == TRAIN and hit.doc_id in held:
            continue
        kept.append(hit)
    return kept[:wanted]


def quote(answer: str, text: str) -> list[str]:
    """The sentences an answer quotes from its oracle's `text`: the one that answers, and the
    next one when it is a sentence and the two stay within MAX_QUOTE_WORDS."""
    spans = split_sentences(text)
    for i, span in enumerate(spans[:-1]):
        if span.text == answer:
            after = spans[i + 1].text
            if _is_sentence(after) and word_count(answer) + word_count(after) <= MAX_QUOTE_WORDS:
                return [answer, after]
            break
    return [answer]


def _example(
    item: _Item,
    hide_oracle: bool,
    options: PrepareOptions,
    counter: TokenCounter,
    prompt: Any,
    rng: random.Random,
) -> Example | None:
    """The rag prompt over the shuffled passages and the answer; None when the oracle cannot
    fit even alone."""
    if hide_oracle:
        passages = list(item.distractors)
    else:
        passages = [item.oracle, *item.distractors[: options.distractors]]
    rng.shuffle(passages)

    def count(text: str) -> int:
        return counter.count_texts([text])[0]

    while True:
        messages, used = build_rag_messages(
            item.question.text,
            passages,
            count_tokens=count,
            context_window=options.max_tokens,
            max_new_tokens=options.max_new_tokens,
            template=prompt,
        )
        shown = [p.chunk_id for p in used]
        complete = len(used) == len(passages) and used[-1].text == passages[-1].text
        if complete:
            break
        droppable = [p for p in passages if p.chunk_id != item.oracle.chunk_id]
        if hide_oracle and len(passages) > 1 or not hide_oracle and droppable:
            passages.remove(droppable[-1])  # a distractor goes before the oracle is cut
            continue
        if hide_oracle and used:
            break
        return None
    if hide_oracle:
        answer, cited = not_covered_answer(prompt), None
    else:
        cited = shown.index(item.oracle.chunk_id) + 1
        answer = " ".join(f"{s} [{cited}]" for s in quote(item.question.answer, item.oracle.text))
    metadata = {
        "recipe": RECIPE,
        "question": item.question.text,
        "question_from": item.question.kind,
        "oracle_chunk_id": item.oracle.chunk_id,
        "oracle_doc_id": item.oracle.doc_id,
        "oracle_shown": not hide_oracle,
        "source": item.oracle.source,
        "passage_chunk_ids": shown,
        "passage_doc_ids": [p.doc_id for p in used],
        "cited": cited,
        "split": item.split,
    }
    return Example(
        messages=[*messages, {"role": "assistant", "content": answer}],
        metadata=metadata,
        split=item.split,
    )
