import os
import tempfile

import pytest
import torch

# Tiny models run fastest on one thread (two OpenMP threads spend more time waking each other
# than multiplying 64x128 matrices); the cache goes to a per-session folder.
torch.set_num_threads(1)
os.environ.setdefault("LLM_EDIT_HOME", tempfile.mkdtemp(prefix="llm_edit_test_home_"))

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
