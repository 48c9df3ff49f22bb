"""LoRA adapters: name resolution, ids, engine args, the adapter builder, and the CPU no-LoRA fix (no engine)."""

import json

import pytest
from pydantic import ValidationError

from serving.errors import TideError
from serving.lora import (
    LoRAOptions,
    ModelTarget,
    adapter_cards,
    adapter_id,
    adapter_problems,
    engine_lora_args,
    lora_request,
    name_collisions,
    resolve_model,
)
from serving.tools.tiny_lora import MARKER, build_tiny_lora, engine_rank, module_shapes, tensor_name

SERVED = {"tiny": ["sql", "chat-v2"], "big:latest": [], "plain": []}

LLAMA = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
         "intermediate_size": 256, "num_hidden_layers": 2}


# ---- resolving `base:adapter` ----

@pytest.mark.parametrize("name, target", [
    ("tiny", ModelTarget("tiny", None)),
    ("tiny:sql", ModelTarget("tiny", "sql")),
    ("tiny:chat-v2", ModelTarget("tiny", "chat-v2")),
    ("big:latest", ModelTarget("big:latest", None)),  # model names may contain `:`; an exact name wins
])
def test_resolve(name, target):
    assert resolve_model(name, SERVED) == target


@pytest.mark.parametrize("name", ["nope", "tiny:", "tiny:nope", ":sql", "plain:sql", "tiny:sql:x", "big:sql",
                                  "TINY:sql", "tiny:SQL", ""])
def test_unknown_is_404_naming_the_request(name):
    with pytest.raises(TideError) as e:
        resolve_model(name, SERVED)
    err = e.value
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
    assert f"`{name}`" in err.message


def test_collisions():
    assert name_collisions(SERVED) == []
    assert name_collisions({"tiny": ["sql"], "tiny:sql": []}) == ["tiny:sql"]


# ---- config block ----

def test_options_validate_names_and_sizes():
    LoRAOptions(adapters={"a.b_c-1": "/x"})
    for bad in ("a:b", "a/b", "-a", "", "x" * 65):
        with pytest.raises(ValidationError, match="adapter name"):
            LoRAOptions(adapters={bad: "/x"})
    with pytest.raises(ValidationError, match="empty path"):
        LoRAOptions(adapters={"a": ""})
    with pytest.raises(ValidationError):
        LoRAOptions(adapters={})
    with pytest.raises(ValidationError):
        LoRAOptions(adapters={"a": "/x"}, max_lora_rank=12)  # not one of vLLM's ranks
    with pytest.raises(ValidationError, match=r"max_cpu_loras \(1\) must be >= max_loras \(2\)"):
        LoRAOptions(adapters={"a": "/x"}, max_loras=2, max_cpu_loras=1)
    with pytest.raises(ValidationError, match="extra"):
        LoRAOptions(adapters={"a": "/x"}, rank=8)


def test_relative_paths_resolve_against_the_config(tmp_path):
    (tmp_path / "adapters" / "b").mkdir(parents=True)
    opts = LoRAOptions(adapters={"a": "./adapters/a", "b": "adapters/b", "c": "/abs/c", "hub": "org/name"})
    opts.resolve_paths(tmp_path)
    assert opts.adapters == {"a": str(tmp_path / "adapters" / "a"), "b": str(tmp_path / "adapters" / "b"),
                             "c": "/abs/c", "hub": "org/name"}


# ---- ids, engine args, requests, cards ----

def test_ids_are_stable_sorted_and_from_one():
    assert [adapter_id(["zeta", "alpha", "mid"], n) for n in ("alpha", "mid", "zeta")] == [1, 2, 3]
    assert adapter_id({"b": "/1", "a": "/2"}, "b") == adapter_id(["a", "b"], "b") == 2
    with pytest.raises(KeyError, match="unknown adapter 'c'"):
        adapter_id(["a", "b"], "c")


def test_engine_args():
    assert engine_lora_args(None) == {}
    two = LoRAOptions(adapters={"a": "/a", "b": "/b"}, max_lora_rank=8)
    assert engine_lora_args(two) == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 8, "max_cpu_loras": 2}
    many = LoRAOptions(adapters={f"a{i}": f"/a{i}" for i in range(6)})
    assert engine_lora_args(many) == {"enable_lora": True, "max_loras": 4, "max_lora_rank": 16,
                                      "max_cpu_loras": 6}
    sized = LoRAOptions(adapters={"a": "/a"}, max_loras=3)
    assert engine_lora_args(sized)["max_cpu_loras"] == 3  # vLLM requires max_cpu_loras >= max_loras
    assert engine_lora_args(two, cpu=True)["worker_cls"] == "serving.patches.cpu_worker.TideCPUWorker"
    assert "worker_cls" not in engine_lora_args(two, cpu=False)


