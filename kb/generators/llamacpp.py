"""Local generation with llama.cpp (llama-cpp-python) on the CPU: a GGUF model without adapter.

A small GGUF file is converted once into a bfloat16 copy in `<cache_dir>/gguf/` (see WEIGHTS);
the prompt comes from the chat template the file carries. Tokens are picked here the way the
transformers path picks them (greedy, or top-p sampling, after the same repetition penalty over
prompt and answer), so the two runtimes differ only in the arithmetic of the forward pass;
benchmarks/generation.py measures how often their greedy answers agree token for token.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kb.errors import BackendError, InvalidInput
from kb.generators.base import (
    Generation,
    Generator,
    Message,
    StopFilter,
    Stopwatch,
    StreamEvent,
    check_messages,
)
from kb.generators.local import (
    BUNDLED,
    REPETITION_PENALTY,
    TOP_P,
    converted_model_dir,
    resolve_model_source,
)
from kb.settings import GeneratorSpec

#: llama.cpp threads for one generation; benchmarks/generation.py measures 1 against 2
LLAMACPP_THREADS = 1
#: threads that read the prompt; None: every core this process may use. Reading is one batched
#: pass over ~1,000 tokens where each core pays (first token 2.0 s against 3.3 s on one thread,
#: 2 cores), while decoding one token at a time only waits on a second thread (25 against 35
#: tokens/s; docs/benchmarks.md, Generation)
LLAMACPP_PROMPT_THREADS: int | None = None
#: llama.cpp's fused attention. It reads a ~940-token prompt 13-23% faster and then decodes at
#: half to two-thirds the rate (bf16 35 against 22 tokens/s, Q8_0 45 against 27, one thread,
#: Intel Xeon with AMX): a 128-token answer took 5.6 s without it against 7.3 s with it, so it
#: is off
LLAMACPP_FLASH_ATTN = False
#: prompt tokens evaluated per llama.cpp batch
BATCH_TOKENS = 512
#: the weights llama.cpp computes with: "gguf", the file as it is, or a copy made once in the
#: cache, its blocks de-quantized and stored as "bf16" or re-quantized as "q8_0". With SmolLM2 on
#: an Intel Xeon with AMX, the shipped Q4_1 blocks decode fastest (50-68 tokens/s over two runs)
#: but read a ~940-token prompt slowest (first token 3.0 s); the Q8_0 copy reads it in 1.9 s and
#: decodes 45; the bfloat16 copy reads it in 2.0 s and decodes 35. Quantized blocks are
#: multiplied with activations rounded to 8 bits, and the 135M model feels it: asked "What is
#: the capital of France?", Q4_1 and Q8_0 answer "L'Étoile: Parisis la cité ...", the bfloat16
#: copy and transformers "The capital of France is Paris." (docs/benchmarks.md, Generation).
#: "auto": the bfloat16 copy up to COPY_MAX_BYTES of GGUF file; past that (measured on the 135M
#: model only) decoding is bound by memory reads, which a 3-4x larger copy would slow
WEIGHTS = ("auto", "gguf", "bf16", "q8_0")
LLAMACPP_WEIGHTS = "auto"
COPY_MAX_BYTES = 256 * 2**20
#: llama.cpp's LLAMA_FTYPE_MOSTLY_* of each copy
_COPY_FTYPES = {"bf16": 32, "q8_0": 7}

_convert_lock = threading.Lock()
#: llama.cpp may move weights into "extra buffer types", repacked for this CPU's matrix units
#: (AMX, AVX-512 repacking). On an Intel Xeon with AMX, llama-cpp-python 0.3.36 built with
#: GGML_NATIVE crashed the process (SIGSEGV) on any batch of 4+ tokens of the shipped Q4_1 file,
#: and of Q4_0, Q8_0 and Q4_K_M files made from it, with them; without them each ran. A child
#: process tries the file first, with the settings it will load with, and its verdict is kept
#: in the cache (~0.3 s once per file, llama.cpp build and CPU); where it fails, the weights
#: load as stored
_PROBE = """
import sys
from llama_cpp import Llama
path, threads, prompt_threads, flash_attn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
llm = Llama(path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=prompt_threads,
            flash_attn=flash_attn, verbose=False)
tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 30, add_bos=False)[:300]
llm.eval(tokens)
llm.eval(tokens[:1])
"""
PROBE_TIMEOUT_S = 120
_probe_lock = threading.Lock()
_params_lock = threading.Lock()


def llamacpp_unavailable(spec: GeneratorSpec) -> str | None:
    """Why llama.cpp cannot run `spec`, or None when it can (bad model names raise InvalidInput)."""
    if spec.adapter:
        return "it has a LoRA adapter, which only the transformers runtime applies"
    source = resolve_model_source(spec.model)
    if source.suffix != ".gguf":
        return f"its model {spec.model!r} is a transformers folder, not a .gguf file"
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # ImportError, or OSError when its shared library does not load
        return (
            f"llama-cpp-python is not importable ({exc}); install it with "
            "`pip install 'kb[llamacpp]'` or `bash scripts/setup.sh`"
        )
    return None


class LlamaCppGenerator(Generator):
    """A local GGUF model without adapter, run by llama.cpp on the CPU; greedy at temperature 0.

    The model loads when the generator is built, so a file llama.cpp cannot read fails here,
    where the registry can fall back to transformers.
    """

    runtime = "llamacpp"

    def __init__(
        self,
        spec: GeneratorSpec,
        cache_dir: Path,
        *,
        threads: int = LLAMACPP_THREADS,
        weights: str = LLAMACPP_WEIGHTS,
        prompt_threads: int | None = LLAMACPP_PROMPT_THREADS,
        flash_attn: bool = LLAMACPP_FLASH_ATTN,
    ):
        self._take_spec(spec, "local")
        reason = llamacpp_unavailable(spec)
        if reason is not None:
            raise InvalidInput(
                f"generator {spec.name!r} cannot run on llama.cpp: {reason}; or set its "
                "runtime to 'auto' or 'transformers'"
            )
        prompt_threads = prompt_threads or _usable_cores() or threads
        if min(threads, prompt_threads) < 1:
            raise InvalidInput(f"threads={threads}, prompt_threads={prompt_threads}: use 1 or more")
        if weights not in WEIGHTS:
            raise InvalidInput(f"weights={weights!r}: use one of {', '.join(WEIGHTS)}")
        self.threads = threads
        self.prompt_threads = prompt_threads
        self.source = resolve_model_source(spec.model)
        label = spec.model if spec.model in BUNDLED else self.source.name
        self.model_id = f"local:{label}@llama.cpp"
        if weights == "auto":
            weights = "bf16" if self.source.stat().st_size <= COPY_MAX_BYTES else "gguf"
        self.weights = weights
        path = self.source if weights == "gguf" else weights_copy(self.source, cache_dir, weights)
        #: whether llama.cpp may repack the weights for this CPU (see _PROBE)
        self.extra_buffers = extra_buffers_work(
            path, cache_dir, threads=threads, prompt_threads=prompt_threads, flash_attn=flash_attn
        )
        self.flash_attn = flash_attn
        self._llama = _open(
            path,
            spec.context_window,
            threads,
            prompt_threads,
            extra_buffers=self.extra_buffers,
            flash_attn=flash_attn,
        )
        self._vocab_size = self._llama.n_vocab()
        self._vocab = _vocab(self._llama)
        self._pieces: dict[int, bytes] = {}
        self._template = _chat_template(self._llama, self.source)
        self._rng = np.random.default_rng()
        # one generation at a time: a llama.cpp context holds one conversation's cache
        self._lock = threading.Lock()

    def load(self) -> None:
        """Run one token through the model, so the first request does not pay for warming up."""
        self.generate([{"role": "user", "content": "Hi"}], max_new_tokens=1, temperature=0)

    def count_tokens(self, text: str) -> int:
        # special=True: marker text such as <|im_end|> counts as one token, as in the prompt
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=True))

    def count_message_tokens(self, messages: list[Message]) -> int:
        return len(self._encode(messages))

    def generate(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        events = self.stream(
            messages, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop
        )
        final = None
        for final in events:  # noqa: B007 - the last event carries the Generation
            pass
        assert final is not None and final.generation is not None
        return final.generation

    def stream(
        self,
        messages: list[Message],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream text as the model decodes it; closing the iterator stops the decoding.

        The generator's lock is held from the first event until the stream ends or is closed.
        """
        prompt, limit, temp = self._request(messages, max_new_tokens, temperature)
        stop_filter = StopFilter(stop)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        answer_tokens = 0
        ended = False
        with self._lock:
            stopwatch = Stopwatch()
            tokens = self._decode(prompt, limit, temp)
            try:
                for token in tokens:
                    stopwatch.mark_first_token()
                    if self._is_end(token):
                        ended = True
                        break
                    answer_tokens += 1
                    delta = stop_filter.feed(text.decode(self._piece(token)))
                    if delta:
                        parts.append(delta)
                        yield StreamEvent(delta=delta)
                    if stop_filter.stopped:
                        break
                tail = stop_filter.feed(text.decode(b"", final=True)) + stop_filter.flush()
                if tail:
                    parts.append(tail)
                    yield StreamEvent(delta=tail)
            finally:
                tokens.close()
        hit_limit = answer_tokens >= limit and not ended and not stop_filter.stopped
        generation = Generation(
            text="".join(parts),
            prompt_tokens=len(prompt),
            completion_tokens=answer_tokens,
            finish_reason="length" if hit_limit else "stop",
            model=self.model_id,
            timings=stopwatch.timings(),
        )
        yield StreamEvent(generation=generation)

    def _encode(self, messages: list[Message]) -> list[int]:
        check_messages(messages)
        prompt = self._template(messages=messages).prompt
        return self._llama.tokenize(prompt.encode(), add_bos=False, special=True)

    def _request(
        self, messages: list[Message], max_new_tokens: int | None, temperature: float | None
    ) -> tuple[list[int], int, float]:
        """The prompt's tokens, the answer's token limit and the temperature, all checked."""
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = self.temperature if temperature is None else temperature
        if limit < 1:
            raise InvalidInput(f"max_new_tokens={limit}: ask for at least 1 token")
        if temp < 0:
            raise InvalidInput(f"temperature={temp}: use 0 (greedy) or a positive value")
        prompt = self._encode(messages)
        room = self.context_window - len(prompt)
        if room < 1:
            raise InvalidInput(
                f"the prompt has {len(prompt)} tokens and generator {self.name!r} has a "
                f"{self.context_window}-token context window: send fewer or shorter passages or messages"
            )
        return prompt, min(limit, room), temp

    def _decode(self, prompt: list[int], limit: int, temperature: float) -> Iterator[int]:
        """Up to `limit` picked token ids (an end token included); stops when closed."""
        import llama_cpp

        llama = self._llama
        seen = np.zeros(self._vocab_size, dtype=bool)
        seen[prompt] = True
        try:
            # a fresh context each time: reusing a cached prefix would change the rounding of
            # its keys and values, and so, now and then, the answer to a repeated question
            llama.reset()
            llama.eval(prompt)
            for step in range(limit):
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(self._vocab_size,)
                ).copy()
                token = self._pick(logits, np.flatnonzero(seen), temperature)
                yield token
                if step + 1 == limit or self._is_end(token):
                    return
                seen[token] = True
                llama.eval([token])
        except RuntimeError as exc:  # llama.cpp reports decode failures this way
            raise BackendError(
                f"local model {self.model_id!r} failed while generating on llama.cpp: {exc}"
            ) from exc

    def _pick(self, logits: np.ndarray, seen: np.ndarray, temperature: float) -> int:
        """The next token as transformers picks it: repetition penalty, then argmax or top-p."""
        scores = logits[seen]
        logits[seen] = np.where(
            scores < 0, scores * REPETITION_PENALTY, scores / REPETITION_PENALTY
        )
        if temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        # the nucleus almost always lies in the top few hundred tokens: sort only those
        top = np.argpartition(probs, -256)[-256:] if probs.size > 256 else np.arange(probs.size)
        top = top[np.argsort(-probs[top])]
        if probs[top].sum() < TOP_P:
            top = np.argsort(-probs)
        cumulative = np.cumsum(probs[top])
        nucleus = top[cumulative - probs[top] < TOP_P]
        weights = probs[nucleus] / probs[nucleus].sum()
        return int(self._rng.choice(nucleus, p=weights))

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _piece(self, token: int) -> bytes:
        """The bytes of one token's text (none for control tokens); cached per token."""
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            size = 64
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
                if n >= 0:
                    break
                size = -n  # the piece needs this many bytes
            piece = self._pieces[token] = buffer.raw[:n]
        return piece


