"""``llm-edit demo`` end to end on a tiny model: every step runs and the model ends as it began."""
from llm_edit.cli import demo
from llm_edit.core.models import fingerprint


def test_the_demo_edits_reverts_forgets_and_restores(tiny):
    model, tok = tiny("llama")
    base = fingerprint(model)
    lines = []
    timings = demo.tour(model, tok, log=lines.append)
    text = "\n".join(lines)
    for expected in ("== before", "ROME rewrote", "chat turn", "reverted: the weights are bit for bit the original",
                     "forgetting", "neighbour facts", "question probes", "undone: the weights are bit for bit"):
        assert expected in text, expected
    assert set(timings) >= {"edit_s", "prepare_s", "forget_s"} and timings["edit_s"] <= timings["edit_total_s"]
    assert fingerprint(model) == base
