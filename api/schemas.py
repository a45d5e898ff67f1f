"""Request and response bodies of the HTTP API (kept apart from the core's stored records)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Mode = Literal["base", "rag", "extract", "finetuned", "rag+finetuned", "compare"]
SupportPolicy = Literal["flag", "drop", "fallback"]
Method = Literal["dense", "bm25", "hybrid"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]

COLLECTION_FIELD = Field(
    None,
    description="Collection name (default: the server's KB_DEFAULT_COLLECTION).",
    examples=["default"],
)


class Strict(BaseModel):
    """Request bodies refuse unknown fields, so a misspelt option is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain some text, not only whitespace")
    return value


Text = Annotated[str, AfterValidator(_not_blank)]


# -- search ------------------------------------------------------------------------------------


class SearchFilters(Strict):
    source_glob: str | None = Field(
        None,
        max_length=500,
        description="Only passages whose source matches this glob, e.g. '*.pdf'.",
    )


class SearchRequest(Strict):
    query: Text = Field(min_length=1, max_length=8000, description="What to search for.")
    k: int = Field(10, ge=1, le=100, description="Number of passages to return.")
    collection: str | None = COLLECTION_FIELD
    method: Method | None = Field(
        None, description="Retrieval method (default: KB_RETRIEVAL_METHOD)."
    )
    filters: SearchFilters = Field(default_factory=SearchFilters)


class PassageOut(BaseModel):
    chunk_id: int
    doc_id: str
    source: str = Field(description="The file (or upload) the passage comes from.")
    text: str
    score: float = Field(description="The ranking score of the method used (fused for hybrid).")
    start: int = Field(description="Character offset where the passage starts in its section.")
    end: int
    ordinal: int = Field(0, description="Position of the chunk in its document.")
    page: int | None = None
    heading: str | None = None
    title: str | None = None
    scores: dict[str, float] = Field(
        default_factory=dict, description="Per-method scores; 'dense' is the cosine similarity."
    )


class SearchResponse(BaseModel):
    collection: str
    method: str
    results: list[PassageOut]
    timings: dict[str, float]


# -- query -------------------------------------------------------------------------------------


class QueryRequest(Strict):
    question: Text = Field(min_length=1, max_length=8000, examples=["What does the guide say?"])
    mode: Mode = Field(
        "rag",
        description="base: the base model alone; rag: base model + retrieved passages; "
        "extract: the passages' own best sentences, quoted with offsets (no model); "
        "finetuned: a fine-tuned model alone; rag+finetuned: a fine-tuned model + passages; "
        "compare: every mode that can run, side by side.",
    )
    support: SupportPolicy | None = Field(
        None,
        description="What a generated answer's unsupported sentences become (default: "
        "KB_SUPPORT_POLICY): flag marks them, drop removes them, fallback answers with the "
        "extractive answer instead. Streams under drop and fallback send the text once checked.",
    )
    model: str | None = Field(
        None,
        description="Generator name (GET /models). Default: KB_DEFAULT_GENERATOR for base/rag, "
        "the most recently registered fine-tuned model for the fine-tuned modes.",
    )
    k: int = Field(5, ge=1, le=50, description="Passages to retrieve for the grounded modes.")
    collection: str | None = COLLECTION_FIELD
    method: Method | None = Field(
        None, description="Retrieval method (default: KB_RETRIEVAL_METHOD)."
    )
    stream: bool = Field(False, description="Answer as server-sent events (text/event-stream).")
    max_new_tokens: int | None = Field(
        None, ge=1, le=4096, description="Most tokens to generate (default: the model's setting)."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    generate: bool = Field(
        True,
        description="false: retrieve and build the prompt, skip the model (empty answer, "
        "finish_reason 'skipped'); measures retrieval without generation.",
    )


class ModelOut(BaseModel):
    name: str = Field(description="The generator's name in the registry.")
    model_id: str = Field(description="The model (file, folder or remote id) it runs.")
    kind: Literal["base", "finetuned", "extract"]
    backend: str


class CitationOut(BaseModel):
    n: int = Field(description="The passage number as the prompt showed it: [n] in the answer.")
    chunk_id: int
    doc_id: str
    source: str
    start: int
    end: int
    page: int | None = None
    snippet: str = Field("", description="A quoted piece of the passage.")
    cited: bool = Field(False, description="Whether the answer cites [n].")


class SentenceOut(BaseModel):
    text: str
    start: int = Field(
        description="Character offset of the sentence in `support.checked` (the answer itself "
        "when the action is kept or flagged)."
    )
    end: int
    claim: bool = Field(description="False for sentences with no content to check.")
    score: float | None = Field(None, description="Support score, 0-1 (claims only).")
    passage: int | None = Field(None, description="The passage [n] the sentence rests on.")
    supported: bool | None = Field(None, description="None when the sentence is not a claim.")
    missing: list[str] = Field(
        default_factory=list,
        description="Numbers, identifiers, names or quoted strings the passage does not contain.",
    )


class SupportOut(BaseModel):
    policy: SupportPolicy
    scorer: str = Field(description="What scored support: embedder, cross-encoder:... or nli:...")
    threshold: float
    action: str = Field(
        description="kept (all claims supported), flagged, dropped (unsupported sentences "
        "removed), fallback (the extractive answer replaced it) or not_covered."
    )
    supported_share: float | None = Field(
        None, description="Supported claims / claims of the answer returned (None: no claims)."
    )
    generated_share: float | None = Field(
        None, description="Supported claims / claims of the model's own text."
    )
    sentences: list[SentenceOut] = Field(
        default_factory=list, description="Every sentence of the model's text, checked."
    )
    checked: str = Field(
        "",
        description="The model's text with its citations repaired: a supported claim cites the "
        "passage it rests on, an unsupported one cites nothing.",
    )
    removed_citations: list[int] = Field(
        default_factory=list,
        description="Citation numbers the model wrote for passages it was not given; removed.",
    )
    generated: str | None = Field(
        None, description="The model's own text, when the answer returned differs from it."
    )


class QuoteOut(BaseModel):
    text: str
    passage: int = Field(description="The passage [n] quoted.")
    chunk_id: int
    source: str
    start: int = Field(
        description="Character offset of the quote in the source document's text (as the "
        "passages' start and end)."
    )
    end: int
    page: int | None = None
    score: float


class UsageOut(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UnavailableOut(BaseModel):
    mode: str
    reason: str = Field(description="Why the mode cannot run, and how to make it available.")


class AnswerOut(BaseModel):
    question: str
    mode: str
    answer: str = Field(description="The answer text; empty for compare (see `answers`).")
    model: ModelOut | None = None
    collection: str | None = None
    grounded: bool = Field(
        False,
        description="Answered from passages (rag, extract, rag+finetuned); base and finetuned "
        "answers are ungrounded: nothing checks them.",
    )
    not_covered: bool = Field(
        False,
        description="The passages do not cover the question: the answer says so, no model ran "
        "(or the model said so).",
    )
    finish_reason: str | None = None
    citations: list[CitationOut] = Field(default_factory=list)
    passages: list[PassageOut] = Field(default_factory=list)
    support: SupportOut | None = Field(
        None, description="The support check of a generated grounded answer, per sentence."
    )
    quotes: list[QuoteOut] = Field(
        default_factory=list, description="extract (and fallback): the sentences quoted."
    )
    usage: UsageOut = Field(default_factory=UsageOut)
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds: retrieve, extract, prompt, generate, check, total; first_token "
        "when streamed.",
    )
    answers: list[AnswerOut] = Field(default_factory=list, description="compare: one per mode.")
    unavailable: list[UnavailableOut] = Field(
        default_factory=list, description="compare: the modes that could not run, and why."
    )


# -- collections, documents, ingest ------------------------------------------------------------


class CollectionOut(BaseModel):
    name: str
    embedder: str
    dimension: int
    generation: int
    documents: int
    chunks: int
    index: str | None = None
    created_at: float
    updated_at: float


class CollectionList(BaseModel):
    collections: list[CollectionOut]
    default: str = Field(description="the collection a request without `collection` uses")


class DocumentOut(BaseModel):
    id: str
    source: str
    origin: str | None = None
    title: str | None = None
    chars: int | None = None
    chunks: int
    created_at: float | None = None
    updated_at: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentList(BaseModel):
    collection: str
    documents: list[DocumentOut]


class DeleteResult(BaseModel):
    collection: str
    deleted: list[str] = Field(description="Ids of the documents deleted.")


class IngestRequest(Strict):
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="A folder (or file) on the server, inside one of KB_INGEST_ROOTS.",
    )
    prune: bool = Field(False, description="Remove documents whose files are gone from the folder.")


