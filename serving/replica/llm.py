"""The generating model replica.

`LLMServer` owns one vLLM AsyncLLM engine (serving/replica/base.py: start, health, stats, HTTP, stop) with
its LoRA adapters. Requests are served by vLLM's own OpenAI layer on that engine (`openai`,
serving/replica/openai_app.py): the chat template, tokenization, context checks, sampling and the OpenAI
bytes are vLLM's. A caller that goes away cancels the call, which vLLM sees as a client disconnect and aborts
in the engine. `model_deployment` turns a model's config into its Serve deployment.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import ModelConfig
from ..lora import engine_lora_args
from .base import ReplicaBase, start_engine

logger = logging.getLogger("tide.engine")


class LLMServer(ReplicaBase):
    """One vLLM engine for chat and completions, with the model's LoRA adapters loaded before any request."""

    def __init__(self, model_config: dict[str, Any]):
        from vllm.platforms import current_platform

        cfg = ModelConfig.model_validate(model_config)
        start_engine(self, cfg, cfg.model, engine_lora_args(cfg.lora, current_platform.is_cpu()))
        self.adapters = {cfg.name: sorted(cfg.lora.adapters) if cfg.lora else []}
        self.max_model_len: int = self.engine.model_config.max_model_len
        self.start_time_s = time.monotonic() - self.started_at
        logger.info("engine for %s ready in %.1fs (max_model_len=%d)", self.cfg.name, self.start_time_s,
                    self.max_model_len)

    async def info(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "model": self.cfg.model, "max_model_len": self.max_model_len,
                "engine_start_s": self.start_time_s}


__all__ = ["LLMServer"]
