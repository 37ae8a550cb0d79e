"""Unlearning on tiny random models: every method × several architectures, exact undo,
failure roll-back, saving, checkpoints, gradient checkpointing and 2-process accelerate."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_edit import forget
from llm_edit.core.config import ConfigError
from llm_edit.unlearning.items import Formatting, parse_item
from llm_edit.evaluating.metrics import answer_probability
from llm_edit.core.models import fingerprint
from llm_edit.unlearning.methods import UNLEARNERS

from conftest import LAYOUTS

ROOT = Path(__file__).resolve().parent.parent
FACTS = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"},
         {"question": "Who wrote Hamlet?", "answer": "Shakespeare wrote it."},
         {"text": "The quick brown fox jumps over the lazy dog."}]
# methods whose objective is to lower the forget answers' probability (idk raises a refusal's,
# idk_dpo widens the refusal-over-answer margin, RMU moves activations: each is checked through
# its own forget term)
LOWERS_PROBABILITY = {"grad_ascent", "grad_diff", "npo", "simnpo"}


def mean_p(model, tok):
    items = [parse_item(x) for x in FACTS]
    return sum(answer_probability(model, tok, items, Formatting())) / len(items)


@pytest.mark.parametrize("model_type", LAYOUTS)
@pytest.mark.parametrize("method", sorted(UNLEARNERS))
def test_forget_then_unload_is_exact(tiny, method, model_type):
    model, tok = tiny(model_type)
    before_fp, before_p = fingerprint(model), mean_p(model, tok)
    # batch_size 3: every step sees all three items, so the forget terms compare across steps
    result = forget(model, tok, FACTS, method=method, progress=False, batch_size=3)
    log = result.log
    assert len(log) == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[-1]["forget"] < log[0]["forget"]
    if method in LOWERS_PROBABILITY:
        assert mean_p(result.model, tok) < before_p
    result.unload()
    assert fingerprint(model) == before_fp
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_retain_generic_adds_sampled_text_to_a_given_retain_set(tiny):
    model, tok = tiny()
    retain = [{"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci."}]
    plain = forget(model, tok, FACTS[:1], retain, method="grad_diff", progress=False, steps=1)
    assert plain.manifest["retain_items"] == 1 and "model-samples" not in plain.manifest["retain_source"]
    plain.unload()
    mixed = forget(model, tok, FACTS[:1], retain, method="grad_diff", progress=False, steps=1, retain_generic=True,
                   retain_samples=3, retain_sample_tokens=8)
    kinds = [x.kind for x in mixed._trainer.retain]
    assert kinds[0] == "qa" and kinds[1:] == ["text"] * (len(kinds) - 1) and 1 <= len(kinds) - 1 <= 3
    assert mixed.manifest["retain_items"] == len(kinds) and "model-samples" in mixed.manifest["retain_source"]
    mixed.unload()


def test_question_items_take_the_model_question_recipe_where_the_method_has_one():
    """Long answers are not forgotten by a facts recipe's steps: question files get
    ``questions-<model recipe>.yaml`` (NPO has one for the default model, gradient difference
    does not); facts, and mixed files, keep the model's own recipe."""
    from llm_edit.unlearning.forget import items_recipe

    questions = [parse_item({"question": "Who wrote Hamlet?", "answer": "Shakespeare."})]
    facts = [parse_item({"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"})]
    assert items_recipe("npo", "smollm2-135m", questions) == "questions-smollm2-135m"
    assert items_recipe("grad_diff", "smollm2-135m", questions) == "smollm2-135m"
    assert items_recipe("npo", "smollm2-135m", facts) == "smollm2-135m"
    assert items_recipe("npo", "smollm2-135m", questions + facts) == "smollm2-135m"
    assert items_recipe("npo", None, questions) is None


def test_misspelt_hyperparameter_fails_loudly(tiny):
    model, tok = tiny()
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        forget(model, tok, FACTS, method="npo", betta=0.2)


def test_failure_leaves_the_model_as_it_was(tiny):
    model, tok = tiny()
    before = fingerprint(model)

    def boom(step, record, model):
        if step == 3:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        forget(model, tok, FACTS, method="npo", callback=boom, progress=False)
    assert fingerprint(model) == before and not any("lora" in n for n, _ in model.named_parameters())