# -- jobs --------------------------------------------------------------------------------------


class JobEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    time: float
    level: str = "info"
    message: str


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    params: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(
        default_factory=dict,
        description="ingest: files_total, files_done, chunks_embedded, failed, skipped.",
    )
    events: list[JobEvent] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class JobList(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first; events are left out (GET /jobs/{id}).")


# -- models and health -------------------------------------------------------------------------


class GeneratorOut(BaseModel):
    name: str
    backend: str
    kind: Literal["base", "finetuned"]
    model: str
    adapter: str | None = None
    runtime: str = Field(
        "auto", description="local: auto, llamacpp or transformers (what runs the weights)."
    )
    base_url: str | None = None
    context_window: int
    max_new_tokens: int
    temperature: float
    loaded: bool = Field(description="Whether the model is in memory now.")
    default: bool = Field(description="Whether it is KB_DEFAULT_GENERATOR.")


class ModeOut(BaseModel):
    mode: str
    available: bool
    reason: str | None = None


class GeneratorList(BaseModel):
    models: list[GeneratorOut]
    default: str
    modes: list[ModeOut] = Field(description="Which answer modes can run now, and why not.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    default_generator: str
    generator_loaded: bool
    ready: bool = Field(
        description="The start-up warm-up has finished (or was turned off): the indexes, the "
        "query encoder and the default local model are loaded, so the first request is as "
        "fast as later ones."
    )
    loading: list[str] = Field(
        default_factory=list,
        description="What the warm-up is still loading, e.g. 'collection default'.",
    )


# -- OpenAI-compatible -------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "\n".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request; the last user message is the question, other turns are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="A model id from GET /v1/models, e.g. 'kb:default:rag'.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int | None = Field(None, ge=1, le=1, description="Only one choice is supported.")
    k: int | None = Field(None, ge=1, le=50, description="kb extension: passages to retrieve.")
    support: SupportPolicy | None = Field(
        None,
        description="kb extension: the support policy for grounded answers (flag, drop, "
        "fallback; default KB_SUPPORT_POLICY). The openai client sends it with extra_body.",
    )


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: str | None = "stop"


class KbAnswerInfo(BaseModel):
    mode: str
    collection: str | None = None
    model: ModelOut | None = None
    grounded: bool = False
    not_covered: bool = False
    support: SupportOut | None = None
    quotes: list[QuoteOut] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    citations: list[CitationOut] = Field(
        default_factory=list, description="kb extension: the numbered passages the answer cites."
    )
    kb: KbAnswerInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kb"


class ModelCardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
