import pytest
import torch

from llm_edit import load_model
from llm_edit.core.models import ModelLoadError, build_tiny, fingerprint, resolve_dtype


def test_local_directory_with_safetensors_loads(tmp_path):
    model, tok = build_tiny("gpt_neox")
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    tok.save_pretrained(tmp_path / "m")
    loaded, _ = load_model(str(tmp_path / "m"), device="cpu")
    assert fingerprint(loaded) == fingerprint(model)


def test_pickled_weights_are_refused(tmp_path):
    model, tok = build_tiny("llama")
    (tmp_path / "m").mkdir()
    model.config.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")  # a pickle: must not be loaded
    with pytest.raises(ModelLoadError, match="pickles"):
        load_model(str(tmp_path / "m"), device="cpu")


def test_missing_gguf_and_bad_dtype(tmp_path):
    with pytest.raises(ModelLoadError, match="no such GGUF"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("float8")


def test_dtype_and_alias_name(tiny):
    model, tok = load_model("tiny-qwen2", dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.name_or_path == "tiny-qwen2" and tok.pad_token is not None
