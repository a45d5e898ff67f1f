"""Read a causal LM's answer to a classification prompt: by constrained scoring (the
log-likelihood of each label as the complete answer) or by free generation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from kb.finetune.encoding import render_prompt


def label_logprobs(
    model: Any, tokenizer: Any, messages: list[dict[str, str]], labels: Sequence[str]
) -> list[float]:
    """Log-probability of each label followed by the end-of-turn token, after the prompt.

    The prompt runs through the model once; each label's few tokens then continue from a copy
    of its key/value cache. The end token makes "rec.auto" and "rec.autos" complete answers
    of their own, so a label that is a prefix of another is not favoured.
    """
    import torch

    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores = []
        for label in labels:
            ids = tokenizer(label, add_special_tokens=False)["input_ids"]
            if end is not None:
                ids = ids + [end]
            total = float(first[ids[0]])
            if len(ids) > 1:
                cont = model(
                    input_ids=torch.tensor([ids[:-1]]),
                    past_key_values=copy.deepcopy(out.past_key_values),
                    use_cache=True,
                )
                logps = torch.log_softmax(cont.logits[0].float(), dim=-1)
                total += float(sum(logps[j, ids[j + 1]] for j in range(len(ids) - 1)))
            scores.append(total)
    return scores


def classify_by_generation(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    labels: Sequence[str],
    max_new_tokens: int = 12,
) -> str | None:
    """Greedy-decode an answer and map it to a label; None when it names none of them."""
    import torch

    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    text = tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip().lower()
    return match_label(text, labels)


def match_label(text: str, labels: Sequence[str]) -> str | None:
    """The label an answer names: the longest label it starts with, else the only one in it."""
    text = text.strip().lower()
    by_length = sorted(labels, key=len, reverse=True)
    for label in by_length:
        if text.startswith(label.lower()):
            return label
    inside = [label for label in by_length if label.lower() in text]
    return inside[0] if len(inside) == 1 else None