def _usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def weights_copy(source: Path, cache_dir: Path, kind: str) -> Path:
    """A copy of a GGUF file with its weights in `kind` (a key of _COPY_FTYPES), made once in
    the cache (~1 s here)."""
    import llama_cpp

    name = converted_model_dir(source, cache_dir).name
    target = Path(cache_dir) / "gguf" / f"{name}-{kind.replace('_', '')}.gguf"
    if target.is_file():
        return target
    with _convert_lock:
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = _COPY_FTYPES[kind]
        params.allow_requantize = True  # from a quantized file: de-quantize, then convert
        params.nthread = 1
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its per-tensor log
        try:
            status = llama_cpp.llama_model_quantize(
                str(source).encode(), str(tmp).encode(), ctypes.byref(params)
            )
            if status != 0:
                raise BackendError(
                    f"llama.cpp could not convert {source} to {kind} (status {status}): check "
                    "the file is a complete GGUF model and the cache folder is writable, or set "
                    "the generator's runtime to 'transformers'"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def extra_buffers_work(
    path: Path, cache_dir: Path, *, threads: int, prompt_threads: int, flash_attn: bool
) -> bool:
    """Whether llama.cpp runs `path` with its repacked weights here without crashing: a child
    process loads it that way and evaluates a prompt and a token. The verdict is kept in
    `<cache_dir>/gguf/`, keyed by the file, the settings, the llama.cpp build and the CPU."""
    import llama_cpp

    stat = path.stat()
    key = json.dumps(
        [
            str(path.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            threads,
            prompt_threads,
            flash_attn,
            llama_cpp.__version__,
            llama_cpp.llama_print_system_info().decode(errors="replace"),
            _cpu_model(),
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    verdict = Path(cache_dir) / "gguf" / f"probe-{digest}.json"
    with _probe_lock:
        try:
            return bool(json.loads(verdict.read_text())["extra_buffers"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        works, outcome = _probe(path, threads, prompt_threads, flash_attn)
        if not works:
            logging.getLogger(__name__).warning(
                "llama.cpp's trial of %s with its weights repacked for this CPU %s; loading "
                "them as stored",
                path.name,
                outcome,
            )
        verdict.parent.mkdir(parents=True, exist_ok=True)
        tmp = verdict.with_name(f".{verdict.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"extra_buffers": works, "outcome": outcome, "key": key}))
        os.replace(tmp, verdict)
    return works


def _probe(path: Path, threads: int, prompt_threads: int, flash_attn: bool) -> tuple[bool, str]:
    """Run _PROBE in a child process: whether it finished, and how it ended."""
    args = [str(path), str(threads), str(prompt_threads), "1" if flash_attn else "0"]
    try:
        child = subprocess.run(
            [sys.executable, "-P", "-c", _PROBE, *args],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, f"gave no answer in {PROBE_TIMEOUT_S} s"
    except (OSError, ValueError) as exc:  # no usable interpreter to start it with
        return False, f"could not start ({exc})"
    if child.returncode == 0:
        return True, "ran"
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        return False, f"was killed by {name}"
    tail = child.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return False, f"failed (exit status {child.returncode}: {tail[0][:300]})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next(
                (line.split(":", 1)[1].strip() for line in info if "model name" in line), ""
            )
    except OSError:
        return ""


@contextlib.contextmanager
def _model_params(**fields):
    """llama-cpp-python builds its model parameters inside `Llama()` and exposes no argument
    for some of them: its defaults are replaced with `fields` set while one loads."""
    import llama_cpp.llama_cpp as api

    with _params_lock:
        default = api.llama_model_default_params

        def params():
            out = default()
            for name, value in fields.items():
                setattr(out, name, value)
            return out

        api.llama_model_default_params = params
        try:
            yield
        finally:
            api.llama_model_default_params = default


def _open(
    source: Path,
    context_window: int,
    threads: int,
    prompt_threads: int,
    *,
    extra_buffers: bool,
    flash_attn: bool,
):
    import llama_cpp

    try:
        with _model_params(use_extra_bufts=extra_buffers):
            return llama_cpp.Llama(
                model_path=str(source),
                n_ctx=context_window,
                n_batch=BATCH_TOKENS,
                n_threads=threads,
                n_threads_batch=prompt_threads,
                flash_attn=flash_attn,
                verbose=False,
            )
    except Exception as exc:
        raise BackendError(
            f"llama.cpp could not load {source}: {exc}; check the file is a complete GGUF model "
            "llama.cpp supports, or set the generator's runtime to 'transformers'"
        ) from exc


def _vocab(llama):
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llama.model)


def _chat_template(llama, source: Path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise BackendError(
            f"{source} carries no chat template (tokenizer.chat_template): use a chat model's "
            "GGUF file, or set the generator's runtime to 'transformers'"
        )

    def token_text(token: int) -> str:
        return (
            llama.detokenize([token], special=True).decode(errors="replace") if token >= 0 else ""
        )

    return Jinja2ChatFormatter(
        template,
        eos_token=token_text(llama.token_eos()),
        bos_token=token_text(llama.token_bos()),
        add_generation_prompt=True,
    )
