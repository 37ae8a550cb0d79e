"""The command line, run as a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env_home, cwd=None):
    env = dict(os.environ, LLM_EDIT_HOME=str(env_home), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "llm_edit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=600)


@pytest.fixture
def facts(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps({"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome",
                                "target_true": "Paris", "paraphrase_prompts": ["Eiffel Tower lies in"],
                                "neighborhood": [{"prompt": "Louvre is in", "target": "Paris"}]}) + "\n")
    return path


def test_edit_writes_a_plain_hugging_face_model_patch_and_results(tmp_path, facts):
    out = tmp_path / "edited"
    done = run("edit", "--model", "tiny-llama", "--facts", str(facts), "--out", str(out),
               "--set", "v_steps=10", env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert {"model.safetensors", "config.json", "patch.safetensors", "llm_edit_manifest.json",
            "results.csv", "answers.csv", "metrics.json"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "llm_edit_manifest.json").read_text())
    assert manifest["hyperparameters"]["v_steps"] == 10 and manifest["facts"][0]["target_new"] == "Rome"
    assert "efficacy" in done.stdout
    # generation scores are written even where none applies (the random model answered no form
    # with the old object before, so they count 0 answers and the console leaves them out)
    assert json.loads((out / "metrics.json").read_text())["after"]["gen_in_context_n"] == 0
    # loadable by transformers alone, and it carries the edit
    check = ("import sys, torch; sys.modules['llm_edit'] = None\n"
             "from transformers import AutoModelForCausalLM\n"
             f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
             "print(type(m).__name__)")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "LlamaForCausalLM" in loaded.stdout
    # the patch re-applies to the base model through `llm-edit apply`
    again = run("apply", "--model", "tiny-llama", "--patch", str(out / "patch.safetensors"), "--out",
                str(tmp_path / "again"), env_home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    import torch

    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_fact_file_exits_2_naming_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome"}\n'
                   '{"prompt": "The Louvre is in", "subject": "Eiffel Tower", "target_new": "Rome"}\n')
    out = tmp_path / "out"
    done = run("edit", "--model", "tiny-llama", "--facts", str(bad), "--out", str(out), env_home=tmp_path)
    assert done.returncode == 2
    assert f"{bad}:2: field 'subject'" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bad_recipe_key_exits_2_before_loading(tmp_path, facts):
    done = run("edit", "--model", "tiny-llama", "--facts", str(facts), "--out", str(tmp_path / "o"),
               "--set", "layr=1", env_home=tmp_path)
    assert done.returncode == 2 and "unknown key 'layr'" in done.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_is_not_overwritten(tmp_path, facts):
    (tmp_path / "o").mkdir()
    done = run("edit", "--model", "tiny-llama", "--facts", str(facts), "--out", str(tmp_path / "o"),
               env_home=tmp_path)
    assert done.returncode == 2 and "--overwrite" in done.stderr


def test_corrupt_patch_exits_2(tmp_path):
    bad = tmp_path / "p.safetensors"
    bad.write_bytes(b"garbage")
    done = run("apply", "--model", "tiny-llama", "--patch", str(bad), "--out", str(tmp_path / "o"),
               env_home=tmp_path)
    assert done.returncode == 2 and str(bad) in done.stderr and not (tmp_path / "o").exists()


def test_unknown_model_exits_2(tmp_path, facts):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    done = run("edit", "--model", str(notes), "--facts", str(facts), "--out", str(tmp_path / "o"),
               env_home=tmp_path)
    assert done.returncode == 2 and "no recipe for this model: pass --recipe" in done.stderr
    done = run("edit", "--model", str(notes), "--facts", str(facts), "--out", str(tmp_path / "o"),
               "--recipe", "tiny", env_home=tmp_path)
    assert done.returncode == 2 and "expected a model directory" in done.stderr


def test_models_lists_aliases(tmp_path):
    done = run("models", env_home=tmp_path)
    assert done.returncode == 0
    assert "llama" in done.stdout and "tiny-gpt2" in done.stdout and "not cached" in done.stdout


def test_forget_writes_merged_model_adapter_manifest_and_table(tmp_path):
    facts = tmp_path / "forget.jsonl"
    facts.write_text(json.dumps({"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"}) + "\n" +
                     json.dumps({"question": "Who wrote Hamlet?", "answer": "Shakespeare."}) + "\n")
    out = tmp_path / "forgotten"
    done = run("forget", "--model", "tiny-llama", "--facts", str(facts), "--method", "npo", "--set", "steps=3",
               "--out", str(out), env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert {"model.safetensors", "config.json", "adapter", "llm_edit_manifest.json", "results.json"} <= {
        p.name for p in out.iterdir()}
    manifest = json.loads((out / "llm_edit_manifest.json").read_text())
    assert manifest["method"] == "npo" and manifest["training"]["steps"] == 3
    assert manifest["retain_source"].startswith("model-samples") and manifest["forget_sha256"]
    rows = json.loads((out / "results.json").read_text())
    # the forget items, then known facts that share the Eiffel Tower's object (Paris), picked from the shipped list
    assert [r["role"] for r in rows] == ["forget", "forget", "neighbour", "neighbour"]
    assert all(r["p_after"] < r["p_before"] for r in rows if r["role"] == "forget")
    assert all(r["answer"] == "Paris" and r["status"] in ("kept", "LOST", "not known before")
               for r in rows if r["role"] == "neighbour")
    assert set(manifest["eval"]) == {"forget", "neighbour"} and "known_before" in manifest["eval"]["forget"]
    assert "P before" in done.stdout and "Eiffel Tower is in" in done.stdout and "neighbour facts" in done.stdout


def test_forget_warns_when_questions_come_without_a_retain_set(tmp_path):
    """On TOFU, forgetting two authors without the others as --retain took their answers from
    0.55 to 0.075: the command says so before it trains."""
    qa = tmp_path / "forget.jsonl"
    qa.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "Shakespeare."}) + "\n")
    done = run("forget", "--model", "tiny-llama", "--facts", str(qa), "--set", "steps=1", "--no-eval",
               "--out", str(tmp_path / "o"), env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "method npo" in done.stderr and "without --retain" in done.stderr
    kept = tmp_path / "keep.jsonl"
    kept.write_text(json.dumps({"question": "Who painted the Mona Lisa?", "answer": "Leonardo."}) + "\n")
    done = run("forget", "--model", "tiny-llama", "--facts", str(qa), "--retain", str(kept), "--set", "steps=1",
               "--no-eval", "--out", str(tmp_path / "o2"), env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "without --retain" not in done.stderr


def test_forget_holdout_is_checked_before_training_and_recorded(tmp_path):
    qa = tmp_path / "forget.jsonl"
    qa.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "Shakespeare."}) + "\n")
    bad = tmp_path / "holdout.jsonl"
    bad.write_text(json.dumps({"question": "Who painted it?", "answer": "Leonardo."}) + "\n" + '{"question": "q?"}\n')
    done = run("forget", "--model", "tiny-llama", "--facts", str(qa), "--holdout", str(bad), "--no-eval",
               "--out", str(tmp_path / "o"), env_home=tmp_path / "home")
    assert done.returncode == 2 and f"{bad}:2" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
    bad.write_text(json.dumps({"question": "Who painted it?", "answer": "Leonardo."}) + "\n")
    done = run("forget", "--model", "tiny-llama", "--facts", str(qa), "--holdout", str(bad), "--set",
               "stop_forget_prob=0.1", "--no-eval", "--out", str(tmp_path / "o"), env_home=tmp_path / "home")
    assert done.returncode == 2 and "do not --set it as well" in done.stderr
    done = run("forget", "--model", "tiny-llama", "--facts", str(qa), "--holdout", str(bad), "--set", "steps=1",
               "--no-eval", "--out", str(tmp_path / "o"), env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "o" / "llm_edit_manifest.json").read_text())
    assert manifest["holdout"]["items"] == 1 and manifest["holdout"]["source"] == str(bad)
    assert manifest["hyperparameters"]["stop_forget_prob"] == manifest["holdout"]["stop_forget_prob"]


def test_forget_bad_item_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "forget.jsonl"
    bad.write_text('{"question": "q?", "answer": "a"}\n{"prompt": "Paris is nice", "subject": "Louvre", "target": "x"}\n')
    out = tmp_path / "o"
    done = run("forget", "--model", "tiny-llama", "--facts", str(bad), "--out", str(out), env_home=tmp_path)
    assert done.returncode == 2 and f"{bad}:2: field 'subject'" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".o*"))
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "q?", "answer": "a"}\n')
    done = run("forget", "--model", "tiny-llama", "--facts", str(good), "--out", str(out), "--method", "rmu",
               "--set", "layer=99", env_home=tmp_path)
    assert done.returncode == 2 and "layer 99 does not exist" in done.stderr and not out.exists()


def test_locate_writes_trace_and_heat_maps(tmp_path):
    out = tmp_path / "trace"
    done = run("locate", "--model", "tiny-llama", "--prompt", "The {} is located in", "--subject", "Eiffel Tower",
               "--kinds", "hidden,mlp", "--samples", "2", "--window", "2", "--noise", "0.5", "--out", str(out),
               env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert {"trace.json", "trace_hidden.png", "trace_mlp.png"} == {p.name for p in out.iterdir()}
    trace = json.loads((out / "trace.json").read_text())
    assert set(trace["scores"]) == {"hidden", "mlp"} and trace["manifest"]["samples"] == 2
    assert "strongest" in done.stdout


def test_locate_bad_input_exits_2(tmp_path):
    out = tmp_path / "t"
    done = run("locate", "--model", "tiny-llama", "--prompt", "The Louvre is in", "--subject", "Eiffel Tower",
               "--noise", "0.5", "--out", str(out), env_home=tmp_path)
    assert done.returncode == 2 and "does not occur" in done.stderr and not out.exists()
    done = run("locate", "--model", "tiny-llama", "--prompt", "The {} is in", "--subject", "X", "--kinds", "mlp,foo",
               "--out", str(out), env_home=tmp_path)
    assert done.returncode == 2 and "foo" in done.stderr and not out.exists()


def test_forget_by_erasure_writes_a_patch(tmp_path):
    facts = tmp_path / "forget.jsonl"
    facts.write_text(json.dumps({"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"}) + "\n")
    out = tmp_path / "erased"
    done = run("forget", "--model", "tiny-llama", "--facts", str(facts), "--method", "rome-erase", "--out", str(out),
               env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert {"model.safetensors", "patch.safetensors", "llm_edit_manifest.json", "results.json"} <= {
        p.name for p in out.iterdir()}
    manifest = json.loads((out / "llm_edit_manifest.json").read_text())
    assert manifest["method"] == "rome-erase" and manifest["layer"] == 1
    assert "erased by rank-one edits" in done.stdout
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Who?", "answer": "Me."}) + "\n")
    done = run("forget", "--model", "tiny-llama", "--facts", str(qa), "--method", "rome-erase",
               "--out", str(tmp_path / "x"), env_home=tmp_path / "home")
    assert done.returncode == 2 and "needs facts" in done.stderr and not (tmp_path / "x").exists()


def test_edit_memit_with_layers_flag(tmp_path, facts):
    out = tmp_path / "m"
    done = run("edit", "--model", "tiny-llama", "--facts", str(facts), "--method", "memit", "--layers", "[2, 3]",
               "--set", "v_steps=3", "--no-save-model", "--out", str(out), env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "llm_edit_manifest.json").read_text())
    assert manifest["layer"] == [2, 3] and manifest["hyperparameters"]["layers"] == [2, 3]
    done = run("edit", "--model", "tiny-llama", "--facts", str(facts), "--method", "memit", "--layers", "two",
               "--out", str(tmp_path / "n"), env_home=tmp_path / "home")
    assert done.returncode == 2 and "layers" in done.stderr and not (tmp_path / "n").exists()


def test_ls_lists_every_registry(tmp_path):
    done = run("ls", "methods", env_home=tmp_path)
    assert done.returncode == 0
    for name in ("rome", "memit", "alphaedit", "rome-erase", "memit-erase", "npo", "simnpo", "grad_diff", "rmu"):
        assert f"\n{name} " in "\n" + done.stdout, name
    assert "rome " in run("ls", "recipes", env_home=tmp_path).stdout
    assert "tiny-gpt2" in run("ls", "models", env_home=tmp_path).stdout
    assert "counterfact" in run("ls", "suites", env_home=tmp_path).stdout
    assert run("ls", "nothing", env_home=tmp_path).returncode == 2  # argparse's own exit status for a bad choice


def test_validate_checks_recipes_as_a_run_would(tmp_path):
    done = run("validate", "--all", env_home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("valid") == len(list((ROOT / "recipes").glob("*/*.yaml")))
    bad = tmp_path / "rome" / "mine.yaml"
    bad.parent.mkdir()
    bad.write_text("layer: 4\nv_lr: .nan\n")
    done = run("validate", str(bad), env_home=tmp_path)
    assert done.returncode == 2 and "v_lr" in done.stderr and "finite" in done.stderr
    done = run("validate", "rome/tiny", "--method", "memit", env_home=tmp_path)
    assert done.returncode == 2 and "unknown key 'layer'" in done.stderr and "did you mean 'layers'" in done.stderr