def test_full_finetune_failure_restores_every_weight(tiny):
    model, tok = tiny()
    before = fingerprint(model)
    with pytest.raises(RuntimeError):
        forget(model, tok, FACTS, method="npo", full_finetune=True, progress=False,
               callback=lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    assert fingerprint(model) == before


def test_callback_and_forget_probability_stop_early(tiny):
    model, tok = tiny()
    result = forget(model, tok, FACTS, method="grad_ascent", progress=False, callback=lambda s, r, m: s == 2)
    assert len(result.log) == 2 and "callback" in result.manifest["training"]["stopped_early"]
    model, tok = tiny()
    result = forget(model, tok, FACTS, method="grad_ascent", progress=False, stop_forget_prob=1.0, eval_every=1)
    assert len(result.log) == 1 and "forget probability" in result.manifest["training"]["stopped_early"]


def test_holdout_sets_the_stop_to_the_original_model_probability_of_answers_it_never_saw(tiny, tmp_path):
    """TOFU's stop for users: the mean over holdout items of exp(mean answer-token log-prob),
    taken from the original model in the training format (computed here by hand), and the
    recipe's stop_steps as the cap while that stop is in force."""
    from llm_edit.unlearning.items import encode

    model, tok = tiny()
    recipe = tmp_path / "fixed.yaml"  # a recipe as the question recipe: fixed steps, a longer cap with a stop
    recipe.write_text("steps: 1\nstop_steps: 3\neval_every: 1\n")
    holdout = [parse_item({"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci."}),
               parse_item({"question": "Where is Rome?", "answer": "In Italy, on the Tiber."})]
    expected = []
    with torch.no_grad():
        for item in holdout:
            ids, start = encode(tok, item, Formatting(), 128)
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            answer = [logp[t - 1, ids[t]].item() for t in range(start, len(ids))]
            expected.append(torch.tensor(answer).mean().exp().item())
    result = forget(model, tok, FACTS[1:2], method="npo", recipe=recipe, holdout=holdout, progress=False)
    info = result.manifest["holdout"]
    assert info["items"] == 2 and info["stop_forget_prob"] == pytest.approx(sum(expected) / 2, abs=1e-6)  # kept to 6 decimals
    assert result.manifest["hyperparameters"]["stop_forget_prob"] == info["stop_forget_prob"]
    assert result.manifest["hyperparameters"]["steps"] == 3  # stop_steps, not steps, caps a run with a stop
    result.unload()
    # the cap is run out when the stop is never reached (no item is ever at probability 0); steps
    # the user sets are kept, and without a stop stop_steps does nothing
    capped = forget(model, tok, FACTS[1:2], method="npo", sets=["steps=1"], stop_steps=3, stop_forget_prob=0.0,
                    eval_every=1, progress=False)
    assert len(capped.log) == 1
    capped.unload()
    capped = forget(model, tok, FACTS[1:2], method="npo", recipe=recipe, stop_forget_prob=0.0, progress=False)
    assert len(capped.log) == 3 and capped.manifest["training"]["stopped_early"] is None
    capped.unload()
    fixed = forget(model, tok, FACTS[1:2], method="npo", recipe=recipe, progress=False)
    assert len(fixed.log) == 1
    fixed.unload()
    # holding out the forget item itself: the first step that lowers its probability stops the run
    itself = forget(model, tok, FACTS[1:2], method="npo", recipe=recipe, holdout=[parse_item(FACTS[1])], lr=1e-2,
                    progress=False)
    assert len(itself.log) == 1 and "forget probability" in itself.manifest["training"]["stopped_early"]
    itself.unload()
    with pytest.raises(ConfigError, match="holdout sets stop_forget_prob"):
        forget(model, tok, FACTS[1:2], method="npo", holdout=holdout, stop_forget_prob=0.1, progress=False)
    with pytest.raises(ConfigError, match="has no stop"):
        forget(model, tok, FACTS[:1], method="rome-erase", holdout=holdout, progress=False)


def test_save_writes_a_plain_model_the_adapter_and_a_manifest(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny()
    result = forget(model, tok, FACTS, method="npo", progress=False)
    expected = mean_p(result.model, tok)
    result.save(tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "model.safetensors").is_file()
    manifest = json.loads((out / "llm_edit_manifest.json").read_text())
    assert manifest["method"] == "npo" and manifest["hyperparameters"]["beta"] == 0.1
    assert manifest["forget_items"] == 3 and manifest["retain_source"].startswith("model-samples")
    assert manifest["formatting"]["qa_format"] == "chat_template" and len(manifest["log"]) == 8
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert mean_p(reloaded, tok) == pytest.approx(expected, rel=1e-4)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())


def test_gradient_checkpointing_gives_the_same_training(tiny):
    logs = []
    for checkpointing in (False, True):
        model, tok = tiny()
        logs.append(forget(model, tok, FACTS, method="npo", progress=False, steps=3,
                           gradient_checkpointing=checkpointing).log)
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)


