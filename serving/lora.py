"""LoRA adapters: a model may list adapters; a request naming `base:adapter` runs on the base's replicas with it.

Pure decisions, no Ray and no vLLM at import time:
- `LoRAOptions`: the `lora:` block of a model's config (adapter name -> folder, and the engine's LoRA sizes);
- `resolve_model`: `"tiny:sql"` -> `ModelTarget(base="tiny", adapter="sql")`, or a 404 `model_not_found`;
- `adapter_id`: a stable integer per adapter (vLLM's `lora_int_id`), the same on every replica;
- `engine_lora_args`: what to add to AsyncEngineArgs when a model has adapters;
- `lora_request`: vLLM's `LoRARequest` for one adapter (vLLM imported lazily, inside the replica).
`adapter_problems` is the only function that reads files (the adapters' adapter_config.json) for config checks.

Adapter names may not contain `:` or `/`, so the split at the last `:` is unambiguous even though model names
may contain `:`; a model named like another model's `base:adapter` is a config error (`name_collisions`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from .errors import model_not_found

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest

SEPARATOR = ":"
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# vLLM's accepted `max_lora_rank` values (vllm.config.lora.MaxLoRARanks).
MaxLoRARank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
DEFAULT_MAX_LORAS = 4


class LoRAOptions(BaseModel):
    """A model's LoRA adapters and how much room its engine keeps for them."""

    model_config = ConfigDict(extra="forbid")

    adapters: dict[str, str] = Field(
        min_length=1,
        description="Adapter name -> local PEFT adapter folder (adapter_config.json + adapter_model.safetensors); "
        "relative paths resolve against the config file. Clients ask for `<model>:<adapter>`.",
    )
    max_lora_rank: MaxLoRARank = Field(
        16, description="Largest adapter rank the engine accepts (vLLM's max_lora_rank); one of vLLM's values."
    )
    max_loras: PositiveInt | None = Field(
        None, description="Adapters that can run in one engine batch (vLLM's max_loras, GPU/CPU slots per layer); "
        f"default: the number of adapters, at most {DEFAULT_MAX_LORAS}.",
    )
    max_cpu_loras: PositiveInt | None = Field(
        None, description="Adapters kept loaded in host memory (vLLM's max_cpu_loras); default: all of them.",
    )

    @field_validator("adapters")
    @classmethod
    def _names(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name, path in adapters.items():
            if not _ADAPTER_NAME.match(name):
                raise ValueError(f"adapter name {name!r} must be 1-64 of letters, digits and . _ - "
                                 "(no `:` or `/`, not starting with a punctuation mark)")
            if not path:
                raise ValueError(f"adapter {name!r} has an empty path")
        return adapters

    @model_validator(mode="after")
    def _sizes(self) -> "LoRAOptions":
        if self.max_loras is not None and self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        return self

    def resolve_paths(self, base_dir: Path) -> None:
        """Make relative local adapter paths absolute against the config file's folder (like `model`)."""
        self.adapters = {n: resolve_path(p, base_dir) for n, p in self.adapters.items()}


def resolve_path(path: str, base_dir: Path) -> str:
    """`./x`, `../x`, `/x`, `~/x`, or a folder that exists beside the config: a local path made absolute.
    Anything else (`org/name`) is a hub id left for vLLM (Tide runs offline, so it must be in the HF cache)."""
    local = base_dir / Path(path).expanduser()
    if path.startswith((".", "/", "~")) or local.exists():
        return str(local.resolve())
    return path


class ModelTarget(NamedTuple):
    """Where a request's `model` goes: the base model's deployment, and the adapter to apply (or None)."""

    base: str
    adapter: str | None


def public_name(base: str, adapter: str | None) -> str:
    return base if adapter is None else f"{base}{SEPARATOR}{adapter}"


def resolve_model(name: str, adapters: Mapping[str, Collection[str]]) -> ModelTarget:
    """Map a request's `model` to (base, adapter); `adapters` maps every served model to its adapter names.

    An exact model name wins; else `base:adapter` at the last `:`; anything else raises a 404 naming `name`.
    """
    if name in adapters:
        return ModelTarget(name, None)
    base, sep, adapter = name.rpartition(SEPARATOR)
    if sep and adapter in adapters.get(base, ()):
        return ModelTarget(base, adapter)
    raise model_not_found(name)


def name_collisions(adapters: Mapping[str, Collection[str]]) -> list[str]:
    """Public `base:adapter` names that equal another model's name (a config error: requests would be ambiguous)."""
    return sorted(public_name(b, a) for b, names in adapters.items() for a in names if public_name(b, a) in adapters)


def adapter_id(adapters: Collection[str], name: str) -> int:
    """vLLM's `lora_int_id` for `name`: its 1-based place in the sorted names, so every replica agrees."""
    ordered = sorted(adapters)
    if name not in ordered:
        raise KeyError(f"unknown adapter {name!r}; known: {ordered}")
    return ordered.index(name) + 1


def engine_lora_args(opts: LoRAOptions | None, cpu: bool = False) -> dict[str, Any]:
    """AsyncEngineArgs keywords for a model's adapters (empty without adapters). A model's own `engine_args`
    should be merged over these, so an explicit setting there wins.

    `cpu`: the engine runs on vLLM's CPU platform; its worker then gets Tide's fix for base-model requests
    batched with adapter requests (serving/patches/cpu_worker.py)."""
    if opts is None or not opts.adapters:
        return {}
    n = len(opts.adapters)
    max_loras = opts.max_loras or min(n, DEFAULT_MAX_LORAS)
    args: dict[str, Any] = {
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": opts.max_lora_rank,
        "max_cpu_loras": max(opts.max_cpu_loras or n, max_loras),
    }
    if cpu:
        from .patches.cpu_worker import WORKER_CLS

        args["worker_cls"] = WORKER_CLS
    return args


def lora_request(opts: LoRAOptions | None, adapter: str | None, base_model_name: str | None = None
                 ) -> "LoRARequest | None":
    """vLLM's LoRARequest for `adapter` of this model (None for the plain base model)."""
    if adapter is None:
        return None
    if opts is None or adapter not in opts.adapters:
        raise KeyError(f"unknown adapter {adapter!r}")
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=adapter, lora_int_id=adapter_id(opts.adapters, adapter),
                       lora_path=opts.adapters[adapter], base_model_name=base_model_name)


