"""Registry of fine-tuned models: generation models under `models/<name>/model.json` (with
their LoRA adapter beside it) and embedding models under `models/embeddings/<name>/`.

Stored generation models are registered into the live GeneratorRegistry when the service is
built (`build_generators`, whoever builds it: the CLI, the HTTP app, a test) and the moment a job
registers them, so `finetuned` answer modes see them at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kb.errors import Conflict, InvalidInput, ModelNotFound
from kb.files import atomic_write
from kb.settings import GeneratorSpec, Settings

if TYPE_CHECKING:
    from kb.generators import GeneratorRegistry

RECORD_FILE = "model.json"
ADAPTER_DIR = "adapter"
EMBEDDINGS_DIR = "embeddings"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_NAMES = {EMBEDDINGS_DIR}

ModelKind = Literal["finetuned", "embedding"]


def validate_model_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name in RESERVED_NAMES or ".." in name:
        raise InvalidInput(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting "
            f"with a letter or digit (and not {', '.join(sorted(RESERVED_NAMES))})"
        )
    return name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_info(
    train_file: str | Path, validation_file: str | Path | None = None
) -> dict[str, Any]:
    """Path and sha256 of the training data, and the collection snapshot it came from when the
    folder's `manifest.json` (written by `kb finetune prepare`) names one."""
    train = Path(train_file).resolve()
    info: dict[str, Any] = {"path": str(train), "sha256": file_sha256(train)}
    if validation_file:
        info["validation_path"] = str(Path(validation_file).resolve())
        info["validation_sha256"] = file_sha256(validation_file)
    manifest = train.parent / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        source = data.get("source") if isinstance(data, dict) else None
        if isinstance(source, dict):
            info["source"] = source
            collection = source.get("collection")
            if isinstance(collection, dict) and collection.get("name"):
                info["collection"] = {
                    "name": collection["name"],
                    "generation": collection.get("generation"),
                }
        if isinstance(data, dict) and data.get("task_type"):
            info["task_type"] = data["task_type"]
    return info


@dataclass
class ModelRecord:
    """What is stored about one fine-tuned model."""

    name: str
    kind: ModelKind = "finetuned"
    backend: str = "local"  # "local" | "openai" | "sentence-transformers"
    base_model: str = "smollm2"
    adapter: str | None = None  # local: absolute path of the adapter folder
    remote_model: str | None = None  # openai: the provider's fine-tuned model id
    base_url: str | None = None  # openai: endpoint the remote model is served from
    credentials_from: str | None = None  # openai: configured generator whose api_key to use
    path: str | None = None  # embedding: the saved sentence-transformers folder
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def embedder_name(self) -> str:
        """The name a collection records for an embedding model: "st:<absolute path>"."""
        return f"st:{self.path}"


