"""TOFU: which rows play which role, the evaluation suite on a tiny model, the retain reference,
and the whole protocol and ``llm-edit eval`` from the command line (a slice of TOFU ships in
tests/fixtures/tofu_mini)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_edit.evaluating.tofu import EvalSettings, TofuDataError, attach_reference, evaluate_tofu, make_task, read_reference

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "fixtures" / "tofu_mini"
SETTINGS = EvalSettings(max_new_tokens=8)


@pytest.fixture
def task():
    return make_task("forget10", authors=2, data=MINI, eval_limit=4)


def test_cpu_sized_task_roles(task):
    full = json.loads((MINI / "full.json").read_text())
    assert task.train == full[:40]
    assert task.retain_train == full[:20] and task.forget_train == full[20:40]  # forget = the last author
    assert [r["question"] for r in task.forget_eval] == [r["question"] for r in full[20:40]]
    assert all(len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] for r in task.forget_eval)
    assert len(task.holdout) == 20 and not {r["question"] for r in task.holdout} & {r["question"] for r in full}
    assert len(task.retain_eval) == len(task.real_authors) == len(task.world_facts) == 4
    assert task.describe()["rows"]["forget_train"] == 20


def test_forget_authors_sets_the_forget_share():
    task = make_task("forget10", authors=2, data=MINI, forget_authors=1)
    assert len(task.forget_train) == 20 and len(task.retain_train) == 20
    with pytest.raises(ValueError, match="--forget-authors"):
        make_task("forget10", authors=2, data=MINI, forget_authors=2)  # nothing left to retain


def test_forget_block_forgets_earlier_authors_on_the_same_fine_tuned_model(task):
    full = json.loads((MINI / "full.json").read_text())
    earlier = make_task("forget10", authors=2, data=MINI, eval_limit=4, forget_authors=1, forget_block=1)
    assert earlier.train == task.train  # the same fine-tuned model serves both forget sets
    assert earlier.forget_train == full[:20] and earlier.retain_train == full[20:40]
    assert [r["question"] for r in earlier.forget_eval] == [r["question"] for r in full[:20]]
    assert [r["question"] for r in earlier.retain_eval] == [r["question"] for r in full[20:24]]
    assert earlier.key() != task.key()
    # block 0 is the task as it was before blocks (its description is part of every cached evaluation's key)
    assert make_task("forget10", authors=2, data=MINI, eval_limit=4, forget_block=0).describe() == task.describe()
    assert "the last 1 author(s)" in task.notes[0]
    with pytest.raises(ValueError, match="--forget-block must be between 0 and 1"):
        make_task("forget10", authors=2, data=MINI, forget_authors=1, forget_block=2)


def test_fine_tuned_models_keep_their_cache_key_when_a_defaulted_key_is_added():
    import dataclasses

    from llm_edit.evaluating.tofu_protocol import finetune_key
    from llm_edit.unlearning.finetune import FinetuneConfig

    @dataclasses.dataclass
    class Later(FinetuneConfig):
        a_key_added_later: bool = False

    rows = [{"question": "q", "answer": "a"}]
    assert finetune_key("fp", rows, Later()) == finetune_key("fp", rows, FinetuneConfig())
    assert finetune_key("fp", rows, Later(a_key_added_later=True)) != finetune_key("fp", rows, FinetuneConfig())
    assert finetune_key("fp", rows, FinetuneConfig(lr=2e-4)) != finetune_key("fp", rows, FinetuneConfig())
    assert finetune_key("fp2", rows, FinetuneConfig()) != finetune_key("fp", rows, FinetuneConfig())


def test_task_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown TOFU split"):
        make_task("forget11", authors=2, data=MINI)
    with pytest.raises(ValueError, match="between 2 and 20"):
        make_task("forget10", authors=30, data=MINI)
    with pytest.raises(TofuDataError, match="no such TOFU file"):
        make_task("forget10", authors=2, data=tmp_path)


def test_evaluation_report(tiny, task):
    model, tok = tiny("llama")
    report = evaluate_tofu(model, tok, task, SETTINGS, progress=False, use_cache=False)
    agg = report["aggregates"]
    for key in ("forget_probability", "forget_rouge", "forget_truth_ratio", "model_utility", "extraction_strength",
                "exact_memorisation", "retain_truth_ratio", "real_authors_probability", "world_facts_rouge"):
        assert agg[key] is not None, key
    assert set(agg["mia_auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    # no retain reference: an explicit, explained state, not a silent None
    assert agg["forget_quality"]["value"] is None and "no retain reference" in agg["forget_quality"]["status"]
    forget = report["items"]["forget"]
    assert len(forget) == 20 and all({"truth_ratio", "generated", "mia", "probability"} <= set(r) for r in forget)
    assert 0 < agg["forget_truth_ratio"] <= 1
    # the nine utility numbers and their harmonic mean
    nine = [agg[f"{s}_{m}"] for s in ("retain", "real_authors", "world_facts") for m in ("probability", "rouge", "truth_ratio")]
    if min(nine) > 0:
        assert agg["model_utility"] == pytest.approx(9 / sum(1 / v for v in nine))
    else:
        assert agg["model_utility"] == 0
    # compared with itself, forget quality is 1 and PrivLeak 0
    attach_reference(report, json.loads(json.dumps(report)), "itself")
    assert report["aggregates"]["forget_quality"]["value"] == pytest.approx(1.0)
    assert report["aggregates"]["privleak"]["value"] == pytest.approx(0.0)


def test_privleak_is_reported_on_min_k_and_min_k_plus_plus():
    # hand-made reports: only what attach_reference reads
    def report(aucs, ratios):
        return {"task": {"sha256": {"forget_eval": "same"}}, "items": {"forget": [{"truth_ratio": r} for r in ratios]},
                "aggregates": {"forget_truth_ratio": 0.5, "mia_auc": aucs}}
    mine = report({"loss": 0.8, "zlib": 0.75, "min_k": 0.9, "min_k_plus_plus": 0.7}, [0.5, 0.6])
    retain = report({"loss": 0.5, "zlib": 0.5, "min_k": 0.5, "min_k_plus_plus": 0.15}, [0.9, 1.1])
    pl = attach_reference(mine, retain, "retain.json")["aggregates"]["privleak"]
    assert pl["attack"] == "min_k" and pl["value"] == pytest.approx(-80.0)  # (0.1 - 0.5) / 0.5 x 100
    assert pl["min_k_plus_plus"] == pytest.approx((0.3 - 0.85) / 0.85 * 100)
    assert pl["per_attack"]["loss"] == pytest.approx(-60.0) and pl["per_attack"]["zlib"] == pytest.approx(-50.0)


def test_evaluations_are_cached_per_model_and_settings(tiny, task):
    model, tok = tiny("llama")
    first = evaluate_tofu(model, tok, task, SETTINGS, progress=False)
    again = evaluate_tofu(model, tok, task, SETTINGS, progress=False)
    assert "cached" in again and again["aggregates"]["forget_probability"] == first["aggregates"]["forget_probability"]
    other = evaluate_tofu(model, tok, task, EvalSettings(max_new_tokens=4), progress=False)
    assert "cached" not in other


def test_reference_of_another_task_is_refused(tiny, task):
    model, tok = tiny("llama")
    report = evaluate_tofu(model, tok, task, SETTINGS, progress=False)
    other = json.loads(json.dumps(report))
    other["task"]["sha256"]["forget_eval"] = "0" * 64
    with pytest.raises(ValueError, match="other forget rows"):
        attach_reference(report, other, "other.json")


def test_read_reference_names_the_file(tmp_path):
    bad = tmp_path / "ref.json"
    bad.write_text("{not json")
    with pytest.raises(Exception, match="ref.json"):
        read_reference(bad)


def run(*args, home):
    env = dict(os.environ, LLM_EDIT_HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("LLM_EDIT_TOFU_DATA", None)
    return subprocess.run([sys.executable, "-m", "llm_edit", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_tofu_protocol_from_the_command_line(tmp_path):
    """Fine-tuned, retain and unlearned rows; the retain model's forget quality against itself is 1."""
    out = tmp_path / "tofu"
    done = run("tofu", "--model", "tiny-llama", "--authors", "2", "--eval-limit", "4", "--method", "grad_diff",
               "--max-new-tokens", "8", "--tofu-data", str(MINI), "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"report.json", "report.md", "truth_ratios.png", "quality_vs_utility.png"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert set(rows) == {"finetuned", "retain", "grad_diff"}
    # unlearning stopped at the fine-tuned model's mean holdout probability (recorded)
    holdout_p = [r["probability"] for r in rows["finetuned"]["items"]["holdout"]]
    assert report["runs"]["grad_diff"]["holdout_stop"] == pytest.approx(sum(holdout_p) / len(holdout_p), rel=1e-4)
    assert report["runs"]["grad_diff"]["hyperparameters"]["stop_forget_prob"] == report["runs"]["grad_diff"]["holdout_stop"]
    assert rows["retain"]["aggregates"]["forget_quality"]["value"] == pytest.approx(1.0)
    # fine-tuning on the forget author made its answers likelier than in the retain model
    assert rows["finetuned"]["aggregates"]["forget_probability"] > 10 * rows["retain"]["aggregates"]["forget_probability"]
    assert "| grad_diff |" in (out / "report.md").read_text()
    # a second run reuses the cached fine-tuned and retain models
    again = run("tofu", "--model", "tiny-llama", "--authors", "2", "--eval-limit", "4", "--method", "npo",
                "--max-new-tokens", "8", "--tofu-data", str(MINI), "--out", str(tmp_path / "tofu2"),
                home=tmp_path / "home")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finetuned model: cached" in again.stdout and "retain model: cached" in again.stdout


def test_eval_command_with_and_without_a_retain_reference(tmp_path):
    common = ["eval", "--suite", "tofu", "--model", "tiny-llama", "--authors", "2", "--eval-limit", "4",
              "--max-new-tokens", "8", "--tofu-data", str(MINI)]
    done = run(*common, "--out", str(tmp_path / "a"), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["aggregates"]["forget_quality"]["value"] is None
    assert "n/a" in (tmp_path / "a" / "report.md").read_text()
    # the report itself as the reference: forget quality 1
    done = run(*common, "--retain-ref", str(tmp_path / "a"), "--out", str(tmp_path / "b"), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["aggregates"]["forget_quality"]["value"] == pytest.approx(1.0)
    assert (tmp_path / "b" / "truth_ratios.png").stat().st_size > 1000


def test_eval_command_bad_input_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "ref.json"
    bad.write_text("[1, 2]")
    common = ["eval", "--suite", "tofu", "--model", "tiny-llama", "--authors", "2", "--tofu-data", str(MINI)]
    done = run(*common, "--retain-ref", str(bad), "--out", str(tmp_path / "o"), home=tmp_path / "home")
    assert done.returncode == 2 and "ref.json" in done.stderr and not (tmp_path / "o").exists()
    done = run(*common[:-1], str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), home=tmp_path / "home")
    assert done.returncode == 2 and "no such TOFU file" in done.stderr and not (tmp_path / "o").exists()
    done = run(*common, "--authors", "40", "--out", str(tmp_path / "o"), home=tmp_path / "home")
    assert done.returncode == 2 and "between 2 and 20" in done.stderr


def test_counterfact_suite_from_the_command_line(tmp_path):
    facts = tmp_path / "f.jsonl"
    facts.write_text(json.dumps({"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome",
                                 "target_true": "Paris", "paraphrase_prompts": ["Eiffel Tower lies in"],
                                 "neighborhood": [{"prompt": "Louvre is in", "target": "Paris"}]}) + "\n")
    done = run("eval", "--suite", "counterfact", "--model", "tiny-llama", "--facts", str(facts),
               "--out", str(tmp_path / "cf"), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "cf" / "report.json").read_text())
    assert {"efficacy", "generalisation", "specificity", "fluency", "perplexity", "gen_chat", "gen_question",
            "gen_in_context", "portability"} <= set(report["aggregates"])
    assert report["answers"] and {"form", "answer", "holds"} <= set(report["answers"][0])
    assert 1 < report["aggregates"]["perplexity"] < float("inf")  # the collapse detector on generic text
    assert len(report["rows"]) == 3


def test_the_protocol_takes_each_models_own_tofu_recipe_where_there_is_one():
    from llm_edit.evaluating.tofu_protocol import _recipe_name

    assert _recipe_name("npo", "llama") == "tofu-smollm2-135m"
    assert _recipe_name("npo", "gemma") == "tofu-gemma3-270m"
    # no TOFU recipe of that method for that model: the model's own recipe
    assert _recipe_name("rmu", "gemma") == "gemma3-270m"
    assert _recipe_name("npo", "some/hub-model") is None
