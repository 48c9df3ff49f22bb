"""`POST /v1/embeddings`: Tide's check of the OpenAI body, and the replica that serves it.

An embedding replica owns one vLLM engine started as a pooling model (`runner="pooling"`); vLLM's own
pooling layer on it answers `/v1/embeddings` (and `/score`, `/rerank`, ... where the model's task has them),
as `LLMServer.openai` does for generating models. The pooler (mean pooling + L2 normalisation for
all-MiniLM-L6-v2) comes from the model's sentence-transformers files.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import Field, field_validator

from .config import ModelConfig
from .embedding_model import resolve_model
from .engine import LLMServer, start_engine
from .protocol import OpenAIBase

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


# ---- the replica -------------------------------------------------------------------------------------------


class EmbeddingServer:
    """One vLLM pooling engine. Same constructor, health, load and autoscaling hooks as `LLMServer`."""

    def __init__(self, model_config: dict[str, Any]):
        cfg = ModelConfig.model_validate(model_config)
        start_engine(self, cfg, resolve_model(cfg.model), {"runner": "pooling"})
        mc = self.engine.model_config
        self.max_model_len: int = mc.max_model_len
        self.embedding_size: int = mc.embedding_size
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

    _push = LLMServer._push
    _start_http = LLMServer._start_http
    __del__ = LLMServer.__del__


__all__ = ["EmbeddingRequest", "EmbeddingServer", "MAX_INPUTS"]
