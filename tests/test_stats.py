import json

import pytest
import torch

from llm_edit.core.arch import arch_of
from llm_edit.core.hooks import Trace
from llm_edit.editing.stats import key_fingerprint, second_moment


def _corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The Eiffel Tower is in Paris.\n\nThe Colosseum is in Rome. It is old.\n\n"
                    "Apple makes the iPhone, and Lionel Messi plays football.")
    return path


def test_second_moment_equals_mean_outer_product_of_keys(tmp_path, tiny):
    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    path = _corpus(tmp_path)
    cov, manifest = second_moment(model, tok, name, corpus=f"file:{path}", n_tokens=10_000, seq_len=16,
                                  use_cache=False)
    # by hand: pack the text into 16-token rows exactly as the corpus reader does, each row after
    # the BOS this tokenizer puts before text, and trace
    lead = [tok.bos_token_id]
    assert tok("a")["input_ids"][:1] == lead
    ids = []
    for para in path.read_text().split("\n\n"):
        ids += tok(para.strip() + "\n\n", add_special_tokens=False)["input_ids"]
    keys = []
    for i in range(0, len(ids), 15):
        with torch.no_grad(), Trace(model, [name], retain_input=True) as tr:
            model(input_ids=torch.tensor([lead + ids[i:i + 15]]))
        keys.append(tr[name].input[0].double())
    keys = torch.cat(keys)
    assert manifest["n_tokens"] == len(keys) > len(ids)
    assert torch.allclose(cov.double(), keys.T @ keys / len(keys), atol=1e-5)


def test_second_moment_is_cached_with_a_manifest(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("LLM_EDIT_HOME", str(tmp_path / "home"))
    model, tok = tiny("gpt2")
    name = arch_of(model).mlp_out.format(2)
    first, m1 = second_moment(model, tok, name, corpus="model-samples", n_tokens=256, seq_len=32)
    files = list((tmp_path / "home" / "stats").rglob("*.safetensors"))
    assert len(files) == 1
    second, m2 = second_moment(model, tok, name, corpus="model-samples", n_tokens=256, seq_len=32)
    assert torch.equal(first, second) and m1 == m2
    assert m1["n_tokens"] == 256 and m1["corpus"] == "model-samples" and "llm_edit_version" in m1
    json.dumps(m1)


def test_key_fingerprint_ignores_the_edited_module_and_later_layers(tiny):
    model, _ = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    before = key_fingerprint(model, name)
    with torch.no_grad():
        model.get_submodule(name).weight.add_(1.0)
        model.get_submodule(arch_of(model).mlp_out.format(3)).weight.add_(1.0)
    assert key_fingerprint(model, name) == before
    with torch.no_grad():
        model.get_submodule(arch_of(model).mlp_out.format(0)).weight.add_(1.0)
    assert key_fingerprint(model, name) != before


def test_identity_and_unknown_corpora(tiny):
    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    assert second_moment(model, tok, name, corpus="identity")[0] is None
    with pytest.raises(ValueError, match="unknown stats_corpus"):
        second_moment(model, tok, name, corpus="wikipedia", use_cache=False)


def testmodel_samples_are_one_stream_served_by_prefix(tmp_path, tiny, monkeypatch):
    from llm_edit.editing.stats import model_samples

    model, tok = tiny("llama")
    monkeypatch.setenv("LLM_EDIT_HOME", str(tmp_path / "a"))
    small = list(model_samples(model, tok, n_tokens=3 * 16, seq_len=16, seed=1, batch=2))
    monkeypatch.setenv("LLM_EDIT_HOME", str(tmp_path / "b"))
    large = list(model_samples(model, tok, n_tokens=7 * 16, seq_len=16, seed=1, batch=2))
    again = list(model_samples(model, tok, n_tokens=3 * 16, seq_len=16, seed=1, batch=2))
    assert len(small) == 3 and len(large) == 7
    assert small == large[:3] == again
    assert len(list((tmp_path / "b" / "corpora").iterdir())) == 1  # served from the larger file


def test_the_shipped_corpus_needs_no_sampling_and_is_keyed_by_its_content(tiny, monkeypatch):
    import llm_edit.editing.stats as S

    model, tok = tiny("llama")
    monkeypatch.setattr(S, "model_samples", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sampled")))
    c, manifest = S.second_moment(model, tok, "model.layers.1.mlp.down_proj", corpus="shipped", n_tokens=500,
                                  seq_len=32, use_cache=False)
    assert c.shape == (128, 128) and manifest["n_tokens"] == 500
    assert manifest["corpus_id"] == f"shipped-{S.sha256_file(S.SHIPPED_CORPUS)[:16]}"


def test_packed_corpora_are_cached_apart_by_how_the_tokenizer_starts_text(tmp_path):
    """Rows packed after a BOS (since 2026-12-07) and rows without one get different cache names;
    a tokenizer without leading tokens keeps the name it always had."""
    from llm_edit.core.models import build_tiny_tokenizer
    from llm_edit.editing.stats import corpus_id

    path = _corpus(tmp_path)
    with_bos, without = build_tiny_tokenizer(add_bos=True), build_tiny_tokenizer(add_bos=False)
    assert corpus_id(f"file:{path}", with_bos) != corpus_id(f"file:{path}", without) == corpus_id(f"file:{path}")
    assert corpus_id("hf:wikitext:wikitext-103-raw-v1", with_bos).endswith(f"-lead{with_bos.bos_token_id}")
    assert corpus_id("shipped", with_bos) == corpus_id("shipped")
