"""The evaluation engine: teacher-forced scores equal a direct computation, whatever the batch;
generation is the same batched or alone, and stop strings cut it."""
import pytest
import torch

from llm_edit.core.scoring import generate, score_pairs
from llm_edit.core.text import pad_id

from conftest import FAST_PATHS, STORAGE, script_greedy_decoding


def _pairs(tok):
    # prompts of different lengths (left padding) and a prompt with several answers (a shared cache)
    texts = [("Who wrote the book?", " Jane Austen wrote it."), ("Where is the Eiffel Tower?", " In Paris."),
             ("Q", " A long answer with several tokens in it, longer than the rest."),
             ("Who wrote the book?", " Jane Austen wrote it."), ("Who wrote the book?", " Tolstoy."),
             ("Where is the Eiffel Tower?", " It stands in the heart of the city of Paris, France.")]
    return [(tok(q)["input_ids"], tok(a, add_special_tokens=False)["input_ids"]) for q, a in texts]


@pytest.mark.parametrize("share_prompts", [True, False])
@pytest.mark.parametrize("model_type", FAST_PATHS)
def test_scores_match_a_direct_computation(tiny, model_type, share_prompts):
    model, tok = tiny(model_type)
    pairs = _pairs(tok)
    scores = score_pairs(model, tok, pairs, batch_size=3, share_prompts=share_prompts)
    for (p, a), s in zip(pairs, scores):
        with torch.no_grad():
            logits = model(torch.tensor([p + a])).logits[0].double()
        logprobs = torch.log_softmax(logits[len(p) - 1: len(p) + len(a) - 1], -1)
        expected = logprobs.gather(1, torch.tensor(a)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(s.logp, dtype=torch.float64), expected, atol=1e-4)
        assert list(s.hit) == (logprobs.argmax(-1) == torch.tensor(a)).tolist()
        mu = (logprobs.exp() * logprobs).sum(-1)
        var = (logprobs.exp() * logprobs.square()).sum(-1) - mu.square()
        assert torch.allclose(torch.tensor(s.mu, dtype=torch.float64), mu, atol=1e-4)
        assert torch.allclose(torch.tensor(s.sigma, dtype=torch.float64), var.clamp(min=0).sqrt(), atol=1e-3)
    assert scores[0] == scores[3]  # the duplicate pair is scored once and shared
    alone = score_pairs(model, tok, pairs, batch_size=1, share_prompts=share_prompts)
    for a, b in zip(scores, alone):
        assert a.logp == pytest.approx(b.logp, abs=1e-4)
        assert a.hit == b.hit


def test_score_pairs_rejects_an_empty_answer(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match="pair 0"):
        score_pairs(model, tok, [(tok("x")["input_ids"], [])])


@pytest.mark.parametrize("model_type", STORAGE)
def test_generation_is_the_same_batched_and_alone(tiny, model_type):
    model, tok = tiny(model_type)
    prompts = [tok(t)["input_ids"] for t in ["The Eiffel Tower is in", "Paris", "Who wrote the book about the city?"]]
    together = generate(model, tok, prompts, max_new_tokens=12, batch_size=3)
    alone = [generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert together == alone
    assert all(t for t in together)


def _hf_greedy(model, tok, prompt, max_new_tokens, stop):
    """The reference: transformers' own greedy decoding of one unpadded prompt, cut at ``stop``."""
    import torch

    pad = pad_id(tok)
    out = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=pad)
    return tok.decode(out[0, len(prompt):], skip_special_tokens=True).split(stop)[0]


@pytest.mark.parametrize("model_type", list(__import__("llm_edit.core.models", fromlist=["TINY_CONFIGS"]).TINY_CONFIGS))
def test_shared_prefix_and_early_rows_give_transformers_greedy_tokens(tiny, model_type):
    """A batch whose prompts share a long prefix (run once) and whose rows end at different
    steps (they leave the batch) decodes exactly what ``model.generate`` does for each alone."""
    model, tok = tiny(model_type)
    demos = "Question: who wrote Hamlet?\nAnswer: Shakespeare\n\nQuestion: where is Rome?\nAnswer: Italy\n\n"
    prompts = [tok(demos + q)["input_ids"] for q in
               ["Question: who wrote Faust?\nAnswer:", "Question: what is the capital of France?\nAnswer:", "Q"]]
    assert min(len(p) for p in prompts) > 20
    for stop in ("e", "\n"):  # "e" ends rows early at different steps
        got = generate(model, tok, prompts, max_new_tokens=10, batch_size=3, stop_strings=[stop])
        assert got == [_hf_greedy(model, tok, p, 10, stop) for p in prompts]


