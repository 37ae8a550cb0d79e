"""AlphaEdit: the null-space maths in closed form, edits on every tiny architecture, and editing
sessions (save, resume, undo) from Python and the command line."""
import dataclasses
import json

import pytest
import torch
from conftest import ALPHAEDIT_RAISES, TINY_TYPES
from test_cli import run

import llm_edit
from llm_edit.editing.rank_one import null_space_projector, null_space_update
from llm_edit.evaluating.metrics import target_logprob
from llm_edit.editing.session import EditSession, SessionError

REQUESTS = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris"},
            {"prompt": "{} was written by", "subject": "Hamlet", "target_new": "Goethe", "target_true": "Shakespeare"},
            {"prompt": "The {} plays", "subject": "Lakers", "target_new": "soccer", "target_true": "basketball"}]


def p_new(model, tok, requests=REQUESTS):
    prompts = [r["prompt"].replace("{}", r["subject"]) for r in requests]
    return target_logprob(model, tok, prompts, [r["target_new"] for r in requests]).exp()


def spectrum(d=6, values=(5.0, 3.0, 2.0, 1e-3, 1e-4, 0.0)):
    """C = U diag(values) Uᵀ with a random orthonormal U."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return u, u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ u.T


def test_projector_spans_the_small_eigenvalues():
    u, cov = spectrum()
    p = null_space_projector(cov, 0.01)
    assert torch.allclose(p, u[:, 3:] @ u[:, 3:].T, atol=1e-10)
    assert torch.allclose(p @ p, p, atol=1e-10) and round(float(p.trace())) == 3
    assert torch.allclose(p @ u[:, :3], torch.zeros(6, 3, dtype=torch.float64), atol=1e-10)
    only_zero = null_space_projector(cov, 1e-9)
    assert torch.allclose(only_zero, u[:, 5:] @ u[:, 5:].T, atol=1e-10)


def test_update_writes_new_values_and_leaves_preserved_keys_alone():
    u, cov = spectrum()
    p = null_space_projector(cov, 0.01)
    keys = (u[:, 3:] @ torch.randn(3, 2, dtype=torch.float64)).T.float()  # two keys inside the null space
    residuals = torch.randn(2, 4)
    left, right = null_space_update(residuals, keys, p, None, alpha=1e-8)
    delta = left.double() @ right.double()
    assert torch.allclose(delta @ keys.double().T, residuals.double().T, atol=1e-5)  # written exactly
    preserved = u[:, :3] @ torch.randn(3, 5, dtype=torch.float64)  # keys C says the model uses
    assert (delta @ preserved).abs().max() < 1e-5


def test_memory_protects_earlier_edits():
    """Keys of an earlier batch, through K_p K_pᵀ, are disturbed far less than without the memory."""
    u, cov = spectrum(d=8, values=(5, 3, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4))
    p = null_space_projector(cov, 0.01)
    torch.manual_seed(1)
    earlier = (u[:, 2:] @ torch.randn(6, 3, dtype=torch.float64)).T.float()
    new = (u[:, 2:] @ torch.randn(6, 2, dtype=torch.float64)).T.float()
    residuals = torch.randn(2, 4)
    memory = earlier.double().T @ earlier.double()
    without = null_space_update(residuals, new, p, None, alpha=1e-3)
    with_memory = null_space_update(residuals, new, p, memory, alpha=1e-3)

    def disturbance(factors):
        return float(((factors[0].double() @ factors[1].double()) @ earlier.double().T).norm())

    assert disturbance(with_memory) < 0.05 * disturbance(without)
    written = (with_memory[0].double() @ with_memory[1].double()) @ new.double().T
    assert torch.allclose(written, residuals.double().T, atol=1e-2)  # 6 free directions fit 3 + 2 keys


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_alphaedit_raises_every_target_and_reverts_exactly(tiny, model_type):
    model, tok = tiny(model_type)
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    before = p_new(model, tok)
    result = llm_edit.edit(model, tok, REQUESTS, "alphaedit", progress=False)
    if model_type in ALPHAEDIT_RAISES:  # see conftest for the others
        assert (p_new(model, tok) > before).all()
    (name,) = result.memory
    assert result.memory[name].shape[0] == result.memory[name].shape[1]
    assert result.manifest["statistics"][0]["null_space_dim"] > 0
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_prepared_state_is_reused_only_with_the_same_settings(tiny):
    model, tok = tiny("llama")
    first = llm_edit.edit(model, tok, REQUESTS[:1], "alphaedit", progress=False)
    again = llm_edit.edit(model, tok, REQUESTS[1:2], "alphaedit", prepared=first.prepared, memory=first.memory,
                          progress=False)
    assert again.prepared.projectors is first.prepared.projectors  # not recomputed on the edited model
    with pytest.raises(ValueError, match="other settings"):
        llm_edit.edit(model, tok, REQUESTS[2:], "alphaedit", prepared=first.prepared, alpha=3.0, progress=False)
    again.revert()
    first.revert()


def test_alphaedit_config_is_checked(tiny):
    model, tok = tiny("llama")
    with pytest.raises(llm_edit.core.config.ConfigError, match="nullspace_scale"):
        llm_edit.edit(model, tok, REQUESTS, "alphaedit", nullspace_scale="relative", progress=False)
    with pytest.raises(llm_edit.core.config.ConfigError, match="null space is empty"):
        llm_edit.edit(model, tok, REQUESTS, "alphaedit", nullspace_threshold=1e-9, progress=False)
    with pytest.raises(llm_edit.core.config.ConfigError, match="nullspace_treshold"):
        llm_edit.edit(model, tok, REQUESTS, "alphaedit", nullspace_treshold=0.1, progress=False)
    with pytest.raises(llm_edit.core.config.ConfigError, match="share of trace"):
        llm_edit.edit(model, tok, REQUESTS, "alphaedit", nullspace_scale="energy", nullspace_threshold=1.5, progress=False)


def test_energy_scale_reads_the_threshold_as_a_share_of_the_keys_energy(tiny):
    model, tok = tiny("llama")
    dims = []
    for share in (0.05, 0.5):
        result = llm_edit.edit(model, tok, REQUESTS, "alphaedit", nullspace_scale="energy", nullspace_threshold=share,
                               progress=False)
        stats = result.manifest["statistics"]
        dims.append([s["null_space_dim"] for s in stats])
        # the cutoff is an eigenvalue of C, not the share itself
        assert all(s["null_space_threshold"] != share for s in stats)
        result.revert()
    assert all(0 < small < large for small, large in zip(*dims))


def test_session_resumes_bit_for_bit_and_undoes(tiny, tmp_path):
    model, tok = tiny("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    session = EditSession.create(tmp_path / "s", model, "alphaedit", batch_size=1)
    session.edit(tok, REQUESTS[:2], progress=False)  # two batches of one
    after_two = {k: v.clone() for k, v in model.state_dict().items()}
    memory_two = {k: v.clone() for k, v in session.memory.items()}
    info = json.loads((tmp_path / "s" / "session.json").read_text())
    assert [b["facts"] for b in info["batches"]] == [1, 1] and all("keys" in b for b in info["batches"])

    # next week: a fresh copy of the base model, the session re-applied, then one more batch
    fresh, _ = tiny("llama")
    resumed = EditSession.open(tmp_path / "s", fresh, tok)
    assert all(torch.equal(after_two[k], v) for k, v in fresh.state_dict().items())
    # the projectors come from the base weights, as when the session started
    assert all(torch.equal(session.prepared.projectors[l], p) for l, p in resumed.prepared.projectors.items())
    assert all(torch.equal(memory_two[k], v) for k, v in resumed.memory.items())
    before = p_new(fresh, tok, REQUESTS[2:])
    resumed.edit(tok, REQUESTS[2:], progress=False)
    assert p_new(fresh, tok, REQUESTS[2:]) > before
    assert resumed.facts == 3 and len(resumed.applied) == 3

    resumed.undo()  # last batch out: weights and memory as after the first two
    assert all(torch.equal(after_two[k], v) for k, v in fresh.state_dict().items())
    assert all(torch.equal(memory_two[k], v) for k, v in resumed.memory.items())
    assert len(json.loads((tmp_path / "s" / "session.json").read_text())["batches"]) == 2
    resumed.revert_all()
    assert all(torch.equal(base[k], v) for k, v in fresh.state_dict().items())

    with pytest.raises(SessionError, match="not the session's base model"):
        EditSession.open(tmp_path / "s", model)  # `model` still holds the first two batches
    with pytest.raises(SessionError, match="already exists"):
        EditSession.create(tmp_path / "s", fresh, "alphaedit")


def test_failed_session_batch_leaves_model_and_files_as_they_were(tiny, tmp_path, monkeypatch):
    model, tok = tiny("llama")
    session = EditSession.create(tmp_path / "s", model, "memit", batch_size=1)
    session.edit(tok, REQUESTS[:1], progress=False)
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    text = (tmp_path / "s" / "session.json").read_text()
    from llm_edit.editing.methods import memit

    calls = {"n": 0}
    real = memit.compute

    def flaky(*args, **kwargs):  # the second batch of this call fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise FloatingPointError("boom")
        return real(*args, **kwargs)

    monkeypatch.setitem(llm_edit.editing.methods.METHODS, "memit",
                        dataclasses.replace(llm_edit.editing.methods.METHODS["memit"], compute=flaky))
    with pytest.raises(FloatingPointError):
        session.edit(tok, REQUESTS[1:], progress=False)
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "s" / "session.json").read_text() == text and len(session.applied) == 1


def test_cli_session_continues_and_refuses_new_settings(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in REQUESTS[:2]))
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(REQUESTS[2]) + "\n")
    home, session = tmp_path / "home", tmp_path / "session"
    done = run("edit", "--model", "tiny-llama", "--method", "alphaedit", "--facts", str(facts), "--batch-size", "1",
               "--session", str(session), "--no-eval", env_home=home)
    assert done.returncode == 0, done.stderr
    assert "2 batches, 2 facts" in done.stdout
    done = run("edit", "--model", "tiny-llama", "--facts", str(more), "--session", str(session),
               "--out", str(tmp_path / "out"), env_home=home)
    assert done.returncode == 0, done.stderr
    assert "2 batch(es), 2 fact(s) re-applied" in done.stdout and "3 batches, 3 facts" in done.stdout
    manifest = json.loads((tmp_path / "out" / "llm_edit_manifest.json").read_text())
    assert manifest["method"] == "alphaedit" and manifest["hyperparameters"]["batch_size"] == 1
    done = run("edit", "--model", "tiny-llama", "--facts", str(more), "--session", str(session),
               "--batch-size", "5", env_home=home)
    assert done.returncode != 0 and "settings are fixed" in done.stderr
    done = run("edit", "--model", "tiny-llama", "--method", "rome", "--facts", str(more), "--batch-size", "5",
               "--out", str(tmp_path / "o2"), env_home=home)
    assert done.returncode != 0 and "one fact at a time" in done.stderr