class ModelRegistry:
    """Fine-tuned models persisted in `settings.models_dir`; optionally mirrored into a live
    GeneratorRegistry so a registered model answers queries at once."""

    def __init__(self, settings: Settings, generators: Any = None):
        self.settings = settings
        self.generators = generators
        self.dir = settings.models_dir
        self._lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    def list(self, kind: ModelKind | None = None) -> list[ModelRecord]:
        """Every stored model (a damaged record is skipped), newest first."""
        records = []
        folders = []
        if self.dir.is_dir():
            folders += [p for p in self.dir.iterdir() if p.name != EMBEDDINGS_DIR]
        if (self.dir / EMBEDDINGS_DIR).is_dir():
            folders += list((self.dir / EMBEDDINGS_DIR).iterdir())
        for folder in folders:
            record = _read_record(folder / RECORD_FILE)
            if record is not None and (kind is None or record.kind == kind):
                records.append(record)
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    def get(self, name: str) -> ModelRecord:
        for folder in (self._folder(name, "finetuned"), self._folder(name, "embedding")):
            record = _read_record(folder / RECORD_FILE)
            if record is not None:
                return record
        known = ", ".join(r.name for r in self.list()) or "none yet"
        raise ModelNotFound(
            f"no fine-tuned model {name!r} (registered: {known}): list them with "
            "`kb models list`, or train one with `kb finetune run`"
        )

    def exists(self, name: str) -> bool:
        return any(
            (self._folder(name, kind) / RECORD_FILE).is_file()
            for kind in ("finetuned", "embedding")
        )

    def check_new_name(self, name: str) -> str:
        """Refuse a name that is invalid, stored already, or a configured base generator's."""
        validate_model_name(name)
        if self.exists(name):
            raise Conflict(
                f"a model named {name!r} exists already: pick another --name, or delete it with "
                f"`kb models delete {name}`"
            )
        if any(spec.name == name for spec in self.settings.generators):
            raise Conflict(
                f"{name!r} is the name of a configured generator (KB_GENERATORS): pick another "
                "--name for the fine-tuned model"
            )
        return name

    def _folder(self, name: str, kind: ModelKind) -> Path:
        validate_model_name(name)
        return self.dir / EMBEDDINGS_DIR / name if kind == "embedding" else self.dir / name

    def folder(self, name: str, kind: ModelKind = "finetuned") -> Path:
        """Where a model of this name and kind is (or will be) stored."""
        return self._folder(name, kind)

    # -- writing ---------------------------------------------------------------------------

    def register(
        self, record: ModelRecord, *, adapter_from: str | Path | None = None
    ) -> ModelRecord:
        """Store a model. A local adapter given by `adapter_from` is copied into the model's
        folder first; the record is written last, so a crash leaves no half-registered model.
        A generation model goes into the live GeneratorRegistry too."""
        with self._lock:
            self.check_new_name(record.name)
            folder = self._folder(record.name, record.kind)
            folder.mkdir(parents=True, exist_ok=True)
            if adapter_from is not None:
                target = folder / ADAPTER_DIR
                _copy_tree_atomically(Path(adapter_from), target)
                record.adapter = str(target.resolve())
            _write_json_atomically(folder / RECORD_FILE, record.to_dict())
        if record.kind == "finetuned" and self.generators is not None:
            self.generators.register(self.generator_spec(record))
        return record

    def update_metrics(self, name: str, **metrics: Any) -> ModelRecord:
        """Add measured figures (e.g. accuracy on a test set) to a stored model."""
        with self._lock:
            record = self.get(name)
            record.metrics.update(metrics)
            _write_json_atomically(self._folder(name, record.kind) / RECORD_FILE, record.to_dict())
            return record

    def delete(self, name: str) -> ModelRecord:
        """Remove a model's folder and take it out of the live GeneratorRegistry. An embedding
        model that a collection still searches with is refused."""
        with self._lock:
            record = self.get(name)
            if record.kind == "embedding":
                users = self._collections_using(record.embedder_name)
                if users:
                    raise Conflict(
                        f"embedding model {name!r} indexes collection(s) {', '.join(users)}: "
                        "re-index them with another model (`kb finetune embeddings`) or delete "
                        "them first"
                    )
            folder = self._folder(name, record.kind)
            trash = folder.with_name(f".deleted-{folder.name}-{os.getpid()}")
            folder.replace(trash)
            shutil.rmtree(trash, ignore_errors=True)
        if record.kind == "finetuned" and self.generators is not None and name in self.generators:
            self.generators.unregister(name)
        return record

    def _collections_using(self, embedder: str) -> list[str]:
        from kb.store.collection import Collection

        root = self.settings.collections_dir
        users = []
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if not (folder / "store.sqlite").is_file():
                    continue
                col = Collection.open(folder, folder.name)
                try:
                    if col.embedder == embedder:
                        users.append(folder.name)
                finally:
                    col.close()
        return users

    # -- serving ---------------------------------------------------------------------------

    def generator_spec(self, record: ModelRecord) -> GeneratorSpec:
        """The GeneratorSpec a stored generation model is served with."""
        if record.kind != "finetuned":
            raise InvalidInput(
                f"model {record.name!r} is an embedding model, not a generator: use it as a "
                f"collection's embedder ({record.embedder_name})"
            )
        if record.backend == "openai":
            source = next(
                (g for g in self.settings.generators if g.name == record.credentials_from), None
            )
            return GeneratorSpec(
                name=record.name,
                backend="openai",
                kind="finetuned",
                model=record.remote_model or record.base_model,
                base_url=record.base_url or (source.base_url if source else None),
                api_key=source.api_key if source else None,
                context_window=source.context_window if source else 2048,
            )
        return GeneratorSpec(
            name=record.name,
            backend="local",
            kind="finetuned",
            model=record.base_model,
            adapter=record.adapter,
        )

    def load_into(self, generators: Any) -> list[str]:
        """Register every stored generation model into `generators` (on service start)."""
        names = []
        # oldest first: the fine-tuned modes default to the most recently registered model
        for record in reversed(self.list(kind="finetuned")):
            if record.backend == "local" and not (record.adapter and Path(record.adapter).is_dir()):
                continue  # its adapter is gone; `kb models list` still shows it
            generators.register(self.generator_spec(record))
            names.append(record.name)
        if self.generators is None:
            self.generators = generators
        return names


def build_generators(settings: Settings) -> tuple[GeneratorRegistry, ModelRegistry]:
    """The settings' generators with every stored fine-tuned model registered, and the model
    registry that keeps them in step (a model registered or deleted later joins or leaves them
    at once). Every service is built from here, so mode=finetuned never depends on who built it."""
    from kb.generators import GeneratorRegistry

    generators = GeneratorRegistry(settings)
    models = ModelRegistry(settings, generators)
    models.load_into(generators)
    return generators, models


def _read_record(path: Path) -> ModelRecord | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in ModelRecord.__dataclass_fields__}
        return ModelRecord(**known)
    except (ValueError, TypeError):
        return None


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def _copy_tree_atomically(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise InvalidInput(f"no adapter folder at {str(source)!r}: the training run saved none")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    shutil.copytree(source, staging, dirs_exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)
