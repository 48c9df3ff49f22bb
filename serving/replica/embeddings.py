"""The replica that serves `POST /v1/embeddings` (Tide's check of the body: `serving.protocol.EmbeddingRequest`).

An embedding replica owns one vLLM engine started as a pooling model (`runner="pooling"`); vLLM's own
pooling layer on it answers `/v1/embeddings` (and `/score`, `/rerank`, ... where the model's task has them),
as `LLMServer.openai` does for generating models. The pooler (mean pooling + L2 normalisation for
all-MiniLM-L6-v2) comes from the model's sentence-transformers files.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import ModelConfig
from .embedding_model import resolve_model
from .base import ReplicaBase, start_engine

logger = logging.getLogger("tide.embeddings")


class EmbeddingServer(ReplicaBase):
    """One vLLM pooling engine: vLLM's own pooling and tokenization endpoints, no adapters."""

    def __init__(self, model_config: dict[str, Any]):
        cfg = ModelConfig.model_validate(model_config)
        start_engine(self, cfg, resolve_model(cfg.model), {"runner": "pooling"})
        mc = self.engine.model_config
        self.max_model_len: int = mc.max_model_len
        self.embedding_size: int = mc.embedding_size
        self.start_time_s = time.monotonic() - self.started_at
        logger.info("embedding engine for %s ready in %.1fs (max_model_len=%d, size=%d)", self.cfg.name,
                    self.start_time_s, self.max_model_len, self.embedding_size)

    async def info(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "model": self.cfg.model, "max_model_len": self.max_model_len,
                "engine_start_s": self.start_time_s, "task": "embed", "embedding_size": self.embedding_size}


__all__ = ["EmbeddingServer"]
