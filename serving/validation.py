"""Checks of the raw body no schema can state (pure): text that no tokenizer nor UTF-8 encoder can take; and
whose checks a body gets (`needs_vllm`).

A chat or text completion body within the OpenAI fields Tide models (serving/protocol.py) is checked there,
so a bad field gets a 400 naming it; a body that uses a field only vLLM declares (vLLM's sampling extensions,
`prompt_logprobs`, `structured_outputs`, ...) or, for chat, a message shape beyond Tide's (tool calls and tool
results, non-text content parts) is left to vLLM's own validation. A field neither knows stays a 400 from Tide
(vLLM would ignore it silently), and so does an unknown `role`. Prompt building and context checks are vLLM's
(its OpenAI layer in the replica)."""

from __future__ import annotations

from typing import Any, Mapping

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


# Fields of vLLM 0.32's ChatCompletionRequest / CompletionRequest that Tide's protocol does not declare
# (tests/unit/test_passthrough.py checks them against vLLM's models, so an upgrade that renames one fails).
VLLM_SHARED = frozenset({
    "add_special_tokens", "allowed_token_ids", "bad_words", "cache_salt", "include_stop_str_in_output",
    "length_penalty", "logit_bias", "min_p", "priority", "prompt_logprobs", "repetition_penalty",
    "request_id", "return_token_ids", "return_tokens_as_token_ids", "skip_special_tokens",
    "spaces_between_special_tokens", "stop_token_ids", "structured_outputs", "truncate_prompt_tokens",
    "use_beam_search", "vllm_xargs",
})
VLLM_ONLY_FIELDS: dict[str, frozenset[str]] = {
    "chat": VLLM_SHARED | {
        "add_generation_prompt", "chat_template", "chat_template_kwargs", "continue_final_message", "documents",
        "echo", "include_reasoning", "reasoning_effort",
    },
    "completion": VLLM_SHARED | {"response_format"},
    "embed": frozenset({
        "add_special_tokens", "cache_salt", "embed_dtype", "endianness", "priority", "request_id",
        "truncate_prompt_tokens", "truncation_side", "use_activation",
    }),
}
TIDE_MESSAGE_KEYS = frozenset({"role", "content", "name"})
TIDE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def needs_vllm(kind: str, data: Mapping[str, Any], tide_fields: frozenset[str]) -> bool:
    """Whether a chat (`kind` "chat"), text completion or embeddings body is left to vLLM's own checks rather
    than Tide's (see the module docstring)."""
    messages = data.get("messages")
    if kind == "chat" and isinstance(messages, list) and any(
            not isinstance(m, dict) or m.get("role") not in TIDE_ROLES for m in messages):
        return False  # Tide's stricter check answers (an unknown role is a 400; vLLM accepts it)
    extra = set(data) - tide_fields
    if extra:
        return extra <= VLLM_ONLY_FIELDS.get(kind, frozenset())  # else Tide names the unknown field in a 400
    if kind != "chat":
        return False
    if not isinstance(data.get("messages"), list):
        return False
    for m in data["messages"]:
        if not isinstance(m, dict) or m.get("role") not in TIDE_ROLES:
            return False  # Tide's stricter check answers (an unknown role is a 400)
        if set(m) - TIDE_MESSAGE_KEYS:
            return True  # tool_calls, tool_call_id, ...
        content = m.get("content")
        if isinstance(content, list) and any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            return True
    return False