def test_interrupted_run_resumes_from_its_checkpoint(tiny, tmp_path):
    model, tok = tiny()
    reference = forget(model, tok, FACTS, method="npo", progress=False, steps=4).log

    def interrupt(step, record, model):
        if step == 3:
            raise KeyboardInterrupt

    model, tok = tiny()
    with pytest.raises(KeyboardInterrupt):
        forget(model, tok, FACTS, method="npo", progress=False, steps=4, checkpoint_every=2,
               checkpoint_dir=tmp_path / "ckpt", callback=interrupt)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-000002"]
    model, tok = tiny()
    resumed = forget(model, tok, FACTS, method="npo", progress=False, steps=4, checkpoint_every=2,
                     checkpoint_dir=tmp_path / "ckpt").log
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(reference, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    model, tok = tiny()
    with pytest.raises(ConfigError, match="other hyper-parameters"):
        forget(model, tok, FACTS, method="npo", progress=False, steps=5, checkpoint_dir=tmp_path / "ckpt")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")
def test_two_processes_match_one_with_the_same_effective_batch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), LLM_EDIT_HOME=str(tmp_path / "home"))
    worker = str(ROOT / "tests" / "_forget_worker.py")
    one = subprocess.run([sys.executable, worker, str(tmp_path / "one.json"), "2", "2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", worker, str(tmp_path / "two.json"),
                          "1", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["effective_batch_size"] == two["effective_batch_size"] == 4
    for a, b in zip(one["log"], two["log"]):
        for key in ("loss", "forget", "retain"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a, b)


def test_sharpness_aware_step_takes_the_forget_gradient_at_the_perturbed_weights(tiny):
    """sam_rho (Fan et al. 2025): after the correction and the ordinary backward, the gradient is
    ∇ℓ_f(θ + ε) + α∇ℓ_r(θ) with ε = ρ∇ℓ_f(θ)/‖∇ℓ_f(θ)‖, checked against gradients taken by hand;
    the weights are left bit for bit as they were."""
    from llm_edit.unlearning.contract import StepContext
    from llm_edit.unlearning.methods import get_unlearner
    from llm_edit.unlearning.methods.grad_ascent import GradAscentConfig
    from llm_edit.unlearning.trainer import Trainer

    model, tok = tiny("llama")
    items = [parse_item(x) for x in FACTS]
    trainer = Trainer(model, tok, items, None, get_unlearner("grad_ascent"), GradAscentConfig(sam_rho=0.5),
                      progress=False)
    ctx, params = StepContext(trainer), trainer.params
    before = [p.detach().clone() for p in params]

    def grads():
        loss, _ = trainer.unlearner.loss(ctx, items, None, trainer.config, None)
        return torch.autograd.grad(loss, params)

    here = grads()
    norm = torch.sqrt(sum((g ** 2).sum() for g in here))
    with torch.no_grad():
        for p, g in zip(params, here):
            p.add_(0.5 * g / norm)
    there = grads()
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    trainer._sharpness_correction(ctx, items, None)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    loss, _ = trainer.unlearner.loss(ctx, items, None, trainer.config, None)
    loss.backward()
    # the trainer's ε is rounded otherwise than the one above, which moves every entry of a
    # gradient by up to ~3e-6 of the tensor's largest: compared at that scale, not entry by entry
    def gap(a, b):
        return float((a - b).abs().max() / b.abs().max())

    assert max(gap(g0, g1) for g0, g1 in zip(here, there)) > 1e-2  # ε moved the gradient, far beyond the tolerance
    for p, g1 in zip(params, there):
        assert gap(p.grad, g1) < 1e-5
    trainer.restore()


def test_sharpness_aware_forget_runs_and_unloads_exactly(tiny, monkeypatch):
    """sam_rho > 0: every micro-step takes SAM's correction, the training goes elsewhere than
    without it, and unloading gives the model back bit for bit."""
    from llm_edit.unlearning.trainer import Trainer

    model, tok = tiny("llama")
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    plain = forget(model, tok, FACTS, method="npo", steps=2, stop_forget_prob=None, progress=False)
    plain.unload()
    calls = []
    original = Trainer._sharpness_correction
    monkeypatch.setattr(Trainer, "_sharpness_correction", lambda self, *a: (calls.append(1), original(self, *a))[1])
    result = forget(model, tok, FACTS, method="npo", steps=2, stop_forget_prob=None, sam_rho=0.05, progress=False)
    assert result.manifest["hyperparameters"]["sam_rho"] == 0.05
    log, accum = result.manifest["log"], result.manifest["hyperparameters"]["grad_accum"]
    assert len(calls) == len(log) * accum == 2 * accum
    assert log[0]["tokens"] == plain.manifest["log"][0]["tokens"]  # SAM's extra passes are not training tokens
    assert log[-1]["loss"] != plain.manifest["log"][-1]["loss"]  # the first step went elsewhere
    result.unload()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="sam_rho"):
        forget(model, tok, FACTS, method="npo", steps=1, sam_rho=-1.0, progress=False)