def adapter_cards(base: str, opts: LoRAOptions | None) -> list[dict[str, Any]]:
    """/v1/models entries for a model's adapters, shaped like vLLM's: id `base:adapter`, `root` the adapter's
    folder, `parent` the base model's public name."""
    if opts is None:
        return []
    return [{"id": public_name(base, a), "root": opts.adapters[a], "parent": base} for a in sorted(opts.adapters)]


def adapter_problems(opts: LoRAOptions) -> list[str]:
    """What would make the engine refuse an adapter, found by reading its folder (for `tide validate` and config
    loading): missing files, unreadable config, rank above max_lora_rank, DoRA or bias (vLLM does not serve them)."""
    problems = []
    for name in sorted(opts.adapters):
        path = opts.adapters[name]
        folder = Path(path)
        if not folder.is_absolute():
            continue  # a hub id: only the engine can check it
        cfg_file = folder / "adapter_config.json"
        if not cfg_file.is_file():
            problems.append(f"adapter {name}: {cfg_file} not found")
            continue
        if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            problems.append(f"adapter {name}: no adapter_model.safetensors in {folder}")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"adapter {name}: cannot read {cfg_file} ({e})")
            continue
        rank = max([int(cfg.get("r", 0)), *map(int, (cfg.get("rank_pattern") or {}).values())])
        if rank > opts.max_lora_rank:
            problems.append(f"adapter {name}: rank {rank} is greater than max_lora_rank {opts.max_lora_rank}")
        if cfg.get("use_dora"):
            problems.append(f"adapter {name}: DoRA adapters are not supported by vLLM")
        if cfg.get("bias", "none") != "none":
            problems.append(f"adapter {name}: adapter bias ({cfg['bias']}) is not supported by vLLM")
    return problems