def test_lora_request():
    pytest.importorskip("vllm")
    opts = LoRAOptions(adapters={"b": "/ad/b", "a": "/ad/a"})
    assert lora_request(opts, None) is None
    req = lora_request(opts, "b", base_model_name="tiny")
    assert (req.lora_name, req.lora_int_id, req.lora_path, req.base_model_name) == ("b", 2, "/ad/b", "tiny")
    with pytest.raises(KeyError):
        lora_request(opts, "c")
    with pytest.raises(KeyError):
        lora_request(None, "a")


def test_adapter_cards():
    opts = LoRAOptions(adapters={"sql": "/ad/sql", "chat": "/ad/chat"})
    assert adapter_cards("tiny", opts) == [
        {"id": "tiny:chat", "root": "/ad/chat", "parent": "tiny"},
        {"id": "tiny:sql", "root": "/ad/sql", "parent": "tiny"},
    ]
    assert adapter_cards("tiny", None) == []


# ---- the adapter builder ----

@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    (d / "config.json").write_text(json.dumps(LLAMA))
    return d


def test_module_shapes():
    s = module_shapes(LLAMA)
    assert s["q_proj"] == (128, 128) and s["k_proj"] == (128, 64) and s["v_proj"] == (128, 64)
    assert s["o_proj"] == (128, 128) and s["gate_proj"] == (128, 256) and s["down_proj"] == (256, 128)


def test_build_files_names_and_shapes(base_dir, tmp_path):
    from safetensors.torch import load_file

    out = build_tiny_lora(base_dir, tmp_path / "a", seed=1, rank=8)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg["bias"]) == (
        "LORA", 8, 8, ["q_proj", "v_proj"], "none")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 2 * 2  # layers x modules x (A, B)
    assert tensor_name(0, "q_proj", "A") == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert tensors[tensor_name(1, "q_proj", "A")].shape == (8, 128)
    assert tensors[tensor_name(1, "q_proj", "B")].shape == (128, 8)
    assert tensors[tensor_name(0, "v_proj", "B")].shape == (64, 8)
    assert all(t.abs().sum() > 0 for t in tensors.values())  # B non-zero: the adapter changes the output
    assert adapter_problems(LoRAOptions(adapters={"a": str(out)}, max_lora_rank=8)) == []


def test_mlp_targets_and_seeds(base_dir, tmp_path):
    a = build_tiny_lora(base_dir, tmp_path / "a", seed=1, rank=4, targets=["down_proj", "gate_proj"])
    a2 = build_tiny_lora(base_dir, tmp_path / "a2", seed=1, rank=4, targets=["down_proj", "gate_proj"])
    b = build_tiny_lora(base_dir, tmp_path / "b", seed=2, rank=4, targets=["down_proj", "gate_proj"])
    read = lambda p: (p / "adapter_model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(a2) and read(a) != read(b)
    from safetensors.torch import load_file

    t = load_file(str(a / "adapter_model.safetensors"))
    assert t["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, 256)
    assert t["base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"].shape == (256, 4)


def test_build_is_cached_and_rejects_bad_input(base_dir, tmp_path):
    out = build_tiny_lora(base_dir, tmp_path / "a", seed=1)
    marker = json.loads((out / MARKER).read_text())
    mtime = (out / "adapter_model.safetensors").stat().st_mtime_ns
    build_tiny_lora(base_dir, tmp_path / "a", seed=1)
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    build_tiny_lora(base_dir, tmp_path / "a", seed=2)  # another spec: rebuilt
    assert json.loads((out / MARKER).read_text())["weights_sha256"] != marker["weights_sha256"]
    with pytest.raises(ValueError, match="lm_head"):
        build_tiny_lora(base_dir, tmp_path / "x", targets=["lm_head"])
    with pytest.raises(ValueError, match="rank"):
        build_tiny_lora(base_dir, tmp_path / "x", rank=0)
    with pytest.raises(FileNotFoundError, match="make-tiny-model"):
        build_tiny_lora(tmp_path / "no-base", tmp_path / "x")


def test_engine_rank():
    assert [engine_rank(r) for r in (1, 2, 8, 9, 512)] == [1, 8, 8, 16, 512]
    with pytest.raises(ValueError):
        engine_rank(513)


def test_adapter_problems(base_dir, tmp_path):
    big = build_tiny_lora(base_dir, tmp_path / "big", rank=32)
    dora = build_tiny_lora(base_dir, tmp_path / "dora", rank=8)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True, "bias": "all"}))
    opts = LoRAOptions(adapters={"big": str(big), "dora": str(dora), "gone": str(tmp_path / "gone"),
                                 "hub": "org/name"}, max_lora_rank=16)
    problems = adapter_problems(opts)
    assert problems[0] == "adapter big: rank 32 is greater than max_lora_rank 16"
    assert "DoRA" in problems[1] and "bias (all)" in problems[2]
    assert problems[3].startswith("adapter gone:") and "not found" in problems[3]
    assert len(problems) == 4  # the hub id is left to the engine


