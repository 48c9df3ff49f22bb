"""The OpenAI wire format, as pydantic models (fields in the order of the OpenAI API reference).

Tide's own checks of a request, stricter than vLLM's (unknown fields and roles refused, a 400 naming the
field), and what its rate limits read of it; vLLM's layer in the replica answers every request
(serving/front/passthrough.py). Also the `/v1/models` cards and the OpenAI error object.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 16  # more choices per request than this is almost always a client bug; OpenAI caps n at 128


class OpenAIBase(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


# ---- requests ----------------------------------------------------------------------------------------------


class ContentPart(OpenAIBase):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBase):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(OpenAIBase):
    include_usage: bool = False


# ---- tools and structured outputs (OpenAI's shapes; vLLM's layer runs them) ----

_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


def _json_schema(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """A 400 naming the field for a schema no JSON Schema validator (nor vLLM's grammar compiler) can take."""
    if v is not None:
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(v)
        except SchemaError as e:
            raise ValueError(f"not a valid JSON Schema: {e.message}") from None
    return v


class FunctionDefinition(OpenAIBase):
    name: str = Field(pattern=_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _schema = field_validator("parameters")(classmethod(lambda cls, v: _json_schema(v)))


class Tool(OpenAIBase):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(OpenAIBase):
    name: str


class NamedToolChoice(OpenAIBase):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(OpenAIBase):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False, populate_by_name=True)
    name: str = Field(pattern=_NAME)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    _schema = field_validator("json_schema")(classmethod(lambda cls, v: _json_schema(v)))


class ResponseFormat(OpenAIBase):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


class _SamplingRequest(OpenAIBase):
    """Fields shared by chat and text completions."""

    model: str
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    # ---- extensions (vLLM-compatible) ----
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _stream_opts(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _tools(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names `{self.tool_choice.function.name}`, which is not in tools")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice `required` needs at least one tool")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them (developer is OpenAI's newer name for system)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages
        ]


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    suffix: str | None = None
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and len(v) == 0:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and isinstance(v[0], list) and any(len(p) == 0 for p in v):
            raise ValueError("token prompts must not be empty")
        return v

    @model_validator(mode="after")
    def _unsupported(self):
        if self.suffix is not None:
            raise ValueError("suffix is not supported by this model")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts (text or token ids)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]  # one prompt given as token ids
        return list(p)


# ---- responses ---------------------------------------------------------------------------------------------


# ---- embeddings --------------------------------------------------------------------------------------------


MAX_INPUTS = 2048  # OpenAI's cap on inputs per embeddings request


class EmbeddingRequest(OpenAIBase):
    """Fields in the order of the OpenAI API reference; unknown fields are rejected like everywhere else."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, v):
        """One clear message for a wrong shape instead of pydantic's error from the first union branch."""
        def ints(x):
            return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(v, str) or (isinstance(v, list) and (
                all(isinstance(x, str) for x in v) or ints(v) or all(ints(x) for x in v))):
            return v
        raise ValueError("input must be a string, a list of strings, a list of token ids, or a list of lists "
                         "of token ids")

    @field_validator("input")
    @classmethod
    def _input(cls, v):
        if isinstance(v, str):
            if not v:
                raise ValueError("input must not be an empty string")
            return v
        if len(v) == 0:
            raise ValueError("input must not be empty")
        if isinstance(v[0], (list, str)):
            if len(v) > MAX_INPUTS:
                raise ValueError(f"at most {MAX_INPUTS} inputs are allowed per request, got {len(v)}")
            if any(len(x) == 0 for x in v):
                raise ValueError("inputs must not be empty (strings or token lists)")
        return v

    @property
    def stream(self) -> bool:  # the ingress asks every request; embeddings never stream
        return False

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of single inputs (text or token ids)."""
        v = self.input
        if isinstance(v, str):
            return [v]
        if isinstance(v[0], int):
            return [list(v)]  # one input given as token ids
        return list(v)


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "tide"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model (as vLLM lists adapters)
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
