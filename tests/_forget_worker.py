"""Run one tiny unlearning job and write its log as JSON (used by test_forget under
``accelerate launch`` to compare 2 processes with 1)."""
import json
import sys

import torch

torch.set_num_threads(1)

from llm_edit import forget, load_model  # noqa: E402

out, grad_accum, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, tok = load_model("tiny-llama", device="cpu")
items = [{"prompt": "{} is in", "subject": s, "target": o} for s, o in
         [("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Kremlin", "Moscow"),
          ("Alhambra", "Granada"), ("Acropolis", "Athens"), ("Space Needle", "Seattle"), ("Alamo", "San Antonio")]]
result = forget(model, tok, items, method=sys.argv[5] if len(sys.argv) > 5 else "npo", recipe="tiny", progress=False,
                steps=3, lr=float(sys.argv[4]) if len(sys.argv) > 4 else 0.01, grad_accum=grad_accum, batch_size=batch_size, retain_batch_size=batch_size)
if result._trainer.accelerator.is_main_process:
    with open(out, "w") as f:
        json.dump({"log": result.log, "processes": result.manifest["training"]["processes"],
                   "effective_batch_size": result.manifest["training"]["effective_batch_size"]}, f)
