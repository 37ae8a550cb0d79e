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

TINY_TYPES = ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "gptj"]


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


def write_city_facts(path, subjects=("Eiffel Tower", "Louvre", "Colosseum", "Big Ben")):
    """A fact file moving each landmark to Rome, with a paraphrase and a neighbourhood prompt."""
    import json

    path.write_text("".join(json.dumps({"prompt": "{} is in", "subject": s, "target_new": "Rome", "target_true": "Paris",
                                        "paraphrase_prompts": [f"{s} lies in"],
                                        "neighborhood": [{"prompt": "Notre Dame is in", "target": "Paris"}]}) + "\n"
                        for s in subjects))
    return path
