"""`POST /v1/embeddings`: the OpenAI wire format, its model-side checks, and the replica that serves it.

An embedding replica owns one vLLM engine started as a pooling model (`runner="pooling"`): each input
becomes one engine request (`AsyncLLM.encode`), all inputs of a request run concurrently and vLLM batches
them. The pooler (mean pooling + L2 normalisation for all-MiniLM-L6-v2) comes from the model's
sentence-transformers files. Like `LLMServer`, the replica tokenizes, checks and renders the OpenAI bytes
itself; the ingress only forwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field, field_validator

from .config import ModelConfig
from .embedding_model import resolve_model
from .engine import LLMServer, start_engine
from .errors import bad_request, engine_dead
from .protocol import OpenAIBase, new_id
from .validation import Tokenizer

logger = logging.getLogger("tide.embeddings")

MAX_INPUTS = 2048  # OpenAI's cap on inputs per embeddings request


# ---- protocol ----------------------------------------------------------------------------------------------


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


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str when encoding_format is base64 (little-endian float32)


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# ---- model-side checks (pure: tokenizer and sizes in, ids or a 400 out) ------------------------------------


def embedding_prompt_ids(req: EmbeddingRequest, tokenizer: Tokenizer, vocab_size: int,
                         max_model_len: int) -> list[list[int]]:
    """Each input as token ids (text gets the model's special tokens, e.g. [CLS] ... [SEP]). An input longer
    than the model's context is a 400 naming it: embeddings are not silently truncated."""
    out: list[list[int]] = []
    many = len(req.inputs()) > 1
    for i, x in enumerate(req.inputs()):
        where = f"input[{i}]" if many else "input"
        if isinstance(x, str):
            ids = list(tokenizer.encode(x, add_special_tokens=True))
        else:
            bad = next((t for t in x if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise bad_request(f"Token id {bad} in {where} is out of vocabulary (size {vocab_size}).", "input")
            ids = list(x)
        if not ids:
            raise bad_request(f"{where} is empty after tokenization.", "input")
        if len(ids) > max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, {where} resulted in "
                f"{len(ids)} tokens. Please reduce the length of the input.",
                "input", "context_length_exceeded")
        out.append(ids)
    return out


def resolve_dimensions(requested: int | None, size: int, matryoshka: bool,
                       allowed: Sequence[int] | None = None) -> int | None:
    """`dimensions` for vLLM's PoolingParams: None keeps the native size. A model without Matryoshka
    training accepts only its own size (a no-op); OpenAI answers the same way for models without it."""
    if requested is None or requested == size:
        return None
    if not matryoshka:
        raise bad_request(f"This model does not support specifying dimensions (its embeddings have {size}).",
                          "dimensions")
    if requested > size:
        raise bad_request(f"dimensions must be at most {size} for this model, got {requested}.", "dimensions")
    if allowed and requested not in allowed:
        raise bad_request(f"dimensions must be one of {sorted(allowed)} for this model, got {requested}.",
                          "dimensions")
    return requested


def render_embeddings(vectors: Sequence[Any], encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """The OpenAI response body. `vectors` are 1-D float arrays (numpy or torch); base64 is the raw
    little-endian float32 bytes, which is what the OpenAI SDKs decode."""
    data = []
    for i, v in enumerate(vectors):
        arr = np.asarray(v, dtype="<f4")
        emb: Any = (base64.b64encode(arr.tobytes()).decode("ascii") if encoding_format == "base64"
                    else arr.tolist())
        data.append({"object": "embedding", "index": i, "embedding": emb})
    body = {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    return json.dumps(body, separators=(",", ":")).encode()


# ---- the replica -------------------------------------------------------------------------------------------


class EmbeddingServer:
    """One vLLM pooling engine. Same constructor, health, load and autoscaling hooks as `LLMServer`."""

    def __init__(self, model_config: dict[str, Any]):
        cfg = ModelConfig.model_validate(model_config)
        start_engine(self, cfg, resolve_model(cfg.model), {"runner": "pooling"})
        mc = self.engine.model_config
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len: int = mc.max_model_len
        self.vocab_size: int = mc.get_vocab_size()
        self.embedding_size: int = mc.embedding_size
        self.matryoshka: bool = bool(mc.is_matryoshka)
        self.matryoshka_dims: list[int] | None = mc.matryoshka_dimensions
        self.start_time_s = time.monotonic() - self.started_at
        logger.info("embedding engine for %s ready in %.1fs (max_model_len=%d, size=%d)", self.cfg.name,
                    self.start_time_s, self.max_model_len, self.embedding_size)

    # ---- control: the same as a generating replica's (they read only cfg, engine and stats) ----
    _ensure_pusher = LLMServer._ensure_pusher
    _push_stats = LLMServer._push_stats
    check_health = LLMServer.check_health
    _openai_app = LLMServer._openai_app  # vLLM's own pooling and tokenization endpoints
    openai = LLMServer.openai
    _replica_name = LLMServer._replica_name
    _load_adapters = LLMServer._load_adapters  # (a no-op here: embedding models have no adapters)
    record_autoscaling_stats = LLMServer.record_autoscaling_stats
    load = LLMServer.load

    async def info(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "model": self.cfg.model, "max_model_len": self.max_model_len,
                "engine_start_s": self.start_time_s, "task": "embed", "embedding_size": self.embedding_size}

    # ---- requests ----
    async def _encode_one(self, ids: list[int], dimensions: int | None, request_id: str) -> Any:
        from vllm import PoolingParams

        final = None
        params = PoolingParams(task="embed", dimensions=dimensions)
        async for out in self.engine.encode({"prompt_token_ids": ids}, params, request_id):
            final = out
        return final

    async def embed(self, req: EmbeddingRequest) -> bytes:
        """All inputs run concurrently; a cancelled call (client gone) cancels every one, and vLLM's
        `encode()` aborts each in the engine on that cancellation."""
        self._ensure_pusher()
        prompts = embedding_prompt_ids(req, self.tokenizer, self.vocab_size, self.max_model_len)
        dims = resolve_dimensions(req.dimensions, self.embedding_size, self.matryoshka, self.matryoshka_dims)
        if self.engine.errored:
            raise engine_dead()
        request_id = new_id("embd")
        tasks = [asyncio.ensure_future(self._encode_one(ids, dims, f"{request_id}-{i}"))
                 for i, ids in enumerate(prompts)]
        try:
            outs = await asyncio.gather(*tasks)
        except BaseException as e:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(e, asyncio.CancelledError):
                self.stats.counters.on_abort()
            raise
        vectors = [o.outputs.data for o in outs]
        return render_embeddings(vectors, req.encoding_format, self.cfg.name, sum(len(p) for p in prompts))

    # ---- generation routes reach an embedding model only by mistake: a 400 that says so ----
    def _not_generative(self) -> Exception:
        return bad_request(f"Model `{self.cfg.name}` is an embedding model; it serves /v1/embeddings only.",
                           "model", "model_not_supported")

    async def chat(self, req: Any) -> bytes:
        raise self._not_generative()

    completion = chat

    async def chat_stream(self, req: Any):
        raise self._not_generative()
        yield  # an async generator, like LLMServer's streaming methods

    completion_stream = chat_stream

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


__all__ = ["EmbeddingRequest", "EmbeddingResponse", "EmbeddingServer", "MAX_INPUTS", "embedding_prompt_ids",
           "render_embeddings", "resolve_dimensions"]
