"""Training throughput of the unlearning loop against a plain PyTorch loop (issue 4).

    python evals/bench_forget.py [--steps 6] [--repeats 2] [--out evals/results/bench_forget.json]

Both loops train the same LoRA adapter (r=8, all linear layers) of the default model on the
same batch: 8 sequences × 64 tokens of ``llm_edit/data/generic_text.txt``, NLL (gradient
ascent's forward+backward, no retain term), AdamW, gradient clipping at 1.0. Each run is a
fresh subprocess (so peak RSS is its own); runs alternate plain/toolkit; the first step of
each is warm-up and not timed. Reported: tokens/s (median over repeats), peak RSS, overhead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def items(tok, n=8, length=64):
    from llm_edit.unlearning.items import ForgetItem

    ids = tok((HERE.parent / "llm_edit" / "data" / "generic_text.txt").read_text(), add_special_tokens=False)["input_ids"]
    texts = [tok.decode(ids[i * length:(i + 1) * length]) for i in range(n)]
    return [ForgetItem("text", "", t) for t in texts]


def run_one(kind: str, steps: int) -> dict:
    import resource

    import torch

    from llm_edit import forget, load_model
    from llm_edit.unlearning.items import Formatting, collate, encode

    torch.manual_seed(0)
    model, tok = load_model("llama")
    data = items(tok)
    stamps, tokens = [], 0
    if kind == "plain":
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
        batch = collate([encode(tok, x, Formatting(), 64) for x in data], tok.pad_token_id)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        peft_model.train()
        for _ in range(steps):
            logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten(),
                                                     ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        tokens = int(batch.attention_mask.sum())
    else:
        def tick(step, record, model):
            stamps.append(time.perf_counter())

        result = forget(model, tok, data, method="grad_ascent", recipe="smollm2-135m", progress=False, callback=tick,
                        steps=steps, lr=1e-5, batch_size=8, max_length=64, lora_r=8, lora_alpha=16,
                        lora_modules="all-linear", max_grad_norm=1.0, stop_forget_prob=None)
        tokens = result.log[-1]["tokens"]
    timed = stamps[-1] - stamps[0]
    return {"kind": kind, "tokens_per_step": tokens, "seconds_per_step": timed / (steps - 1),
            "tokens_per_second": tokens * (steps - 1) / timed,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.steps)))
        return
    runs = []
    for _ in range(args.repeats):
        for kind in ("plain", "toolkit"):
            done = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    summary = {}
    for kind in ("plain", "toolkit"):
        mine = [r for r in runs if r["kind"] == kind]
        summary[kind] = {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in mine),
                         "peak_rss_mib": max(r["peak_rss_mib"] for r in mine)}
    summary["overhead"] = summary["plain"]["tokens_per_second"] / summary["toolkit"]["tokens_per_second"] - 1
    print(json.dumps(summary, indent=2))
    if args.out:
        from llm_edit.core.files import write_json

        write_json(Path(args.out), {"command": " ".join(sys.argv), "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
