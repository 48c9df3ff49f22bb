"""Checks of the raw body no schema can state (pure): text that no tokenizer nor UTF-8 encoder can take.

Prompt building and context checks are vLLM's (its OpenAI layer in the replica)."""

from __future__ import annotations

from typing import Any

from .errors import bad_request, printable


def lone_surrogate_path(obj: Any) -> str | None:
    """Where a JSON-like value holds a string that is not valid Unicode (a lone UTF-16 surrogate, which JSON's
    `\\ud800` escapes can spell), as `messages[0].content`; None when every string is fine. Iterative, so a
    deeply nested value cannot overflow the stack."""
    todo: list[tuple[str, Any]] = [("", obj)]
    while todo:
        path, v = todo.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "body"
        elif isinstance(v, dict):
            for k, x in v.items():
                todo.append((f"{path}.{k}" if path else str(k), k))  # a key can be bad too
                todo.append((f"{path}.{k}" if path else str(k), x))
        elif isinstance(v, (list, tuple)):
            todo += [(f"{path}[{i}]", x) for i, x in enumerate(v)]
    return None


def check_text(obj: Any) -> None:
    """A 400 naming the field whose text is not valid Unicode (tokenizers and UTF-8 encoders would fail)."""
    where = lone_surrogate_path(obj)
    if where is not None:
        where = printable(where)  # the path itself may hold the bad key
        raise bad_request(f"`{where}` is not valid Unicode text: it holds a lone UTF-16 surrogate "
                          "(\\ud800-\\udfff without its pair).", where, "invalid_unicode")
