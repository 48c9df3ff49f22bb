"""Build a tiny LoRA adapter for the tiny model: a PEFT-format folder that vLLM's multi-LoRA loads as is.

Tests need an adapter that really changes the model's output, and no hub is reachable. So we write what
PEFT's `save_pretrained` writes (adapter_config.json + adapter_model.safetensors) ourselves, with seeded
random A and B matrices (PEFT initialises B to zero, which would make the adapter a no-op). The `peft`
package is not needed. Same base, seed and rank -> byte-identical adapter.

Tensor names follow PEFT: `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` with shape
(rank, in_features) and `...lora_B.weight` with shape (out_features, rank); vLLM strips the
`base_model.model.` prefix and checks each module name against the base model's LoRA-capable modules.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUILD_VERSION = 1
MARKER = "tide_tiny_lora.json"
# Projections vLLM's Llama accepts LoRA on (q/k/v are packed into qkv_proj, gate/up into gate_up_proj).
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
SUPPORTED_MODULES = ATTENTION_MODULES + MLP_MODULES
DEFAULT_TARGETS = ("q_proj", "v_proj")
# vLLM's accepted `max_lora_rank` values: an adapter's rank must not exceed the engine's.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def module_shapes(base_config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-capable projection of a Llama-style config.json."""
    hidden = base_config["hidden_size"]
    heads = base_config["num_attention_heads"]
    kv_heads = base_config.get("num_key_value_heads") or heads
    head_dim = base_config.get("head_dim") or hidden // heads
    inter = base_config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _block(module: str) -> str:
    return "self_attn" if module in ATTENTION_MODULES else "mlp"


def tensor_name(layer: int, module: str, which: str) -> str:
    """PEFT's key for one LoRA matrix; `which` is "A" or "B"."""
    return f"base_model.model.model.layers.{layer}.{_block(module)}.{module}.lora_{which}.weight"


def adapter_config(base_dir: str | Path, rank: int, alpha: int, targets: tuple[str, ...]) -> dict:
    """What PEFT writes to adapter_config.json for a plain LoRA (only fields vLLM reads are essential)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_dir),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def _spec(base_config: dict, seed: int, rank: int, alpha: int, targets: tuple[str, ...], scale: float) -> dict:
    return {"version": BUILD_VERSION, "seed": seed, "rank": rank, "alpha": alpha, "targets": list(targets),
            "scale": scale, "base_hidden_size": base_config["hidden_size"],
            "base_num_layers": base_config["num_hidden_layers"]}


def is_built(path: str | Path, spec: dict | None = None) -> bool:
    """True when `path` holds an adapter built by this code (with `spec`, when given)."""
    marker = Path(path) / MARKER
    if not marker.is_file() or not (Path(path) / "adapter_model.safetensors").is_file():
        return False
    return spec is None or json.loads(marker.read_text()).get("spec") == spec


def build_tiny_lora(
    base_dir: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    rank: int = 8,
    alpha: int | None = None,
    targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
    scale: float = 0.5,
    force: bool = False,
) -> Path:
    """Write a LoRA adapter for the model in `base_dir` to `out_dir` (skipped when already built the same way).

    A and B are drawn from N(0, scale^2) with `seed`; `alpha` defaults to `rank` (scaling 1.0). `scale` is
    large on purpose: with the tiny model's 0.02-scale weights a smaller delta hardly moves greedy output.
    """
    import torch
    from safetensors.torch import save_file

    targets = tuple(targets)
    unknown = [t for t in targets if t not in SUPPORTED_MODULES]
    if unknown or not targets:
        raise ValueError(f"target modules {unknown or '[]'} not supported; choose from {list(SUPPORTED_MODULES)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    base = Path(base_dir).resolve()
    config_path = base / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found (build the base with `tide make-tiny-model {base}`)")
    base_config = json.loads(config_path.read_text())
    alpha = rank if alpha is None else alpha
    out = Path(out_dir).resolve()
    spec = _spec(base_config, seed, rank, alpha, targets, scale)
    if not force and is_built(out, spec):
        return out

    shapes = module_shapes(base_config)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base_config["num_hidden_layers"]):
        for module in targets:
            fan_in, fan_out = shapes[module]
            tensors[tensor_name(layer, module, "A")] = torch.randn(rank, fan_in, generator=gen) * scale
            tensors[tensor_name(layer, module, "B")] = torch.randn(fan_out, rank, generator=gen) * scale

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "adapter_model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(base, rank, alpha, targets), indent=2))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out / MARKER).write_text(json.dumps({"spec": spec, "weights_sha256": digest}, indent=2))
    return out


def engine_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that fits an adapter of `rank`."""
    for r in VLLM_MAX_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_MAX_LORA_RANKS[-1]}")
