"""What the clients return: the platform's shared schemas plus a few small answer models.

Runs, run pages and run events are the store's public models (``core.store.models``), the
very classes the server answers with. Results are parsed into the component's own result
model when that package is importable (see ``clients._results``) and stay plain dicts
otherwise. The ``/v1`` answers keep every field the server sends (``extra="allow"``) and
name the few that callers reach for.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from core.store.models import RunEventPublic, RunPublic, RunsPublic, RunStatus, TestOutcome

__all__ = [
    "ChatCompletion",
    "Completion",
    "Health",
    "ModelCard",
    "RunEventPublic",
    "RunPublic",
    "RunResults",
    "RunStatus",
    "RunsPublic",
    "TestOutcome",
    "Usage",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class RunResults(BaseModel):
    """``GET /api/{c}/results/{id}``: the finished run and its result.

    ``result`` is the component's result model when importable, else the JSON dict; None for
    a run that failed or was cancelled before saving anything.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    run: RunPublic
    result: Any = None

    @property
    def succeeded(self) -> bool:
        return self.run.status == RunStatus.succeeded

    @property
    def outcome(self) -> TestOutcome | None:
        """A finished test run's ``passed`` / ``failed`` (None for other runs)."""
        return self.run.outcome

    @property
    def passed(self) -> bool:
        """The run succeeded and, if it carries a test outcome, that outcome is ``passed``."""
        return self.succeeded and self.outcome != "failed"

    def result_dict(self) -> dict[str, Any] | None:
        """The result as plain JSON data, whatever it was parsed into."""
        if isinstance(self.result, BaseModel):
            return self.result.model_dump(mode="json")
        return self.result if isinstance(self.result, dict) else None


class Health(_Open):
    status: str


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionChoice(_Open):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class Completion(_Open):
    """``POST /v1/completions`` (not streamed)."""

    id: str = ""
    model: str = ""
    choices: list[CompletionChoice] = []
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""


class ChatMessage(_Open):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(_Open):
    index: int = 0
    message: ChatMessage = ChatMessage()
    finish_reason: str | None = None


class ChatCompletion(_Open):
    """``POST /v1/chat/completions`` (not streamed)."""

    id: str = ""
    model: str = ""
    choices: list[ChatChoice] = []
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""


class ModelTemplate(_Open):
    """One entry of ``GET /api/generator/templates``: an architecture preset."""

    name: str
    description: str = ""
    config: dict[str, Any] = {}
    parameters: int = 0
    size_mb: float = 0.0
    state_mb_per_sequence: float = 0.0


class SuiteInfo(_Open):
    """One entry of ``GET /api/test/suites``: a test suite, its cases and options."""

    kind: str
    description: str = ""
    cases: list[str] = []
    options: list[dict[str, Any]] = []


class Tokenized(_Open):
    """``POST /tokenize``: a token is a byte, so ``tokens`` are the UTF-8 bytes."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class InteractiveEvent(_Open):
    """One event of ``WS /api/generator/stream``: ``token`` (``data``: prompt_index, choice,
    text, finish_reason on a choice's last) or the final ``result`` (``data``: the OpenAI
    response object)."""

    type: str
    id: Any = None
    data: dict[str, Any] = {}

    @property
    def text(self) -> str:
        return str(self.data.get("text", "")) if self.type == "token" else ""


class ModelCard(_Open):
    """One entry of ``GET /v1/models``."""

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None
    root: str | None = None
