"""Environment defaults for a replica's vLLM processes, decided from the model's config (pure).

On CPU with `enforce_eager`, TorchDynamo is turned off: the model already runs eagerly, but vLLM 0.32 still
wraps a few sampler helpers in `torch.compile` (`batched_count_greater_than`, behind every `logprobs`
request), and on a CPU node that first call sits in an Inductor C++ compile for a minute or more, holding the
engine's whole batch. Eager is what the user asked for, and those helpers are a few tensor ops.
A value set in the model's `env:` always wins (these are defaults only).
"""

from __future__ import annotations

from typing import Any, Mapping


def engine_env_defaults(engine_args: Mapping[str, Any], is_cpu: bool) -> dict[str, str]:
    if is_cpu and engine_args.get("enforce_eager") is True:
        return {"TORCHDYNAMO_DISABLE": "1"}
    return {}
