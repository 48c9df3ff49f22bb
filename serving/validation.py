"""Request checks that need the model (its tokenizer and context length) but not the engine: pure functions.

They run in the replica, which holds the tokenizer, before anything reaches the engine, so a bad request
costs no engine work and gets OpenAI's wording.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import bad_request, printable
from .protocol import ChatCompletionRequest, CompletionRequest


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


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def chat_prompt_ids(req: ChatCompletionRequest, tokenizer: Tokenizer) -> list[int]:
    """Apply the model's chat template, then tokenize (the template writes its own special tokens)."""
    try:
        text = tokenizer.apply_chat_template(req.chat_messages(), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template may reject a role order (e.g. two system messages)
        raise bad_request(f"The model's chat template rejected the messages: {e}", "messages") from None
    return list(tokenizer.encode(text, add_special_tokens=False))


def completion_prompt_ids(req: CompletionRequest, tokenizer: Tokenizer, vocab_size: int) -> list[list[int]]:
    """Each prompt of a completion request as token ids; given ids are checked against the vocabulary."""
    out: list[list[int]] = []
    for p in req.prompts():
        if isinstance(p, str):
            ids = list(tokenizer.encode(p, add_special_tokens=True))
        else:
            bad = next((t for t in p if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise bad_request(f"Token id {bad} is out of vocabulary (size {vocab_size}).", "prompt")
            ids = list(p)
        if not ids:
            raise bad_request("The prompt is empty after tokenization.", "prompt")
        out.append(ids)
    return out


def resolve_max_tokens(prompt_lens: list[int], requested: int | None, max_model_len: int, param: str) -> int:
    """Tokens the engine may generate. Too long a prompt, or prompt + max_tokens past the context -> 400."""
    longest = max(prompt_lens)
    if longest >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"{'messages' if param == 'messages' else 'prompt'} resulted in {longest} tokens. "
            "Please reduce the length of the input.",
            param,
            "context_length_exceeded",
        )
    room = max_model_len - longest
    if requested is None:
        return room
    if requested > room:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{longest + requested} tokens ({longest} in the input, {requested} in the completion). "
            "Please reduce the length of the input or the completion.",
            "max_tokens",
            "context_length_exceeded",
        )
    return requested
