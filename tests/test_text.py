import pytest

from llm_edit.core.models import build_tiny_tokenizer
from llm_edit.core.text import SubjectNotFound, encode_with_subject, make_batch, render, target_ids


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("template, subject", [
    ("The {} is located in the city of", "Eiffel Tower"),
    ("{} plays", "Lionel Messi"),
    ("Q: Where is {}? A:", "the Louvre"),
    ("The capital of {}", "France"),
])
def test_last_subject_token(add_bos, template, subject):
    tok = build_tiny_tokenizer(add_bos=add_bos)
    ids, last = encode_with_subject(tok, template, subject)
    assert (ids[0] == tok.bos_token_id) == add_bos
    text = template.replace("{}", subject)
    end = template.index("{}") + len(subject)
    assert tok.decode(ids[: last + 1], skip_special_tokens=True).rstrip() .endswith(subject[-1])
    # everything up to `last` covers the subject; the next token starts at or after its end
    assert len(tok.decode(ids[: last + 1], skip_special_tokens=True)) >= end
    assert len(tok.decode(ids[:last], skip_special_tokens=True)) < end
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_last_subject_token_inside_chat_template():
    tok = build_tiny_tokenizer(add_bos=False)
    plain, plain_last = encode_with_subject(tok, "The {} is in", "Eiffel Tower")
    ids, last = encode_with_subject(tok, "The {} is in", "Eiffel Tower", chat=True)
    assert tok.decode(ids[: last + 1]).endswith(tok.decode(plain[: plain_last + 1]))
    assert "<|im_start|>" in tok.decode(ids)


def test_a_target_starts_the_assistants_turn_without_a_space():
    """A prompt continues " Paris"; the assistant's turn, which the chat template ends with a line
    break, starts "Paris", as the model writes it."""
    tok = build_tiny_tokenizer(add_bos=False)
    plain, *_ = render(tok, "The {} is in", "Eiffel Tower")
    turn, *_ = render(tok, "Where is {}?", "Eiffel Tower", chat=True)
    assert turn.endswith("assistant\n")
    assert tok.decode(target_ids(tok, "Paris", after=plain)) == " Paris" == tok.decode(target_ids(tok, "Paris"))
    assert tok.decode(target_ids(tok, "Paris", after=turn)) == "Paris"
    assert tok.decode(target_ids(tok, "Paris", after="Answer: ")) == "Paris"


def test_subject_that_ends_inside_a_token():
    tok = build_tiny_tokenizer(add_bos=False)
    ids, last = encode_with_subject(tok, "{}s is a city", "Pari")
    assert len(tok.decode(ids[: last + 1])) >= 4 and len(tok.decode(ids[:last])) < 4


def test_missing_placeholder():
    with pytest.raises(SubjectNotFound):
        encode_with_subject(build_tiny_tokenizer(False), "no placeholder", "x")


def test_make_batch_labels_point_at_target_tokens():
    batch = make_batch(0, [[5, 6, 7], [5]], [[8, 9], [4]])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 8, 9], [4, -100, -100, -100]]


@pytest.mark.parametrize("add_bos", [True, False])
def test_perplexity_frames_each_window_as_the_tokenizer_frames_text(add_bos):
    """With a BOS the window follows it and every token is scored; without one the window is
    scored from its second token. Checked against one hand-built forward pass per window."""
    import math

    import torch

    from llm_edit.core.models import build_tiny
    from llm_edit.core.text import leading_special_ids
    from llm_edit.evaluating.metrics import perplexity

    model, _ = build_tiny("gpt2")
    tok = build_tiny_tokenizer(add_bos=add_bos)
    assert leading_special_ids(tok) == ([tok.bos_token_id] if add_bos else [])
    text = "the cat sat on the mat and the dog sat on the log " * 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    window = 7
    nll, count = 0.0, 0
    for i in range(0, len(ids), window):
        chunk = ids[i:i + window]
        if len(chunk) < 2:
            continue
        seq = ([tok.bos_token_id] if add_bos else []) + chunk
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        scored = range(1, len(seq))  # every token after the first fed one: with a BOS, all of the window's
        nll -= sum(float(logp[j - 1, seq[j]]) for j in scored)
        count += len(scored)
    assert perplexity(model, tok, text, window=window, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-4)
