from serving.replica.engine_env import engine_env_defaults


def test_dynamo_is_off_only_for_eager_engines_on_cpu():
    assert engine_env_defaults({"enforce_eager": True}, is_cpu=True) == {"TORCHDYNAMO_DISABLE": "1"}
    assert engine_env_defaults({"enforce_eager": False}, is_cpu=True) == {}
    assert engine_env_defaults({}, is_cpu=True) == {}  # compiled mode: vLLM compiles the model anyway
    assert engine_env_defaults({"enforce_eager": True}, is_cpu=False) == {}  # GPUs: Triton kernels, keep them
