"""Value optimisation batched across requests gives each request what it gets alone."""
import pytest
import torch

from llm_edit.core.arch import arch_of
from llm_edit.editing.requests import parse_request
from llm_edit.editing.keys import context_templates
from llm_edit.editing.values import optimise_values

from conftest import FAST_PATHS, TINY_TYPES

REQUESTS = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris"},
            {"prompt": "{} was written by", "subject": "Hamlet", "target_new": "Goethe", "target_true": "Shakespeare"},
            {"prompt": "The {} plays", "subject": "Lakers", "target_new": "soccer", "target_true": "basketball"}]


@pytest.mark.parametrize("max_rows", [3, 100])  # one request's prompts split over chunks, or all in one
@pytest.mark.parametrize("objective", ["insert", "suppress"])
def test_batched_values_equal_one_at_a_time(tiny, objective, max_rows):
    model, tok = tiny("llama")
    requests = [parse_request(r) for r in REQUESTS]
    contexts = context_templates(model, tok, [3], 2, 0)
    name = arch_of(model).mlp_out.format(1)
    # thresholds where, on this random model, requests stop at different steps (or never)
    kw = dict(steps=10, lr=0.5, kl_factor=0.0625, weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"],
              nll_stop=8.4, objective=objective, stop_prob=5e-4)
    together = optimise_values(model, tok, name, requests, contexts, max_rows=max_rows, **kw)
    alone = [optimise_values(model, tok, name, [r], contexts, **kw)[0] for r in requests]
    assert len({v.steps for v in together}) > 1
    for a, b in zip(together, alone):
        assert a.steps == b.steps
        # the same sums in another order: float rounding only, which ten Adam steps amplify a little
        assert torch.allclose(a.delta, b.delta, atol=1e-3)
        assert abs(a.nll_after - b.nll_after) < 1e-4


@pytest.mark.parametrize("model_type", FAST_PATHS)
def test_objective_matches_a_plain_forward_of_each_whole_prompt(tiny, model_type):
    """The prompts run split at the subject (prefix cached, the rest with δ); at δ = 0 the
    objective must equal the mean target NLL of plain, unsplit, unpadded forwards."""
    from llm_edit.core.text import encode_with_subject, target_ids

    model, tok = tiny(model_type)
    requests = [parse_request(r) for r in REQUESTS]
    contexts = context_templates(model, tok, [3, 6], 2, 0)
    name = arch_of(model).mlp_out.format(1)
    got = optimise_values(model, tok, name, requests, contexts, steps=0, lr=0.5, kl_factor=0.0625,
                          weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"], nll_stop=0.0, max_rows=5)
    for request, result in zip(requests, got):
        new = target_ids(tok, request.target_new)
        nll = []
        for c in contexts:
            ids, _ = encode_with_subject(tok, c.replace("{}", request.prompt), request.subject)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + new[:-1]])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            nll.append(-sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(new)) / len(new))
        assert result.nll_before == pytest.approx(sum(nll) / len(nll), abs=1e-4)


def test_rebuilding_prefixes_each_step_gives_the_cached_result(tiny):
    model, tok = tiny("llama")
    requests = [parse_request(r) for r in REQUESTS]
    contexts = context_templates(model, tok, [3], 2, 0)
    name = arch_of(model).mlp_out.format(1)
    kw = dict(steps=6, lr=0.5, kl_factor=0.0625, weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"],
              nll_stop=8.4, max_rows=4)
    # with no budget each request is a group of its own, its prefixes rebuilt every step
    rebuilt = optimise_values(model, tok, name, requests, contexts, prefix_cache_bytes=0, **kw)
    cached = [optimise_values(model, tok, name, [r], contexts, **kw)[0] for r in requests]
    for a, b in zip(cached, rebuilt):
        assert a.steps == b.steps and torch.allclose(a.delta, b.delta, atol=1e-5)


def test_requests_go_in_groups_that_fit_the_cache_budget(tiny):
    """A budget that holds about two requests' prefixes splits three requests into two groups;
    the results come back in request order, each what the request gets alone."""
    from llm_edit.editing.value_rows import _PADDING_ALLOWANCE, _cache_bytes_per_token, _groups_within, _value_rows
    from llm_edit.editing.values import _ESTIMATE_SHARE

    model, tok = tiny("llama")
    requests = [parse_request(r) for r in REQUESTS]
    contexts = context_templates(model, tok, [3], 2, 0)
    rows_of = [_value_rows(tok, r, r.target_new, contexts, ["{} is a"]) for r in requests]
    per_token = _cache_bytes_per_token(model)
    need = [_PADDING_ALLOWANCE * per_token * sum(row[3] for row in rows) for rows in rows_of]
    budget = int(need[0] + need[1]) + 1
    assert _groups_within(rows_of, per_token, budget) == [[0, 1], [2]]
    assert _groups_within(rows_of, per_token, 2**40) == [[0, 1, 2]]
    assert _groups_within(rows_of, None, 0) == [[0, 1, 2]]  # no measurable cache: one group
    name = arch_of(model).mlp_out.format(1)
    kw = dict(steps=6, lr=0.5, kl_factor=0.0625, weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"],
              nll_stop=8.4)
    grouped = optimise_values(model, tok, name, requests, contexts, prefix_cache_bytes=budget * _ESTIMATE_SHARE, **kw)
    alone = [optimise_values(model, tok, name, [r], contexts, **kw)[0] for r in requests]
    for a, b in zip(grouped, alone):
        assert a.steps == b.steps and torch.allclose(a.delta, b.delta, atol=1e-3)


