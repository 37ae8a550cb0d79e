"""evals/ou_crosscheck.py: open-unlearning's conventions recomputed from llm-edit's scores."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOFU = ROOT.parent / "shared" / "data" / "tofu"


@pytest.fixture(scope="module")
def crosscheck():
    from conftest import eval_script

    return eval_script("ou_crosscheck")


def test_open_unlearnings_extraction_floor_is_one_over_length(crosscheck):
    from llm_edit.evaluating import tofu_metrics as M

    assert crosscheck.ou_extraction_strength([False, False, False, False]) == pytest.approx(0.25)  # 1/L
    assert M.extraction_strength([False, False, False, False]) == 0.0  # llm-edit's floor
    assert crosscheck.ou_extraction_strength([False, True, True]) == pytest.approx(2 / 3)
    assert crosscheck.ou_extraction_strength([True, True, True]) == 1.0


def test_open_unlearnings_labels_are_everything_after_the_generation_prompt(crosscheck, tiny):
    _, tok = tiny("llama")
    prompt, labels = crosscheck.ou_pair(tok, "Who?", "Me.", "Be brief.")
    text = tok.decode(prompt)
    assert "Be brief." in text and text.endswith("<|im_start|>assistant\n")
    # the tiny template writes "<|im_end|>\n" after the answer; an EOS is appended as it is not last
    assert tok.decode(labels) == "Me.<|im_end|>\n" + tok.eos_token


@pytest.mark.skipif(not TOFU.is_dir(), reason="needs ../shared/data/tofu")
def test_the_script_writes_both_columns(crosscheck, tmp_path):
    out = tmp_path / "x"
    assert crosscheck.main(["--model", "tiny-llama", "--split", "forget01", "--tofu-data", str(TOFU),
                            "--limit", "4", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    for convention in ("llm-edit", "open-unlearning"):
        r = report["results"][convention]
        assert 0 < r["forget_probability"] < 1 and set(r["mia_auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
        assert all(v == pytest.approx((0.5 - r["mia_auc"][a]) * 200) for a, v in r["privleak_vs_ref"].items())
    assert "| PrivLeak, min_k |" in out.with_suffix(".md").read_text()
