"""Replica speed profiles: how fast one engine decodes and prefills at a given batch size.

Measured ones come from `benchmarks/profile_engine.py` on the real engine; GPU ones are derived from memory
bandwidth and model size (`derive_gpu_profile`), with the assumptions written into the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


class Profile(BaseModel):
    """One replica's speed, as tables over batch size (interpolated linearly, clamped at the ends)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Profile name (file stem).")
    description: str = Field("", description="What was measured or derived, on what.")
    assumptions: list[str] = Field(default_factory=list, description="Everything the numbers rest on.")
    batch: list[PositiveInt] = Field(description="Batch sizes (running requests), ascending.")
    tpot_s: list[PositiveFloat] = Field(description="Decode step time (time per output token) at each batch size.")
    ttft_s: list[PositiveFloat] = Field(description="Time to first token of a request joining a batch of this size "
                                                    "(no queueing), for `profile_prompt_tokens`.")
    profile_prompt_tokens: PositiveInt = Field(description="Prompt length the TTFT column was measured with.")
    prefill_tokens_per_s: PositiveFloat = Field(description="Prompt tokens per second in prefill.")
    max_num_seqs: PositiveInt = Field(description="Most requests in one batch (vLLM max_num_seqs).")
    max_num_batched_tokens: PositiveInt = Field(description="Token budget of one engine step (prefill + decode).")
    kv_cache_tokens: PositiveInt = Field(description="KV-cache capacity in tokens.")
    cold_start_s: PositiveFloat = Field(description="Seconds from replica start to serving, on a ready node.")
    gpus_per_replica: PositiveInt = Field(1, description="GPUs one replica holds: its tensor x pipeline parallel "
                                                         "workers, reserved and paid for together.")

    @model_validator(mode="after")
    def _tables(self) -> "Profile":
        if not (len(self.batch) == len(self.tpot_s) == len(self.ttft_s)) or not self.batch:
            raise ValueError("batch, tpot_s and ttft_s must be non-empty lists of the same length")
        if self.batch != sorted(set(self.batch)):
            raise ValueError(f"batch must be strictly ascending, got {self.batch}")
        return self

    def tpot(self, batch: np.ndarray | float) -> np.ndarray:
        return np.interp(batch, self.batch, self.tpot_s)

    def ttft(self, batch: np.ndarray | float, prompt_tokens: float) -> np.ndarray:
        """TTFT without queueing: the table's value plus prefill of the prompt beyond the profiled one."""
        extra = max(prompt_tokens - self.profile_prompt_tokens, 0.0) / self.prefill_tokens_per_s
        return np.interp(batch, self.batch, self.ttft_s) + extra

    def scaled(self, factor: float) -> "Profile":
        """The same profile `factor` times slower (e.g. calibrated to a full serving stack)."""
        return self.model_copy(update={
            "name": f"{self.name}x{factor:.2f}", "tpot_s": [t * factor for t in self.tpot_s],
            "ttft_s": [t * factor for t in self.ttft_s], "prefill_tokens_per_s": self.prefill_tokens_per_s / factor})


def load_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile name (`cpu-tiny`, `h100-llama3-8b`) or a JSON file; errors name the file."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = PROFILES_DIR / f"{name_or_path}.json"
    if not p.exists():
        known = ", ".join(sorted(x.stem for x in PROFILES_DIR.glob("*.json")))
        raise ValueError(f"profile {name_or_path!r} not found (built-in: {known})")
    try:
        return Profile(**{"name": p.stem, **json.loads(p.read_text())})
    except (json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"{p}: invalid profile: {e}") from None


