"""The audit: verdict arithmetic, the quantization round trip, probes per item kind, and the
command on tiny models (a model fine-tuned on a few facts, then unlearned)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_edit.auditing.attacks import quantizable, quantized
from llm_edit.auditing.audit import AuditConfig, probe_prompts, recovery, verdict
from llm_edit.unlearning.items import Formatting, parse_item

ROOT = Path(__file__).resolve().parents[1]


def test_recovery_and_verdicts():
    c = AuditConfig()
    assert recovery(0.2, 0.8) == pytest.approx(0.25) and verdict(0.25, c) == "forgotten"
    assert recovery(0.5, 0.9, floor=0.1) == pytest.approx(0.5) and verdict(0.5, c) == "partly"
    assert recovery(1.0, 0.8) == 1.0 and verdict(1.0, c) == "not forgotten"
    assert recovery(0.0, 0.1, floor=0.2) is None and verdict(None, c) == "n/a"  # the original never answered
    assert recovery(0.05, 0.9, floor=0.1) == 0.0  # below the retain model: clipped


def test_audit_config_is_validated():
    from llm_edit.core.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="partly_max"):
        build_config(AuditConfig, {"forgotten_max": 0.7, "partly_max": 0.6})
    with pytest.raises(ConfigError, match="did you mean"):
        build_config(AuditConfig, {"relearn_step": 3})


def test_quantization_matches_gguf_q4_0_and_restores_bit_for_bit(tiny):
    model, _ = tiny("llama")
    names = quantizable(model)
    assert names and all("layers." in n for n in names)  # embeddings and head stay
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    name = names[0]
    w = before[name].numpy()
    with quantized(model, "q4_0"):
        q = params[name].detach().numpy()
        # Q4_0 by hand: per block of 32, d = (signed value of largest magnitude) / -8, q = clip(round(x/d) + 8, 0, 15),
        # d stored as float16
        blocks = w.reshape(-1, 32)
        big = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(1)]
        d = big / -8
        inv = np.where(d != 0, 1 / d, 0)
        codes = np.clip(np.trunc(blocks * inv[:, None] + 8.5), 0, 15)
        expected = ((codes - 8) * d.astype(np.float16).astype(np.float32)[:, None]).reshape(w.shape)
        assert np.allclose(q, expected, atol=1e-6)
        assert not torch.equal(params[name], before[name])
        assert torch.equal(params["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(RuntimeError):
        with quantized(model, "q8_0"):
            raise RuntimeError("a failure inside")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_fact_is_answered_by_its_object_outside_the_subjects_name():
    from llm_edit.auditing.probes import answered

    fact = parse_item({"prompt": "{} is made by", "subject": "Toyota RAV4", "target": "Toyota"})
    assert answered(fact, " The Toyota RAV4 is a compact car.", 0.5) == (False, 0.0)
    assert answered(fact, " The Toyota RAV4 is made by Toyota.", 0.5) == (True, 1.0)
    assert answered(fact, " toyota, of course", 0.5) == (True, 1.0)
    language = parse_item({"prompt": "The official language of {} is", "subject": "Vietnam", "target": "Vietnamese"})
    assert answered(language, " Vietnamese, as everyone in Vietnam knows", 0.5) == (True, 1.0)


def test_probe_prompts_cover_both_item_kinds(tiny):
    _, tok = tiny("llama")
    qa = parse_item({"question": "Who wrote Hamlet?", "answer": "Shakespeare",
                     "paraphrased_question": "Hamlet was written by whom?"})
    fact = parse_item({"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"})
    demo = parse_item({"question": "Who wrote Emma?", "answer": "Jane Austen"})
    prompts = probe_prompts(tok, [qa, fact], [demo], Formatting())
    assert [i for i, _ in prompts["paraphrase"]] == [0]  # only the question has a paraphrase
    for probe in ("direct", "plain_qa", "completion", "chat_other_system", "in_context", "ignore_instruction",
                  "fill_blank", "multi_turn", "after_two_facts"):
        assert [i for i, _ in prompts[probe]] == [0, 1], probe
    assert [i for i, _ in prompts["open_request"]] == [1]  # a fact's subject; a question has none
    assert tok.decode(prompts["open_request"][0][1]).count("Tell me about Eiffel Tower.") == 1
    turns = tok.decode(prompts["multi_turn"][0][1])
    assert turns.index("quick questions") < turns.index("Who wrote Hamlet?")
    icl = tok.decode(prompts["in_context"][0][1])
    assert "Jane Austen" in icl and icl.rstrip().endswith("Answer:")


def _save(model, tok, path):
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def test_audit_command_on_tiny_models(tiny, tmp_path):
    """A tiny model that memorised six facts, unlearned by gradient difference: the audit runs every
    probe, writes its three files, and the original answers what it was trained on."""
    from llm_edit import forget
    from llm_edit.unlearning.finetune import FinetuneConfig, finetune

    facts = [{"prompt": p + " is in", "subject": p, "target": o} for p, o in
             [("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Kremlin", "Moscow")]]
    retain = [{"prompt": p + " is in", "subject": p, "target": o} for p, o in
              [("Prado", "Madrid"), ("Reichstag", "Berlin"), ("Louvre", "Paris")]]
    holdout = [{"prompt": p + " is in", "subject": p, "target": o} for p, o in [("Vatican", "Rome"), ("Alhambra", "Granada")]]
    for name, rows in (("forget", facts), ("retain", retain), ("holdout", holdout)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    model, tok = tiny("llama")
    items = [parse_item(r) for r in facts + retain]
    original, _, _ = finetune(model, tok, items, FinetuneConfig(epochs=None, steps=150, lr=3e-3, batch_size=7,
                                                                max_length=32), progress=False)
    _save(original, tok, tmp_path / "original")
    unlearned = forget(copy.deepcopy(original), tok, [parse_item(r) for r in facts], [parse_item(r) for r in retain],
                       "grad_diff", progress=False, steps=15, lr=3e-3).merge()
    _save(unlearned, tok, tmp_path / "unlearned")
    env = dict(os.environ, LLM_EDIT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "llm_edit", "audit", "--model", str(tmp_path / "unlearned"), "--original",
           str(tmp_path / "original"), "--facts", str(tmp_path / "forget.jsonl"), "--retain",
           str(tmp_path / "retain.jsonl"), "--holdout", str(tmp_path / "holdout.jsonl"), "--set", "max_new_tokens=8",
           "--set", "relearn_steps=3"]
    done = subprocess.run(cmd + ["--out", str(tmp_path / "audit")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"audit.json", "audit.md", "recovery.png"} <= {p.name for p in (tmp_path / "audit").iterdir()}
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    rows = {r["probe"]: r for r in report["table"]}
    assert {"direct", "in_context", "relearn_forget_half", "relearn_benign", "quantized_q4_0", "mia_loss",
            "extraction_strength"} <= set(rows)
    assert rows["direct"]["original"] == 1.0  # it memorised the facts it is audited on
    # and unlearning removed some of them: a no-op unlearner fails here
    assert rows["direct"]["unlearned"] < rows["direct"]["original"]
    direct = rows["direct"]
    assert direct["recovery"] == pytest.approx(recovery(direct["unlearned"], direct["original"]))
    assert direct["verdict"] == verdict(direct["recovery"], AuditConfig())
    assert report["verdict"].startswith(("FORGOTTEN", "NOT FORGOTTEN"))
    assert (tmp_path / "audit" / "audit.md").read_text().count("\n|") >= 10
    # a second audit against the same original reads the original's row from the cache: same table
    again = subprocess.run(cmd + ["--out", str(tmp_path / "audit2")], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    report2 = json.loads((tmp_path / "audit2" / "audit.json").read_text())
    assert report2["table"] == report["table"]
    assert "all probes (original, cached)" in report2["timings"]
    assert "all probes (original, cached)" not in report["timings"]
    # bad input: a setting that does not exist, a malformed fact file: exit 2, nothing written
    bad = subprocess.run(cmd[:-4] + ["--set", "relearn_step=3", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "relearn_step" in bad.stderr and not (tmp_path / "bad").exists()
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x is in", "subject": "y", "target": "z"}\n')
    bad = subprocess.run(cmd[:8] + ["--facts", str(tmp_path / "broken.jsonl"), "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "broken.jsonl:1" in bad.stderr and not (tmp_path / "bad").exists()


def test_audit_table_adds_tofu_columns_when_every_audit_has_them(tmp_path):
    def fake(name, fq, with_tofu=True):
        row = {"probe": "direct", "kind": "answered share", "unlearned": 0.025, "original": 0.45, "retain": 0.025,
               "recovery": 0.0, "verdict": "forgotten", "note": ""}
        report = {"table": [row], "method": "grad_diff", "sets": [f"retain_weight={name}"], "verdict": "v",
                  "config": {"forgotten_max": 0.25, "partly_max": 0.5}, "audit_s": 1.0,
                  "utility": {"unlearned": {"perplexity": 19.0, "retain_answered": 0.5},
                              "original": {"perplexity": 18.0, "retain_answered": 0.55}, "verdict": "kept"}}
        if with_tofu:
            report["tofu"] = {"unlearned": {"forget_quality": fq, "model_utility": 0.388},
                              "original": {"forget_quality": 0.000504, "model_utility": 0.394},
                              "retain": {"forget_quality": 1.0, "model_utility": 0.344}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "audit.json").write_text(json.dumps(report))
        return str(tmp_path / name)

    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "evals" / "audit_table.py"), "--title", "t"]
    a, b = fake("6", 0.165), fake("7", 0.09707)
    subprocess.run(script + ["--out", str(tmp_path / "t.md"), a, b], check=True, capture_output=True)
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[2].endswith("| forget quality | model utility |")
    assert lines[4].endswith("| 0.000504 | 0.394 |") and lines[5].endswith("| 1 | 0.344 |")  # original, retain
    assert lines[6].endswith("| 0.165 | 0.388 |") and lines[7].endswith("| 0.0971 | 0.388 |")  # not rounded to 0.10
    c = fake("8", 0.5, with_tofu=False)
    subprocess.run(script + ["--out", str(tmp_path / "u.md"), a, c], check=True, capture_output=True)
    assert "forget quality" not in (tmp_path / "u.md").read_text()
