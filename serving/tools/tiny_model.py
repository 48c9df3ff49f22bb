"""Build Tide's default model: a tiny Llama with seeded random weights, an offline-trained tokenizer and a chat template.

No hub is reachable on CI or dev machines, yet the serving path must load a model exactly as it would load
a real one. So we build an ordinary Hugging Face folder (config.json, model.safetensors, tokenizer.json,
chat template) that vLLM loads with its normal code. Same seed -> byte-identical weights and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

from tqdm import tqdm

BUILD_VERSION = 1
MARKER = "tide_tiny_model.json"
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}<|{{ message['role'] }}|>"
    "{% else %}<|user|>{{ message['role'] }}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _training_files(limit: int) -> list[Path]:
    """Local text to train the tokenizer on: the standard library's own sources, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    return files[:limit]


def _spec(seed: int, vocab_size: int, hidden_size: int, num_layers: int, max_positions: int) -> dict:
    return {
        "version": BUILD_VERSION,
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "max_position_embeddings": max_positions,
    }


def is_built(path: str | Path, spec: dict | None = None) -> bool:
    """True when `path` holds a tiny model built by this code (with `spec`, when given)."""
    marker = Path(path) / MARKER
    if not marker.is_file() or not (Path(path) / "model.safetensors").is_file():
        return False
    return spec is None or json.loads(marker.read_text()).get("spec") == spec


def build_tiny_model(
    path: str | Path,
    seed: int = 0,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    num_layers: int = 2,
    max_positions: int = 2048,
    force: bool = False,
) -> Path:
    """Write the tiny model to `path` (cached: skipped when the same spec is already there). Returns the path."""
    out = Path(path).resolve()
    spec = _spec(seed, vocab_size, hidden_size, num_layers, max_positions)
    if not force and is_built(out, spec):
        print(f"tiny model already built at {out} (seed {seed})")
        return out

    steps = tqdm(total=4, desc="building tiny model", unit="step")
    steps.set_postfix_str("training tokenizer")
    tokenizer = _train_tokenizer(vocab_size)
    steps.update()

    steps.set_postfix_str("initialising weights")
    model = _init_model(tokenizer, seed, hidden_size, num_layers, max_positions)
    steps.update()

    steps.set_postfix_str("saving")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    steps.update()

    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / MARKER).write_text(json.dumps({"spec": spec, "weights_sha256": digest}, indent=2))
    steps.update()
    steps.set_postfix_str("done")
    steps.close()
    print(f"tiny model written to {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return out


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in _training_files(200)]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _init_model(tokenizer, seed: int, hidden_size: int, num_layers: int, max_positions: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger output weights than the 0.02 default make sampled text varied instead of one repeated token.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=gen) * 0.5)
    return model.to(torch.float32)
