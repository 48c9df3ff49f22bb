import json

from serving.tools.tiny_model import MARKER, build_tiny_model, is_built


def test_same_seed_same_model_and_cached(tmp_path, capsys):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    ha = json.loads((a / MARKER).read_text())["weights_sha256"]
    assert ha == json.loads((b / MARKER).read_text())["weights_sha256"]
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    for name in ("config.json", "model.safetensors", "chat_template.jinja"):
        assert (a / name).is_file()
    capsys.readouterr()
    build_tiny_model(tmp_path / "a", seed=3)
    assert "already built" in capsys.readouterr().out
    assert is_built(a) and not is_built(tmp_path / "missing")


def test_other_seed_other_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=1, num_layers=1)
    b = build_tiny_model(tmp_path / "b", seed=2, num_layers=1)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