def test_a_group_keeps_its_padded_prefix_caches_when_they_outgrow_the_estimate(tiny, monkeypatch):
    """A form with a long preamble shares a chunk with short context prefixes, so the padded
    caches outgrow the grouping estimate (twice the unpadded tokens). The room is a multiple of
    the estimate's budget, so each chunk's prefix runs once, not at every step; with a room equal
    to that budget (as before) the chunk that did not fit ran again at every pass, with the same
    result. Rows in lanes of their own (as before packing): packed, the caches hold no padding."""
    import llm_edit.core.scoring as scoring
    import llm_edit.editing.values as values
    from llm_edit.core.forms import Form
    from llm_edit.editing.value_rows import _PADDING_ALLOWANCE, _cache_bytes_per_token, _value_rows

    model, tok = tiny("llama")
    monkeypatch.setattr(values, "lane_capacity", lambda model: None)
    requests = [parse_request(r) for r in REQUESTS[:2]]
    contexts = context_templates(model, tok, [3], 2, 0)
    preamble = Form("preamble", "Here is a long preamble of many words that the model reads, one after another, before "
                    "it ever meets the subject of this sentence, which is {}, and it is in", False)
    forms = [[preamble] for _ in requests]
    rows_of = [_value_rows(tok, r, r.target_new, contexts, ["{} is a"], f) for r, f in zip(requests, forms)]
    per_token = _cache_bytes_per_token(model)
    estimate = _PADDING_ALLOWANCE * per_token * sum(row.split for rows in rows_of for row in rows)
    widest = max(row.split for rows in rows_of for row in rows)
    padded = per_token * widest * sum(len(rows) for rows in rows_of)  # one chunk, every prefix as long as the preamble's
    assert padded > estimate  # the case this is about
    builds = []
    cache_of = scoring.cache_of
    monkeypatch.setattr(scoring, "cache_of", lambda out: builds.append(1) or cache_of(out))
    name = arch_of(model).mlp_out.format(1)
    kw = dict(steps=4, lr=0.5, kl_factor=0.0625, weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"],
              nll_stop=0.0, forms=forms)

    def run(room):
        builds.clear()
        results = optimise_values(model, tok, name, requests, contexts, prefix_cache_bytes=int(room), **kw)
        return results, len(builds) - 1  # one call measures the cache's bytes per token

    kept, kept_builds = run(values._ESTIMATE_SHARE * (estimate + 1))
    assert kept_builds == 1  # one chunk, its prefix run once for the 4 steps and the two measurements
    monkeypatch.setattr(values, "_ESTIMATE_SHARE", 1)
    rebuilt, rebuilt_builds = run(estimate + 1)
    assert rebuilt_builds == 1 + 4 + 1  # at δ = 0, at each step and for the unfinished values
    for a, b in zip(kept, rebuilt):
        assert a.steps == b.steps and torch.equal(a.delta, b.delta)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_packed_lanes_give_what_rows_of_their_own_give(tiny, monkeypatch, model_type):
    """Rows packed into lanes (each token masked to its own row, positions from its row's start)
    give the objective, the steps and the δ of rows each in a lane of its own, the model building
    its mask, on every architecture. A sliding window (16 on the tiny Gemmas) shorter than the
    rows keeps them apart; widened to 64 it lets them share lanes, its layers' caches and masks
    included."""
    import llm_edit.editing.values as values
    from llm_edit.core.forms import Form
    from llm_edit.core.scoring import sliding_window

    model, tok = tiny(model_type)
    requests = [parse_request(r) for r in REQUESTS]
    contexts = context_templates(model, tok, [3], 2, 0)
    # a form whose rest (from the subject on) is longer than the prompts': packing then runs fewer slots
    forms = [[Form("after", "Tell me about {} and the place where, as people say, it is found: it is in", False)]
              for _ in requests]
    name = arch_of(model).mlp_out.format(1)
    # chunks of 7 rows: lanes of several rows
    kw = dict(steps=4, lr=0.5, kl_factor=0.0625, weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"],
              nll_stop=0.0, forms=forms, max_rows=7)
    # stop between the two lowest objectives at δ = 0: one request stops at once, the others step on
    low, middle, _ = sorted(v.nll_before for v in optimise_values(model, tok, name, requests, contexts,
                                                                   **dict(kw, steps=0)))
    kw["nll_stop"] = (low + middle) / 2
    built = []
    chunk = values._PromptChunk
    monkeypatch.setattr(values, "_PromptChunk", lambda *a, **k: built.append(chunk(*a, **k)) or built[-1])

    def packed_run():
        built.clear()
        results = optimise_values(model, tok, name, requests, contexts, **kw)
        # a lane holds one request's rows, so it leaves the passes when that request stops
        assert all(len({c.rows[b].request for b in range(len(c.rows)) if c.lane[b] == lane}) == 1
                   for c in built for lane in range(c.n_lanes))
        return results, any(c.packed and c.n_lanes < len(c.rows) for c in built)

    window = sliding_window(model)
    if window is not None:
        assert not packed_run()[1]  # the rows are longer than the window
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        monkeypatch.setattr(config, "sliding_window", 64)
    packed, was_packed = packed_run()
    assert was_packed
    monkeypatch.setattr(values, "lane_capacity", lambda model: None)
    own = optimise_values(model, tok, name, requests, contexts, **kw)
    assert len({v.steps for v in own}) > 1
    for a, b in zip(packed, own):
        assert a.steps == b.steps
        assert a.nll_before == pytest.approx(b.nll_before, abs=1e-4)
        assert torch.allclose(a.delta, b.delta, atol=1e-3)


