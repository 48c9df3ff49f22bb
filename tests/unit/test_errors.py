import json
import pickle

import pytest
from pydantic import ValidationError

from serving.errors import TideError, bad_request, model_not_found, to_error
from serving.protocol import ChatCompletionRequest, CompletionRequest


def validation_error(data, schema=ChatCompletionRequest) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        schema.model_validate(data)
    return e.value


def test_tide_error_pickles_with_all_fields():
    e = pickle.loads(pickle.dumps(TideError("m", 404, "t", "p", "c")))
    assert (e.message, e.status, e.type, e.param, e.code) == ("m", 404, "t", "p", "c")
    assert e.body() == {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}


def test_unknown_field_worded_like_openai():
    err = to_error(validation_error({"model": "m", "messages": [{"role": "user", "content": "x"}], "bogus": 1}))
    assert err.status == 400 and err.param == "bogus"
    assert err.message == "Unrecognized request argument supplied: bogus"


def test_nested_param_path():
    err = to_error(validation_error({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
    assert err.status == 400 and err.param == "messages[0].role"


def test_missing_field():
    err = to_error(validation_error({"model": "m"}))
    assert err.message == "Missing required parameter: 'messages'." and err.param == "messages"


def test_json_error_is_400():
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads("{bad")
    assert to_error(e.value).status == 400


class RayTaskError_Fake(Exception):  # mimics Ray's dynamically named RayTaskError(Cause) wrapper
    def __init__(self, cause):
        super().__init__("wrapped")
        self.cause = cause


RayTaskError_Fake.__name__ = "RayTaskError(TideError)"


def test_ray_wrapper_is_unwrapped():
    assert to_error(RayTaskError_Fake(model_not_found("x"))).status == 404


@pytest.mark.parametrize(
    "name, status",
    [("EngineDeadError", 503), ("VLLMValidationError", 400), ("DeploymentUnavailableError", 503),
     ("TimeoutError", 504)],
)
def test_known_foreign_errors(name, status):
    exc = type(name, (Exception,), {})("boom")
    assert to_error(exc).status == status


def test_unknown_error_is_sanitized_500():
    err = to_error(RuntimeError("secret path /etc/x and a traceback"))
    assert err.status == 500 and "secret" not in err.message and err.type == "server_error"


def test_bad_request_helper():
    assert bad_request("x", "p").body()["error"]["param"] == "p"


@pytest.mark.parametrize(
    "data, param",
    [
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "prompt": "x", "n": 0}, "n"),
        ({"model": "m", "prompt": "x", "n": 100}, "n"),
        ({"model": "m", "prompt": "x", "temperature": 3}, "temperature"),
        ({"model": "m", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "m", "prompt": []}, "prompt"),
        ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "prompt": "x", "stop": ""}, "stop"),
        ({"model": "m", "prompt": "x", "echo": "maybe"}, "echo"),
        ({"model": "m", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, None),
        ({"model": 5, "prompt": "x"}, "model"),
    ],
)
def test_completion_request_validation(data, param):
    err = to_error(validation_error(data, CompletionRequest))
    assert err.status == 400 and err.param == param


def test_union_branch_names_are_not_in_param():
    err = to_error(validation_error({"model": "m", "prompt": [1, "x"]}, CompletionRequest))
    assert err.param in ("prompt", "prompt[1]"), err.param
