"""Fine-tuning backends by name: "local" (LoRA on CPU) and "openai" (a remote fine-tuning API)."""

from __future__ import annotations

from importlib import import_module

from kb.errors import InvalidInput
from kb.finetune.backends.base import FineTuneBackend, FineTuneResult, FineTuneSpec
from kb.settings import Settings

__all__ = ["BACKENDS", "FineTuneBackend", "FineTuneResult", "FineTuneSpec", "get_backend"]

# name -> "module:class", imported only when used so torch/peft load lazily
BACKENDS = {
    "local": "kb.finetune.backends.local_lora:LocalLoraBackend",
    "openai": "kb.finetune.backends.openai_api:OpenAIFineTuneBackend",
}


def get_backend(name: str, settings: Settings) -> FineTuneBackend:
    """The backend registered under `name`; an unknown name lists the known ones."""
    target = BACKENDS.get(name)
    if target is None:
        raise InvalidInput(
            f"unknown fine-tuning backend {name!r}: use one of {', '.join(sorted(BACKENDS))}"
        )
    module, cls = target.split(":")
    return getattr(import_module(module), cls)(settings)