def test_rows_are_packed_only_where_that_runs_fewer_token_slots():
    """A request's rows differing in length (a chat form after short prompts) are packed: 4 lanes
    of 21 slots against 16 rows of 12. Requests with as long rows but not as many stay in lanes of
    their own, sorted by length: 10 rows of 3 slots against 4 lanes of 12 (the longest request's)."""
    from llm_edit.editing.value_rows import _Row
    from llm_edit.editing.values import _layout

    def row(request, length):  # split 2: two prefix tokens, then ``length`` tokens, the last one the target's
        return _Row(request, -1, list(range(2 + length - 1)), 2, [7])

    varied = [row(r, n) for r in range(4) for n in (3, 3, 3, 12)]
    uneven = [row(r, 3) for r in range(4) for _ in range(r + 1)]
    assert all(c.packed for c in _layout(varied, 0, "cpu", 96, 512, torch.float32))
    assert not any(c.packed for c in _layout(uneven, 0, "cpu", 96, 512, torch.float32))
    assert not any(c.packed for c in _layout(varied, 0, "cpu", 96, None, torch.float32))


def test_key_shares_give_each_prompt_what_the_update_writes_at_its_key(tiny):
    """With ``write_directions`` a prompt receives δ·(dᵀk), k its own key at the subject: the
    objective after optimising equals plain forwards with exactly that added there, and not the
    one with δ whole (the prefixed prompts' keys are not k*)."""
    from llm_edit.core.text import encode_with_subject, target_ids
    from llm_edit.editing.keys import mean_subject_key
    from llm_edit.editing.rank_one import write_direction

    model, tok = tiny("llama")
    request = parse_request(REQUESTS[0])
    contexts = context_templates(model, tok, [3], 2, 0)
    name = arch_of(model).mlp_out.format(1)
    key = mean_subject_key(model, tok, name, request, contexts, 0.8)
    cov = torch.eye(key.shape[0]) + 0.1 * torch.outer(key, key)
    direction = write_direction(key, cov)
    assert float(direction @ key) == pytest.approx(1.0, abs=1e-5)
    (result,) = optimise_values(model, tok, name, [request], contexts, steps=4, lr=0.5, kl_factor=0.0,
                                weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"], nll_stop=0.0,
                                write_directions=[direction])
    new = target_ids(tok, request.target_new)

    def objective(shared: bool) -> float:
        nll = []
        for c in contexts:
            ids, sub = encode_with_subject(tok, c.replace("{}", request.prompt), request.subject)
            handle = model.get_submodule(name).register_forward_hook(
                lambda m, inp, out: out + torch.nn.functional.one_hot(torch.tensor(sub), out.shape[1])[None, :, None]
                * ((direction @ inp[0][0, sub]) if shared else 1.0) * result.delta)
            try:
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids + new[:-1]])).logits[0]
            finally:
                handle.remove()
            logp = torch.log_softmax(logits.double(), -1)
            nll.append(-sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(new)) / len(new))
        return sum(nll) / len(nll)

    assert result.nll_after == pytest.approx(objective(shared=True), abs=1e-4)
    assert abs(result.nll_after - objective(shared=False)) > 1e-3
