from pathlib import Path

import pytest

from serving.errors import TideError
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.validation import chat_prompt_ids, completion_prompt_ids, resolve_max_tokens

MODEL = Path(__file__).resolve().parents[2] / ".models" / "tiny-llama"


@pytest.fixture(scope="module")
def tokenizer():
    if not MODEL.exists():
        pytest.skip("tiny model not built (make model)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)


def test_resolve_max_tokens_defaults_to_the_room_left():
    assert resolve_max_tokens([10, 30], None, 100, "prompt") == 70
    assert resolve_max_tokens([10], 90, 100, "prompt") == 90


@pytest.mark.parametrize("lens, req, param", [([100], None, "prompt"), ([150], 1, "messages"), ([10], 91, "max_tokens")])
def test_resolve_max_tokens_rejects_past_context(lens, req, param):
    with pytest.raises(TideError) as e:
        resolve_max_tokens(lens, req, 100, "messages" if param == "messages" else "prompt")
    assert e.value.status == 400 and e.value.code == "context_length_exceeded" and e.value.param == param
    assert "maximum context length is 100 tokens" in e.value.message


def test_chat_template_applied(tokenizer):
    req = ChatCompletionRequest(model="m", messages=[{"role": "system", "content": "S"},
                                                     {"role": "user", "content": "Hi"}])
    ids = chat_prompt_ids(req, tokenizer)
    text = tokenizer.decode(ids)
    assert text == "<|bos|><|system|>S<|end|>\n<|user|>Hi<|end|>\n<|assistant|>"


def test_completion_token_prompts_checked_against_vocab(tokenizer):
    assert completion_prompt_ids(CompletionRequest(model="m", prompt=[[1, 2], [3]]), tokenizer, 10) == [[1, 2], [3]]
    with pytest.raises(TideError, match="Token id 4096 is out of vocabulary"):
        completion_prompt_ids(CompletionRequest(model="m", prompt=[5, 4096]), tokenizer, 4096)
