"""LoRA fine-tuning of a local causal LM (default: the bundled SmolLM2) on the CPU with peft."""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput
from kb.finetune.backends.base import FineTuneBackend, FineTuneResult, FineTuneSpec
from kb.finetune.encoding import (
    IGNORE,
    EncodedExample,
    encode_record,
    read_examples,
)
from kb.jobs import JobContext

DEFAULT_LR = 2e-4
MAX_GRAD_NORM = 1.0
LENGTH_GROUP_BATCHES = 16  # batches drawn from a pool sorted by length, to keep padding low


class LocalLoraBackend(FineTuneBackend):
    """Trains a LoRA adapter; only the adapter is saved (per epoch and at the end)."""

    name = "local"

    def check(self, spec: FineTuneSpec) -> None:
        super().check(spec)
        if spec.base_model != "smollm2" and not Path(spec.base_model).exists():
            raise InvalidInput(
                f"local base model {spec.base_model!r} is neither 'smollm2' (bundled) nor a local "
                "model folder or .gguf file: pass one of those"
            )

    def run(self, ctx: JobContext, spec: FineTuneSpec) -> FineTuneResult:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        _seed(spec.seed)
        work = self.work_dir(ctx)
        ctx.event(f"loading base model {spec.base_model}")
        model, tokenizer = self._load_base(spec.base_model)
        ctx.check_cancelled()
        train, val = self._encode(ctx, spec, tokenizer)
        model = _with_lora(model, spec)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        ctx.event(
            f"training {trainable:,} LoRA parameters on {len(train)} examples "
            f"({len(val)} for validation), {spec.epochs} epoch(s)"
        )
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id or 0

        batches_per_epoch = math.ceil(len(train) / spec.batch_size)
        updates_per_epoch = math.ceil(batches_per_epoch / spec.grad_accumulation)
        total_updates = updates_per_epoch * spec.epochs
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=spec.lr or DEFAULT_LR,
            weight_decay=0.0,
        )
        warmup = int(total_updates * spec.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _linear_warmup_decay(step, warmup, total_updates)
        )
        autocast = _autocast(spec.dtype)
        rng = random.Random(spec.seed)

        checkpoints: list[str] = []
        history: list[dict[str, Any]] = []
        started = time.monotonic()
        seen = 0
        update = 0
        total_examples = len(train) * spec.epochs
        eval_loss = None
        for epoch in range(1, spec.epochs + 1):
            model.train()
            epoch_loss, epoch_tokens = 0.0, 0
            batches = _length_grouped_batches(train, spec.batch_size, rng)
            for i, batch in enumerate(batches):
                ctx.check_cancelled()
                input_ids, attention, labels = _collate(batch, pad_id)
                with autocast:
                    loss, tokens = _batch_loss(model, input_ids, attention, labels)
                (loss / spec.grad_accumulation).backward()
                epoch_loss += float(loss.detach()) * tokens
                epoch_tokens += tokens
                seen += len(batch)
                if (i + 1) % spec.grad_accumulation == 0 or i + 1 == len(batches):
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM
                    )
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    update += 1
                elapsed = time.monotonic() - started
                rate = seen / elapsed if elapsed > 0 else 0.0
                ctx.progress(
                    step=update,
                    total_steps=total_updates,
                    epoch=epoch,
                    epochs=spec.epochs,
                    examples=seen,
                    total_examples=total_examples,
                    loss=round(float(loss.detach()), 4),
                    eval_loss=eval_loss,
                    examples_per_s=round(rate, 3),
                    eta_s=round((total_examples - seen) / rate, 1) if rate else None,
                    lr=scheduler.get_last_lr()[0],
                )
            train_loss = epoch_loss / max(epoch_tokens, 1)
            eval_loss = _eval_loss(model, val, spec.batch_size, pad_id, autocast) if val else None
            history.append({"epoch": epoch, "train_loss": train_loss, "eval_loss": eval_loss})
            ctx.progress(epoch=epoch, train_loss=round(train_loss, 4), eval_loss=eval_loss)
            ctx.event(
                f"epoch {epoch}/{spec.epochs}: train loss {train_loss:.4f}"
                + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else ""),
                epoch=epoch,
                train_loss=train_loss,
                eval_loss=eval_loss,
            )
            if spec.checkpoints and epoch < spec.epochs:
                folder = work / "checkpoints" / f"epoch-{epoch}"
                _save_adapter(model, tokenizer, folder)
                checkpoints.append(str(folder))
                ctx.event(f"checkpoint saved: {folder}")
        ctx.check_cancelled()
        adapter = work / "adapter"
        _save_adapter(model, tokenizer, adapter)
        if spec.checkpoints:
            checkpoints.append(str(adapter))
        seconds = time.monotonic() - started
        ctx.event(f"adapter saved: {adapter} ({seconds:.0f} s of training)")
        return FineTuneResult(
            backend=self.name,
            base_model=spec.base_model,
            adapter=str(adapter),
            metrics={
                "train_loss": history[-1]["train_loss"],
                "eval_loss": history[-1]["eval_loss"],
                "history": history,
                "train_examples": len(train),
                "eval_examples": len(val),
                "epochs": spec.epochs,
                "steps": update,
                "train_seconds": round(seconds, 1),
                "examples_per_s": round(seen / seconds, 3) if seconds else None,
            },
            checkpoints=checkpoints,
        )

    def _load_base(self, model: str) -> tuple[Any, Any]:
        from kb.generators.local import load_base_model

        loaded, tokenizer = load_base_model(model, self.settings.cache_dir, dtype="float32")
        return loaded, tokenizer

    def _encode(
        self, ctx: JobContext, spec: FineTuneSpec, tokenizer: Any
    ) -> tuple[list[EncodedExample], list[EncodedExample]]:
        train_records = read_examples(
            spec.train_file, limit=spec.max_train_examples, seed=spec.seed
        )
        val_records = (
            read_examples(spec.validation_file, limit=spec.max_eval_examples, seed=spec.seed)
            if spec.validation_file
            else []
        )
        encoded = []
        for records in (train_records, val_records):
            items = [encode_record(tokenizer, r, spec.max_seq_len) for r in records]
            kept = [e for e in items if e.label_count]
            if len(kept) < len(items):
                ctx.event(
                    f"{len(items) - len(kept)} example(s) had no answer tokens left after "
                    f"cutting to max_seq_len={spec.max_seq_len} and were dropped",
                    level="warning",
                )
            cut = sum(e.truncated for e in kept)
            if cut:
                ctx.event(
                    f"{cut} example(s) were longer than max_seq_len={spec.max_seq_len} tokens "
                    "and were cut (the middle of the prompt first)",
                    level="warning",
                )
            encoded.append(kept)
        if not encoded[0]:
            raise InvalidInput(
                f"no usable training examples in {spec.train_file} with "
                f"max_seq_len={spec.max_seq_len}: raise --max-seq-len"
            )
        return encoded[0], encoded[1]


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _with_lora(model: Any, spec: FineTuneSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: Any = spec.target_modules or "all-linear"
    extra: dict[str, Any] = {}
    if spec.lora_layers:
        layers = model.config.num_hidden_layers
        if spec.lora_layers > layers:
            raise InvalidInput(
                f"lora_layers={spec.lora_layers} exceeds the model's {layers} layers: use "
                f"1..{layers}, or leave it unset for all"
            )
        # peft accepts a layer subset only with named modules
        if targets == "all-linear":
            targets = _linear_module_names(model)
        extra["layers_to_transform"] = list(range(layers - spec.lora_layers, layers))
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        **extra,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise InvalidInput(
            f"target modules {spec.target_modules} do not fit model {spec.base_model!r} ({exc}): "
            "leave them unset for every linear layer, or name layers such as q_proj,v_proj"
        ) from exc


def _linear_module_names(model: Any) -> list[str]:
    """Names of the linear layers inside the decoder blocks (what "all-linear" picks)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }
    return sorted(names)


def _linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _autocast(dtype: str):
    import contextlib

    import torch

    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _length_grouped_batches(
    examples: list[EncodedExample], batch_size: int, rng: random.Random
) -> list[list[EncodedExample]]:
    """Shuffled batches of similar length: a shuffled pool is sorted by length, then cut."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for lo in range(0, len(order), pool):
        group = sorted(order[lo : lo + pool], key=lambda i: len(examples[i].input_ids))
        batches += [
            [examples[i] for i in group[j : j + batch_size]]
            for j in range(0, len(group), batch_size)
        ]
    rng.shuffle(batches)
    return batches


def _collate(batch: list[EncodedExample], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return ids, attention, labels


def _batch_loss(model: Any, input_ids, attention, labels):
    """Mean next-token loss over the answer tokens, and their count. Logits are computed only
    where an answer token is predicted: the output layer over the whole vocabulary at every
    prompt position is a fifth of the work and none of the signal."""
    import torch

    targets = labels[:, 1:]
    wanted = (targets != IGNORE).any(dim=0).nonzero().flatten()
    logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=wanted).logits
    picked = targets[:, wanted]
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), picked.reshape(-1), ignore_index=IGNORE
    )
    return loss, int((picked != IGNORE).sum())


def _eval_loss(model: Any, examples: list[EncodedExample], batch_size: int, pad_id: int, autocast):
    """Mean loss per answer token over the validation examples."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    with torch.no_grad():
        for lo in range(0, len(ordered), batch_size):
            input_ids, attention, labels = _collate(ordered[lo : lo + batch_size], pad_id)
            with autocast:
                loss, n = _batch_loss(model, input_ids, attention, labels)
            total += float(loss) * n
            tokens += n
    model.train()
    return round(total / max(tokens, 1), 4)


def _save_adapter(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write the adapter to a temporary folder beside `folder`, then swap it in."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save_pretrained(str(staging))
    if folder.exists():
        shutil.rmtree(folder)
    staging.replace(folder)