# ---- the CPU fix for no-LoRA tokens in a mixed batch ----

def _reference(x, A, B, idx, scale):
    import torch

    out = torch.zeros(x.shape[0], B.shape[-2])
    for t, i in enumerate(idx.tolist()):
        if i >= 0:
            out[t] = (scale * x[t] @ A[i, 0].T) @ B[i, 0].T
    return out


def test_cpu_fix_skips_no_lora_tokens():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    from serving.patches.cpu_worker import skip_no_lora_expand, skip_no_lora_shrink

    g = torch.Generator().manual_seed(0)
    T, H, R, S, O = 6, 16, 4, 2, 12
    x = torch.randn(T, H, generator=g)
    A, B = torch.randn(S, 1, R, H, generator=g), torch.randn(S, 1, O, R, generator=g)
    shrink, expand = skip_no_lora_shrink(ops.bgmv_shrink), skip_no_lora_expand(ops.bgmv_expand)
    for idx in ([0, -1, 1, -1, 0, 1], [-1] * 6, [1] * 6, [-1, 0, 0, 0, 0, 0]):
        idx = torch.tensor(idx)
        base = torch.randn(T, O, generator=g)
        y, out = torch.zeros(T, R), base.clone()
        shrink(x, A, y, idx, 0.5)
        expand(y, B, out, idx, True)
        assert torch.allclose(out, base + _reference(x, A, B, idx, 0.5), atol=1e-5), idx
    # what the fix is for: vLLM's own op gives a -1 row the last slot's delta
    idx, y, out = torch.tensor([-1, 0]), torch.zeros(2, R), torch.zeros(2, O)
    ops.bgmv_shrink(x[:2], A, y, idx, 0.5)
    ops.bgmv_expand(y, B, out, idx, True)
    assert out[0].abs().sum() > 0


def test_cpu_fix_slice_and_patching():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    import types

    from serving.patches.cpu_worker import patch_modules, skip_no_lora_expand

    g = torch.Generator().manual_seed(1)
    y, B = torch.randn(3, 4, generator=g), torch.randn(2, 1, 5, 4, generator=g)
    out = torch.zeros(3, 12)
    skip_no_lora_expand(ops.bgmv_expand_slice)(y, B, out, torch.tensor([1, -1, 0]), 6, 5, True)
    assert out[1].abs().sum() == 0 and out[0, 6:11].abs().sum() > 0 and out[:, :6].abs().sum() == 0

    fake = types.ModuleType("fake_ops")
    fake.bgmv_shrink, fake.bgmv_expand, fake.bgmv_expand_slice = ops.bgmv_shrink, ops.bgmv_expand, ops.bgmv_expand_slice
    assert patch_modules([fake]) == ["fake_ops.bgmv_shrink", "fake_ops.bgmv_expand", "fake_ops.bgmv_expand_slice"]
    assert patch_modules([fake]) == []  # idempotent
    assert fake.bgmv_expand.__wrapped__ is ops.bgmv_expand


def test_pure_modules_do_not_import_vllm():
    import subprocess
    import sys

    code = ("import sys, serving.lora, serving.patches.cpu_worker as f; assert f.WORKER_CLS.endswith('TideCPUWorker'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'ray', 'torch')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    import serving.patches.cpu_worker as f

    with pytest.raises(AttributeError):
        f.NotAThing  # noqa: B018


def test_cli_make_tiny_lora(base_dir, tmp_path, capsys):
    from serving.cli import main

    assert main(["make-tiny-lora", str(tmp_path / "ad"), "--base", str(base_dir), "--rank", "4", "--seed", "3",
                 "--targets", "q_proj,o_proj"]) == 0
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["target_modules"]) == (4, ["q_proj", "o_proj"])
    assert "rank 4" in capsys.readouterr().out