def derive_gpu_profile(
    name: str, hbm_bytes_per_s: float, weight_bytes: float, kv_bytes_per_token: float, flops_per_s: float,
    params: float, memory_bytes: float, context_tokens: float = 1000, bw_efficiency: float = 0.7,
    mfu: float = 0.5, step_overhead_s: float = 0.004, max_num_seqs: int = 256, cold_start_s: float = 90.0,
    gpus: int = 1, comm_s_per_step: float = 0.0, comm_note: str = "",
) -> dict:
    """A decode-memory-bound / prefill-compute-bound profile, with every assumption in the result.

    `hbm_bytes_per_s`, `flops_per_s` and `memory_bytes` are one GPU's; with `gpus` > 1 (tensor parallel) the
    weights and KV cache are split over the group, which reads and computes in parallel, and every step pays
    `comm_s_per_step` of all-reduces on top."""
    batch = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    bw = hbm_bytes_per_s * bw_efficiency * gpus
    tpot = [step_overhead_s + comm_s_per_step + (weight_bytes + b * context_tokens * kv_bytes_per_token) / bw
            for b in batch]
    prefill_tps = flops_per_s * gpus * mfu / (2 * params)
    prompt = 512
    kv_tokens = int((memory_bytes * gpus * 0.9 - weight_bytes) / kv_bytes_per_token)
    group = f"{gpus} GPUs, tensor parallel: " if gpus > 1 else ""
    extra = ([f"tensor parallel over {gpus} GPUs: weights, KV cache, bandwidth and compute split evenly; "
              f"+{comm_s_per_step * 1000:.1f} ms of all-reduce per step ({comm_note})",
              f"a replica is the whole group: it starts, stops and is paid for as {gpus} GPUs"] if gpus > 1 else [])
    out = {
        "name": name,
        "description": f"Derived, not measured: {group}decode bound by HBM bandwidth ({hbm_bytes_per_s / 1e12:.2f} "
                       f"TB/s per GPU), prefill by compute ({flops_per_s / 1e12:.0f} TFLOP/s per GPU)."
                       if gpus > 1 else
                       f"Derived, not measured: decode bound by HBM bandwidth ({hbm_bytes_per_s / 1e12:.2f} TB/s), "
                       f"prefill by compute ({flops_per_s / 1e12:.0f} TFLOP/s).",
        "assumptions": [
            f"decode step = {step_overhead_s * 1000:.0f} ms overhead + (weights {weight_bytes / 1e9:.1f} GB + batch x "
            f"{context_tokens:.0f} context tokens x {kv_bytes_per_token / 1024:.0f} KiB KV) / "
            f"({bw_efficiency:.0%} of HBM bandwidth)",
            f"prefill = 2 x {params / 1e9:.1f}e9 FLOP/token at {mfu:.0%} MFU -> {prefill_tps:.0f} tokens/s",
            f"KV cache = 90% of {memory_bytes * gpus / 1e9:.0f} GB minus weights -> {kv_tokens} tokens",
            f"cold start {cold_start_s:.0f} s (container + weights from local disk), node provisioning separate",
            *extra,
        ],
        "batch": batch, "tpot_s": tpot,
        "ttft_s": [t + prompt / prefill_tps for t in tpot], "profile_prompt_tokens": prompt,
        "prefill_tokens_per_s": prefill_tps, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": 8192,
        "kv_cache_tokens": kv_tokens, "cold_start_s": cold_start_s,
    }
    if gpus > 1:
        out["gpus_per_replica"] = gpus
    return out


def h100_llama3_8b() -> dict:
    """Llama-3-8B bf16 on one H100 SXM (80 GB, 3.35 TB/s, 989 TFLOP/s dense bf16)."""
    kv = 32 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x bf16 bytes = 128 KiB per token
    return derive_gpu_profile("h100-llama3-8b", 3.35e12, 16.06e9, kv, 989e12, 8.03e9, 80e9)


def h100_llama3_70b_tp4() -> dict:
    """Llama-3-70B bf16 on four H100 SXM with tensor parallelism (the 8B row's numbers per GPU)."""
    kv = 80 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x bf16 bytes = 320 KiB per token
    # 2 all-reduces per layer (attention, MLP) x 80 layers, about 15 us each over NVLink at decode sizes
    return derive_gpu_profile("h100-llama3-70b-tp4", 3.35e12, 141.1e9, kv, 989e12, 70.6e9, 80e9,
                              cold_start_s=180.0, gpus=4, comm_s_per_step=160 * 15e-6,
                              comm_note="2 per layer x 80 layers at ~15 us each over NVLink")
