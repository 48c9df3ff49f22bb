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


def test_ray_wrapper_is_unwrapped():
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("openai", "traceback", model_not_found("x")).as_instanceof_cause()
    assert type(wrapped).__name__ == "RayTaskError(TideError)" and to_error(wrapped).status == 404


def _upstream_classes() -> dict[str, type]:
    """Exception classes of the installed Ray, Ray Serve and vLLM (and the builtins), by name."""
    import builtins

    import ray.exceptions
    import ray.serve.exceptions

    vllm_exceptions = pytest.importorskip("vllm.exceptions")
    vllm_engine = pytest.importorskip("vllm.v1.engine.exceptions")
    out = {}
    for module in (builtins, ray.exceptions, ray.serve.exceptions, vllm_exceptions, vllm_engine):
        out.update({n: c for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, BaseException)})
    return out


def test_every_upstream_name_tide_matches_is_a_real_class():
    """Tide matches these by name (the ingress never imports vLLM): an upstream rename must fail here."""
    from serving.errors import ENGINE_DEAD, TIMEOUTS, UNAVAILABLE, VLLM_BAD_REQUEST
    from serving.faults import REPLICA_GONE

    known = _upstream_classes()
    names = VLLM_BAD_REQUEST | UNAVAILABLE | TIMEOUTS | REPLICA_GONE | {ENGINE_DEAD}
    assert not names - set(known), sorted(names - set(known))


def test_known_foreign_errors_map_by_their_real_classes():
    from ray.exceptions import ActorDiedError
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    vllm_exceptions = pytest.importorskip("vllm.exceptions")
    vllm_engine = pytest.importorskip("vllm.v1.engine.exceptions")
    bad = to_error(vllm_exceptions.VLLMValidationError("n must be 1", parameter="n"))
    assert (bad.status, bad.param) == (400, "n")
    assert to_error(vllm_engine.EngineDeadError()).status == 503
    assert to_error(DeploymentUnavailableError(DeploymentID(name="model-x", app_name="tide"))).status == 503
    assert to_error(BackPressureError(num_queued_requests=5, max_queued_requests=4)).status == 503
    assert to_error(ActorDiedError()).status == 503
    assert to_error(TimeoutError("slow")).status == 504


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
