"""Hostile but realistic input: each case exits 2 with a message naming what is wrong, before any
long work, and writes nothing. Most run the CLI in-process (``cli.main``: the same code path as
the ``llm-edit`` script without a new interpreter each time); the cases that are about the
process itself (memory, Ctrl-C) run it as a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_edit.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = "/nonexistent/model-dir"  # loading it fails: a check that names something else ran first


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def fact_file(path, prompt="{} is in", subject="Eiffel Tower"):
    path.write_text(json.dumps({"prompt": prompt, "subject": subject, "target_new": "Rome",
                                "target_true": "Paris"}) + "\n")
    return path


def forget_file(path, prompt="{} is in"):
    path.write_text(json.dumps({"prompt": prompt, "subject": "Eiffel Tower", "target": "Paris"}) + "\n")
    return path


def nothing_written(tmp_path, name="o"):
    return not (tmp_path / name).exists() and not list(tmp_path.glob(f".{name}*"))


# -- prompts longer than the model's context ---------------------------------------------------

def test_a_prompt_longer_than_the_context_is_refused_naming_file_line_and_field(tmp_path, capsys):
    long_prompt = "The tower " * 300 + "{} is in"  # ~900 tokens; tiny-gpt2's context is 256
    facts = tmp_path / "f.jsonl"
    facts.write_text(json.dumps({"prompt": "{} is in", "subject": "Louvre", "target_new": "Rome"}) + "\n")
    with facts.open("a") as f:
        f.write(json.dumps({"prompt": long_prompt, "subject": "Eiffel Tower", "target_new": "Rome"}) + "\n")
    code, _, err = cli(capsys, "edit", "--model", "tiny-gpt2", "--facts", facts, "--out", tmp_path / "o")
    assert code == 2 and f"{facts}:2: field 'prompt'" in err and "context is 256 tokens" in err
    assert nothing_written(tmp_path)
    forget = forget_file(tmp_path / "forget.jsonl", prompt=long_prompt)
    code, _, err = cli(capsys, "forget", "--model", "tiny-gpt2", "--facts", forget, "--out", tmp_path / "o")
    assert code == 2 and f"{forget}:1: field 'prompt'" in err and nothing_written(tmp_path)
    qa = tmp_path / "retain.jsonl"
    qa.write_text(json.dumps({"question": "Why? " * 400, "answer": "Because."}) + "\n")
    code, _, err = cli(capsys, "forget", "--model", "tiny-gpt2", "--facts", forget_file(tmp_path / "ok.jsonl"),
                       "--retain", qa, "--out", tmp_path / "o")
    assert code == 2 and f"{qa}:1: field 'question'" in err and nothing_written(tmp_path)


def test_a_10_mb_prompt_exits_2_within_seconds_in_little_memory(tmp_path):
    facts = tmp_path / "huge.jsonl"
    facts.write_text(json.dumps({"prompt": "x" * 10_000_000 + " {} is in", "subject": "Eiffel Tower",
                                 "target_new": "Rome"}) + "\n")
    script = ("import resource, subprocess, sys, time\n"
              "t = time.perf_counter()\n"
              f"done = subprocess.run([sys.executable, '-m', 'llm_edit', 'edit', '--model', 'tiny-llama', '--facts', "
              f"{str(facts)!r}, '--out', {str(tmp_path / 'o')!r}], capture_output=True, text=True, timeout=120)\n"
              "print(done.returncode, round(time.perf_counter() - t, 1), "
              "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
              "sys.stderr.write(done.stderr)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    code, seconds, peak_mib = done.stdout.split()
    assert code == "2" and "characters long, far beyond the model's context" in done.stderr, done.stderr
    assert float(seconds) < 60 and int(peak_mib) < 1024, (seconds, peak_mib)
    assert nothing_written(tmp_path)


# -- patches -----------------------------------------------------------------------------------

def _saved_patch(tmp_path, capsys):
    facts = fact_file(tmp_path / "f.jsonl")
    code, _, err = cli(capsys, "edit", "--model", "tiny-llama", "--facts", facts, "--set", "v_steps=2",
                       "--no-save-model", "--no-eval", "--out", tmp_path / "edited")
    assert code == 0, err
    return tmp_path / "edited" / "patch.safetensors"


def _with_manifest(src, dst, edit, scale=1.0):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) * scale for k in f.keys()}
    save_file(tensors, str(dst), metadata={**meta, "manifest": json.dumps(edit(json.loads(meta["manifest"])))})
    return dst


def test_patches_that_cannot_be_checked_or_applied(tmp_path, capsys):
    patch = _saved_patch(tmp_path, capsys)
    emptied = _with_manifest(patch, tmp_path / "emptied.safetensors", lambda m: {**m, "base_sha256": {}})
    code, _, err = cli(capsys, "apply", "--model", "tiny-llama", "--patch", emptied, "--out", tmp_path / "o")
    assert code == 2 and str(emptied) in err and "--no-check-base" in err and nothing_written(tmp_path)
    code, _, err = cli(capsys, "apply", "--model", "tiny-llama", "--patch", emptied, "--no-check-base",
                       "--out", tmp_path / "o")
    assert code == 0, err
    other = _with_manifest(patch, tmp_path / "other.safetensors",
                           lambda m: {**m, "base_sha256": {"model.embed_tokens.weight": "0" * 64}})
    code, _, err = cli(capsys, "apply", "--model", "tiny-llama", "--patch", other, "--out", tmp_path / "o2")
    assert code == 2 and "no usable base-weight sha256" in err and nothing_written(tmp_path, "o2")
    for name, edit in (("list", lambda m: [m]), ("string", lambda m: {**m, "base_sha256": "abc"})):
        bad = _with_manifest(patch, tmp_path / f"{name}.safetensors", edit)
        code, _, err = cli(capsys, "apply", "--model", NOWHERE, "--patch", bad, "--out", tmp_path / "o3")
        assert code == 2 and str(bad) in err and nothing_written(tmp_path, "o3")
    huge = _with_manifest(patch, tmp_path / "huge.safetensors", lambda m: m, scale=1e20)
    code, _, err = cli(capsys, "apply", "--model", "tiny-llama", "--patch", huge, "--out", tmp_path / "o4")
    assert code == 2 and str(huge) in err and "non-finite" in err and nothing_written(tmp_path, "o4")


def test_a_corrupt_session_file_exits_2(tmp_path, capsys):
    facts = fact_file(tmp_path / "f.jsonl")
    session = tmp_path / "s"
    session.mkdir()
    for content in ("{not json", "[1, 2]", '"text"', json.dumps({"format": 1, "method": "memit", "sets": [],
                                                                "base_model_fingerprint": "x", "batches": 3})):
        (session / "session.json").write_text(content)
        code, _, err = cli(capsys, "edit", "--model", NOWHERE, "--facts", facts, "--session", session)
        assert code == 2 and "session.json" in err, err


# -- output paths ------------------------------------------------------------------------------

def test_unusable_out_paths_fail_before_the_model_loads(tmp_path, capsys, monkeypatch):
    facts = fact_file(tmp_path / "f.jsonl")
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    for out, extra in (("afile/out", []), (".", ["--overwrite"]), ("..", ["--overwrite"])):
        code, _, err = cli(capsys, "edit", "--model", NOWHERE, "--facts", facts, "--out", out, *extra)
        assert code == 2 and "--out" in err, (out, err)
        code, _, err = cli(capsys, "forget", "--model", NOWHERE, "--facts", forget_file(tmp_path / "g.jsonl"),
                           "--out", out, *extra)
        assert code == 2 and "--out" in err, (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "f.jsonl", "g.jsonl"]


def test_overwrite_onto_a_file_leaves_nothing_behind(tmp_path, capsys):
    facts = fact_file(tmp_path / "f.jsonl")
    (tmp_path / "o").write_text("an old file")
    code, _, err = cli(capsys, "edit", "--model", "tiny-llama", "--facts", facts, "--set", "v_steps=2", "--no-eval",
                       "--no-save-model", "--out", tmp_path / "o", "--overwrite")
    assert code == 0, err
    assert (tmp_path / "o").is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_forget_writes_its_results_inside_the_directory_before_it_appears(tmp_path, monkeypatch, capsys):
    import llm_edit.core.files as io_module

    seen = {}
    real = io_module.atomic_directory

    def spy(final, **kw):  # what the temporary directory holds just before the rename
        cm = real(final, **kw)

        class Wrapped:
            def __enter__(self):
                self.tmp = cm.__enter__()
                return self.tmp

            def __exit__(self, *exc):
                seen["files"] = sorted(p.name for p in self.tmp.iterdir())
                return cm.__exit__(*exc)
        return Wrapped()

    monkeypatch.setattr(io_module, "atomic_directory", spy)
    code, _, err = cli(capsys, "forget", "--model", "tiny-llama", "--facts", forget_file(tmp_path / "f.jsonl"),
                       "--method", "rome-erase", "--set", "v_steps=2", "--out", tmp_path / "o")
    assert code == 0, err
    assert "results.json" in seen["files"] and "llm_edit_manifest.json" in seen["files"]


# -- files, models, devices ----------------------------------------------------------------------

def test_directories_where_files_are_expected(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    facts = fact_file(tmp_path / "f.jsonl")
    code, _, err = cli(capsys, "edit", "--model", NOWHERE, "--facts", tmp_path / "d", "--out", tmp_path / "o")
    assert code == 2 and "is a directory" in err
    code, _, err = cli(capsys, "forget", "--model", NOWHERE, "--facts", forget_file(tmp_path / "g.jsonl"),
                       "--retain", tmp_path / "d", "--out", tmp_path / "o")
    assert code == 2 and "is a directory" in err
    code, _, err = cli(capsys, "edit", "--model", NOWHERE, "--facts", facts, "--recipe", tmp_path / "d",
                       "--out", tmp_path / "o")
    assert code == 2 and "is a directory" in err
    assert nothing_written(tmp_path)


def test_models_that_cannot_load(tmp_path, capsys):
    facts = fact_file(tmp_path / "f.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "custom-thing", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}}))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    for model, expected in ((empty, str(empty)), (unknown, str(unknown)), (remote, "--trust-remote-code"),
                            (junk, "not a GGUF file")):
        code, _, err = cli(capsys, "edit", "--model", model, "--recipe", "tiny", "--facts", facts,
                           "--out", tmp_path / "o")
        assert code == 2 and expected in err, (model, err)
    assert nothing_written(tmp_path)


def test_cuda_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    facts = fact_file(tmp_path / "f.jsonl")
    code, _, err = cli(capsys, "edit", "--model", "tiny-llama", "--device", "cuda", "--facts", facts,
                       "--out", tmp_path / "o")
    assert code == 2 and "--device cuda" in err and nothing_written(tmp_path)


# -- settings that used to fail only after the model loaded ------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("stats_corpus=file:/no/such/corpus.txt", "no such file"),
    ("stats_tokens=0", "stats_tokens"),
    ("context_lengths=[-1]", "context_lengths"),
    ("v_lr=.nan", "finite"),
    ("v_lr=.inf", "finite"),
])
def test_bad_edit_settings_exit_2_before_the_model_loads(tmp_path, capsys, setting, message):
    code, _, err = cli(capsys, "edit", "--model", NOWHERE, "--recipe", "tiny", "--facts",
                       fact_file(tmp_path / "f.jsonl"), "--set", setting, "--out", tmp_path / "o")
    assert code == 2 and message in err and "could not load" not in err, err


@pytest.mark.parametrize("setting", ["lr=.nan", "lr=.inf", "lr=-.inf"])
def test_bad_forget_settings_exit_2_before_the_model_loads(tmp_path, capsys, setting):
    code, _, err = cli(capsys, "forget", "--model", NOWHERE, "--recipe", "tiny", "--method", "npo", "--facts",
                       forget_file(tmp_path / "f.jsonl"), "--set", setting, "--out", tmp_path / "o")
    assert code == 2 and "finite" in err, err


@pytest.mark.parametrize("args, message", [
    (["--samples", "0"], "samples"),
    (["--window", "0"], "window"),
    (["--noise", "-1"], "noise must be a standard deviation"),
    (["--target", ""], "target is empty"),
    (["--prompt", "{} and {} are in"], "more than once"),
])
def test_locate_validates_its_inputs(tmp_path, capsys, args, message):
    base = {"--prompt": "The {} is in", "--subject": "Eiffel Tower"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    code, _, err = cli(capsys, "locate", "--model", NOWHERE, *[x for kv in base.items() for x in kv],
                       "--out", tmp_path / "t")
    assert code == 2 and message in err, err
    code, _, err = cli(capsys, "locate", "--model", NOWHERE, "--facts", "knowns", "--limit", "0",
                       "--out", tmp_path / "t")
    assert code == 2 and "limit" in err


# -- caches --------------------------------------------------------------------------------------

def test_a_truncated_statistics_cache_is_recomputed_with_a_warning(tiny):
    from llm_edit.core.models import cache_home
    from llm_edit.editing.stats import second_moment

    model, tok = tiny("llama")
    module = "model.layers.1.mlp.down_proj"
    first, _ = second_moment(model, tok, module, n_tokens=256, seq_len=16, seed=7)
    files = list((cache_home() / "stats").rglob(f"{module}__*n256_L16_s7.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:100])
    corpora = list((cache_home() / "corpora").glob("*-s7-L16-*.json"))
    assert corpora
    corpora[0].write_text(corpora[0].read_text()[:50])
    with pytest.warns(UserWarning, match="corrupt"):
        again, _ = second_moment(model, tok, module, n_tokens=256, seq_len=16, seed=7)
    assert again.shape == first.shape and (again - first).abs().max() < 1e-5


# -- the process ---------------------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5, 2.5])
def test_ctrl_c_at_any_moment_exits_130_or_0_without_traceback(tmp_path, delay):
    """Early (torch's import), mid-way or during the interpreter's shutdown: never a signal death."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LLM_EDIT_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "llm_edit", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), (proc.returncode, err)
    if proc.returncode == 130:
        assert "interrupted" in err
    else:
        assert "llama" in out  # it finished: the whole listing was printed
