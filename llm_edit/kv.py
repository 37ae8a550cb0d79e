"""Keys and values for locate-then-edit methods (ROME now; MEMIT and AlphaEdit reuse these).

A *key* k is the input of an MLP output projection at the subject's last token; a *value* is
that projection's output there. ``subject_keys`` reads keys; ``optimise_value`` finds the
change δ of a module's output at the subject's last token that makes the model say the new
object (ROME §3.1, eq. 4). Both take a module name, so they serve any edited module.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch

from .arch import arch_of
from .facts import EditRequest
from .hooks import Trace
from .maths import clamp_norm, kl_to_initial, mean_target_nll, object_unlikelihood, relative_weight_decay
from .text import encode_with_subject, make_batch, target_ids


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Turn off weight gradients for the duration (backward then computes activations' only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


_PREFIX_STARTS = ["The", "Therefore", "Because", "I", "You"]
_prefix_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def context_templates(model, tok, lengths=(5, 10), per_length: int = 5, seed: int = 0) -> list[str]:
    """``["{}"]`` plus short texts sampled from the model, each followed by ``". {}"``.

    ROME averages the key over such random prefixes so that the edit holds in any context
    (Meng et al. 2022, eq. 3). Sampling: top-k 5 from the starts the reference code uses, with a
    fixed seed; cached per model object so a batch of edits shares one set.
    """
    key = (tuple(lengths), per_length, seed)
    cached = _prefix_cache.setdefault(model, {})
    if key in cached:
        return cached[key]
    device = next(model.parameters()).device
    out = ["{}"]
    starts = [_PREFIX_STARTS[i % len(_PREFIX_STARTS)] for i in range(per_length)]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for length in lengths:
                enc = tok(starts, return_tensors="pt", padding=True).to(device)
                gen = model.generate(**enc, do_sample=True, top_k=5, max_new_tokens=length,
                                     min_new_tokens=length, pad_token_id=tok.pad_token_id)
                texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out += [(s + t).replace("{", " ").replace("}", " ").strip() + ". {}"
                        for s, t in zip(starts, texts)]
    finally:
        tok.padding_side = side
    cached[key] = out
    return out


@torch.no_grad()
def subject_keys(model, tok, module_name: str, templates: list[str], subjects: list[str],
                 batch_size: int = 32) -> torch.Tensor:
    """Input of ``module_name`` at each prompt's last subject token, shape (n, d_in), float32."""
    device = next(model.parameters()).device
    rows = []
    for i in range(0, len(templates), batch_size):
        enc = [encode_with_subject(tok, t, s) for t, s in zip(templates[i:i + batch_size],
                                                               subjects[i:i + batch_size])]
        batch = make_batch(tok.pad_token_id, [e[0] for e in enc], subject_index=[e[1] for e in enc])
        batch = batch.to(device)
        with Trace(model, [module_name], retain_input=True, stop=True) as tr:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        keys = tr[module_name].input
        rows.append(keys[torch.arange(len(enc), device=device), batch.subject_index].float())
    return torch.cat(rows)


def mean_subject_key(model, tok, module_name: str, request: EditRequest, contexts: list[str],
                     bare_weight: float | None = None) -> torch.Tensor:
    """k*: the key averaged over context prefixes (ROME eq. 3).

    ``contexts[0]`` must be the bare ``"{}"``. With ``bare_weight`` None every template counts
    the same (ROME, r-ROME); otherwise the bare prompt's key gets that weight and the prefixed
    ones share the rest. Deviation, measured in the README: where the subject opens the prompt
    its bare key sits at position 0 (an attention sink on models without BOS) and differs from
    every prefixed key, so an equal average can miss the very prompt being edited.
    """
    templates = [c.replace("{}", request.prompt) for c in contexts]
    keys = subject_keys(model, tok, module_name, templates, [request.subject] * len(templates))
    if bare_weight is None or len(keys) == 1:
        return keys.mean(0)
    return bare_weight * keys[0] + (1 - bare_weight) * keys[1:].mean(0)


@dataclass
class ValueResult:
    delta: torch.Tensor  # δ = v* − v_init, the change of the module's output (d_out,)
    initial: torch.Tensor  # v_init, averaged over the same prompts as the key
    nll_before: float
    nll_after: float
    steps: int