def test_generation_without_a_narrowable_cache_is_unchanged(tiny, monkeypatch):
    from transformers.cache_utils import Cache

    model, tok = tiny("llama")
    prompts = [tok("The same long opening of every prompt here, then " + t)["input_ids"] for t in ["a", "bb cc", "d"]]
    before = generate(model, tok, prompts, max_new_tokens=10, batch_size=3, stop_strings=["e"])
    monkeypatch.delattr(Cache, "batch_select_indices")
    monkeypatch.delattr(Cache, "batch_repeat_interleave")
    assert generate(model, tok, prompts, max_new_tokens=10, batch_size=3, stop_strings=["e"]) == before


def test_stop_strings_cut_the_answer(tiny):
    model, tok = tiny("llama")
    prompt = tok("The Eiffel Tower is in")["input_ids"]
    full = generate(model, tok, [prompt], max_new_tokens=16)[0]
    assert len(full) > 6
    stop = full[3:6]
    cut = generate(model, tok, [prompt], max_new_tokens=16, stop_strings=[stop])[0]
    assert cut == full[: full.find(stop)]


def test_a_cache_that_cannot_be_narrowed_falls_back_to_whole_sequences(tiny, monkeypatch):
    from transformers.cache_utils import Cache

    model, tok = tiny("llama")
    pairs = _pairs(tok)
    whole = score_pairs(model, tok, pairs, batch_size=3, share_prompts=False)
    monkeypatch.delattr(Cache, "batch_select_indices")
    fallback = score_pairs(model, tok, pairs, batch_size=3)
    assert fallback == whole


def test_forgotten_means_the_object_appears_nowhere_in_the_answer():
    from llm_edit.evaluating.metrics import compare_forget_rows, forget_status, knows, mentions

    assert mentions("Colossea, Rome, Italy", "Rome") and mentions(" Paris, France", "paris")
    assert not mentions("Liberty City", "New York") and not mentions("the Neo-Roman", "Rome")
    assert mentions("Parisian", "Paris")  # the word's end is open, as in metrics.says
    assert knows("fact", "Rome", "Colossea, Rome, Italy")  # not first, still answered
    assert forget_status("forget", True, True) == "STILL ANSWERED"
    assert forget_status("forget", False, False) == "not known before"
    assert forget_status("neighbour", True, False) == "LOST"

    def row(role, answer, greedy, p):
        return {"role": role, "kind": "fact", "prompt": "p", "answer": answer, "p_answer": p, "greedy": greedy}
    before = [row("forget", "Rome", " Rome, Italy", 0.5), row("forget", "Oslo", " Bergen", 0.05),
              row("neighbour", "Paris", " Paris", 0.6)]
    after = [row("forget", "Rome", " Colossea, Rome, Italy", 0.1), row("forget", "Oslo", " Bergen", 0.01),
             row("neighbour", "Paris", " Monaco", 0.2)]
    rows, summary = compare_forget_rows(before, after)
    assert [r["status"] for r in rows] == ["STILL ANSWERED", "not known before", "LOST"]
    assert summary["forget"] == {"items": 2, "known_before": 1, "forgotten": 0, "mean_p_before": pytest.approx(0.275),
                                 "mean_p_after": pytest.approx(0.055)}
    assert summary["neighbour"]["kept"] == 0


def test_an_answer_that_opens_on_a_new_line_is_read_from_there(tiny, monkeypatch):
    """With ``stop_after_text`` a stop string counts only once the answer has text: "Answer:" then
    "\\nHindi\\n..." is "Hindi" on its first line with text, not an empty answer; without it the
    old behaviour (and transformers' own stop strings) holds. The decoding is scripted so the
    answers are known; ``ended`` and ``cut`` are the real ones."""
    model, tok = tiny("llama")
    scripts = ["\nHindi\nQuestion: more", "\n\n\n\n\n\n\n\n\n\n Rome, Italy\nmore", "Paris\nmore", "\n\n"]
    token_scripts = [tok(s, add_special_tokens=False)["input_ids"] for s in scripts]
    # an answer that ends at once after its new line says nothing, with or without the option
    token_scripts.append(tok("\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + token_scripts[0])
    consumed = script_greedy_decoding(monkeypatch, lambda prompt: token_scripts[prompt[0]])
    prompts = [[i] for i in range(len(token_scripts))]
    plain = generate(model, tok, prompts, max_new_tokens=64, stop_strings=["\n"], batch_size=1)
    assert plain == ["", "", "Paris", "", ""]
    consumed.clear()
    read = generate(model, tok, prompts, max_new_tokens=64, stop_strings=["\n"], batch_size=1, stop_after_text=True)
    assert [r.strip() for r in read] == ["Hindi", "Rome, Italy", "Paris", "", ""]
    assert "more" not in "".join(read)
    # generation stops at the stop string after the text, not at the end of the script
    assert all(n < len(s) for n, s in zip(consumed[:3], token_scripts[:3]))
