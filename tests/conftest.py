import os
import tempfile

import pytest
import torch

# Tiny models run fastest on one thread (two OpenMP threads spend more time waking each other
# than multiplying 64x128 matrices); the cache goes to a per-session folder.
torch.set_num_threads(1)
if "LLM_EDIT_HOME" not in os.environ:  # a home of our own, removed when the session ends (CI sets its own)
    import atexit
    import shutil

    _HOME = tempfile.mkdtemp(prefix="llm_edit_test_home_")
    os.environ["LLM_EDIT_HOME"] = _HOME
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

# The architecture sets tests run on, in one place, each with why it is what it is.
# Every row of the architecture table has a tiny random model (test_arch checks the lists agree);
# tests of what every architecture must do (the table resolves, ROME and AlphaEdit edit and
# revert exactly, scoring matches a plain forward) run on all of them.
TINY_TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "olmo", "gpt2", "gpt_neox", "gptj"]
# Tests that train, trace or generate at length run on one model of each module layout the table
# distinguishes: Llama-like blocks (the other Llama-like rows differ in config details these
# tests do not reach), GPT-2's transposed Conv1D, GPT-NeoX's fused attention, and Gemma 3's
# multimodal wrapper (the decoder one level down, beside a vision tower). All rows would
# triple their time.
LAYOUTS = ["llama", "gpt2", "gpt_neox", "gemma3"]
# Closed-form identities of one computation (a rank-one solve, batched against lone generation):
# a Llama-like and a Conv1D model, the two ways weights are stored.
STORAGE = ["llama", "gpt2"]
# The key/value and scoring fast paths also take Gemma: it scales embeddings by sqrt(d), so a
# cache or prefix built without the model's own embedding call would differ there first; and
# Gemma 3, whose sliding-window layers (window 16 in the tiny model) keep a cache of another kind.
FAST_PATHS = ["llama", "gpt2", "gemma", "gpt_neox", "gemma3_text"]
# AlphaEdit raises all three of its test targets on these random models. On the random weights of
# mistral, qwen3, gemma2 and olmo the null-space-projected update moves some target's probability
# by less than 1e-3 either way (measured), which says nothing about trained models; there the
# test checks that the edit runs and reverts bit for bit.
ALPHAEDIT_RAISES = ["llama", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "gptj"]


@pytest.fixture
def tiny():
    from llm_edit import load_model

    def build(model_type="llama"):
        return load_model(f"tiny-{model_type}", device="cpu")

    return build


@pytest.fixture
def eiffel():
    return {"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris",
            "paraphrase_prompts": ["Eiffel Tower lies in"],
            "neighborhood": [{"prompt": "Louvre is in", "target": "Paris"}]}


def run_eval(script: str, *args, home):
    """An evals/ script as a subprocess on the tiny Llama, with a short value optimisation and
    small key statistics (the settings the benchmark tests share)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, LLM_EDIT_HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    return subprocess.run([sys.executable, str(root / "evals" / script), "--model", "tiny-llama",
                           "--set", "v_steps=3", "--set", "stats_tokens=2000", *args],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)


def eval_script(name: str):
    """An evals/ script imported as a module (``eval_script("tune_split")``), to test its functions."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "evals" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def write_city_facts(path, subjects=("Eiffel Tower", "Louvre", "Colosseum", "Big Ben")):
    """A fact file moving each landmark to Rome, with a paraphrase and a neighbourhood prompt."""
    import json

    path.write_text("".join(json.dumps({"prompt": "{} is in", "subject": s, "target_new": "Rome", "target_true": "Paris",
                                        "paraphrase_prompts": [f"{s} lies in"],
                                        "neighborhood": [{"prompt": "Notre Dame is in", "target": "Paris"}]}) + "\n"
                        for s in subjects))
    return path


def script_greedy_decoding(monkeypatch, script_for):
    """Replace the greedy decoding loop with scripted tokens: each prompt's row receives
    ``script_for(prompt)`` one token at a time until ``generate``'s own ``ended`` holds, as the real
    loop would. Returns the list of tokens each row consumed, in the order the rows ran."""
    from llm_edit.core import scoring

    consumed = []

    def scripted(model, prompts, pad, max_new_tokens, ended):
        rows = []
        for p in prompts:
            row = []
            for t in script_for(p):
                row.append(t)
                if ended(row):
                    break
            consumed.append(len(row))
            rows.append(row)
        return rows

    monkeypatch.setattr(scoring, "_greedy_batch", scripted)
    return consumed