def optimise_value(model, tok, module_name: str, request: EditRequest, contexts: list[str], *,
                   steps: int, lr: float, kl_factor: float, weight_decay: float,
                   clamp_norm_factor: float, kl_prompts: list[str], nll_stop: float,
                   target: str | None = None, objective: str = "insert", stop_prob: float = 0.0,
                   ) -> ValueResult:
    """Find δ added to ``module_name``'s output at the last subject token (ROME eq. 4).

    Loss = objective over the context-prefixed prompts + kl_factor · KL on the essence prompts
    + weight_decay · ||δ||²/||v_init||²; Adam; after each step ||δ|| is clamped to
    clamp_norm_factor · ||v_init||. The objective:

    * ``insert`` (ROME): the mean per-token NLL of ``target`` (default ``request.target_new``);
      stops early once it is below ``nll_stop``;
    * ``suppress`` (erasure): ``maths.object_unlikelihood`` of ``target`` (default
      ``request.target_true``); stops early once its probability is below ``stop_prob`` after
      every prompt (the largest, not the mean: the object must go after each context).

    ``ValueResult.nll_before/after`` hold the objective's value before and after.
    """
    if objective not in ("insert", "suppress"):
        raise ValueError(f"unknown objective {objective!r}")
    if target is None:
        target = request.target_new if objective == "insert" else request.target_true
    if not target:
        raise ValueError(f"no target for the {objective!r} objective of {request.text!r}")
    device = next(model.parameters()).device
    new_ids = target_ids(tok, target)
    rewrite = [encode_with_subject(tok, c.replace("{}", request.prompt), request.subject) for c in contexts]
    essence = [encode_with_subject(tok, p, request.subject) for p in kl_prompts]
    n_rw = len(rewrite)
    batch = make_batch(tok.pad_token_id, [e[0] for e in rewrite + essence],
                       [new_ids] * n_rw + [[] for _ in essence],
                       [e[1] for e in rewrite + essence]).to(device)
    rows = torch.arange(batch.input_ids.shape[0], device=device)
    ess_rows, ess_pos = rows[n_rw:], batch.subject_index[n_rw:]

    spec = arch_of(model)
    lm_head = model.get_submodule(spec.lm_head)
    target_rows, target_pos = (batch.labels[:n_rw] != -100).nonzero(as_tuple=True)
    target_tokens = batch.labels[target_rows, target_pos]
    n_tok = torch.bincount(target_rows, minlength=n_rw)
    delta = initial = None  # created by the first forward pass, where v_init is first seen

    def add_delta(output, name):
        nonlocal delta, initial
        if name != module_name:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        if initial is None:
            initial = hidden[rows[:n_rw], batch.subject_index[:n_rw]].detach().float().mean(0)
            delta = torch.zeros_like(initial, requires_grad=True)
        hidden = hidden.clone()
        hidden[rows, batch.subject_index] += delta.to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    def forward():
        # Stop after the final norm and apply the LM head only where a loss is taken: the
        # full-vocabulary head over every position would cost more than the layers above δ.
        with Trace(model, [module_name, spec.final_norm], edit_output=add_delta, retain_output=True,
                   detach=False, stop=True) as tr:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        final = tr[spec.final_norm].output
        target_logp = torch.log_softmax(lm_head(final[target_rows, target_pos]).float(), dim=-1)
        picked = target_logp.gather(-1, target_tokens.unsqueeze(-1)).squeeze(-1)
        lp_sum = torch.zeros(n_rw, dtype=picked.dtype, device=device).index_add(0, target_rows, picked)
        ess_logp = torch.log_softmax(lm_head(final[ess_rows, ess_pos]).float(), dim=-1)
        if objective == "suppress":
            return object_unlikelihood(lp_sum), ess_logp, lp_sum.exp().max().item()
        return mean_target_nll(lp_sum, n_tok), ess_logp, None

    with frozen(model):
        with torch.no_grad():
            nll0, ess_init, _ = forward()
        opt = torch.optim.Adam([delta], lr=lr)
        max_norm = clamp_norm_factor * initial.norm()
        taken, converged = 0, False
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nll, ess_logp, prob = forward()
            if (nll.item() < nll_stop) if prob is None else (prob < stop_prob):
                converged = True
                break
            taken += 1
            loss = (nll + kl_factor * kl_to_initial(ess_logp, ess_init)
                    + weight_decay * relative_weight_decay(delta, initial))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"value optimisation diverged at step {taken} (loss={loss.item()})")
            loss.backward()
            opt.step()
            with torch.no_grad():
                clamp_norm(delta, float(max_norm))
        if not converged:
            with torch.no_grad():
                nll, _, _ = forward()
    return ValueResult(delta.detach(), initial, nll0.item(), nll.item(), taken)
