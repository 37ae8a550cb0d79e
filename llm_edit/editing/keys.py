"""Keys and the layers they are read at, shared by ROME, MEMIT and AlphaEdit.

A *key* k is the input of an MLP output projection at the subject's last token, averaged over
context prefixes the model writes itself (ROME eq. 3: ``context_templates``). ``resolve_layers``
says which blocks a batch edit writes (a range ending where causal tracing finds the facts), and
``spread_over_layers`` runs MEMIT's loop over them: each layer takes its share of the residual
between the target values and what the top layer now produces, solved by the method's own solve.
"""
from __future__ import annotations

import weakref

import torch

from ..core.arch import arch_of
from ..core.forms import Form
from ..core.hooks import Trace
from ..core.text import encode_with_subject, make_batch
from .requests import EditRequest

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
                 batch_size: int = 32, output: bool = False) -> torch.Tensor:
    """Input (or, with ``output``, the output) of ``module_name`` at each prompt's last subject
    token, shape (n, d), float32."""
    return _keys_at(model, tok, module_name, [encode_with_subject(tok, t, s) for t, s in zip(templates, subjects)],
                    batch_size, output)


@torch.no_grad()
def _keys_at(model, tok, module_name: str, encoded: list[tuple[list[int], int]], batch_size: int = 32,
             output: bool = False) -> torch.Tensor:
    """``subject_keys`` of prompts already encoded as (ids, index of the subject's last token)."""
    device = next(model.parameters()).device
    rows = []
    for i in range(0, len(encoded), batch_size):
        enc = encoded[i:i + batch_size]
        batch = make_batch(tok.pad_token_id, [e[0] for e in enc], subject_index=[e[1] for e in enc])
        batch = batch.to(device)
        with Trace(model, [module_name], retain_input=not output, retain_output=output, stop=True) as tr:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        keys = tr[module_name].output if output else tr[module_name].input
        rows.append(keys[torch.arange(len(enc), device=device), batch.subject_index].float())
    return torch.cat(rows)


def mean_subject_keys(model, tok, module_name: str, requests: list[EditRequest], contexts: list[str],
                      bare_weight: float | None = None, forms: list[list[Form]] | None = None,
                      form_weight: float = 0.0) -> torch.Tensor:
    """k* of each request: the key averaged over context prefixes (ROME eq. 3), (n, d_in);
    every request's prompts go through in the same batched passes.

    ``contexts[0]`` must be the bare ``"{}"``. With ``bare_weight`` None every template counts
    the same (ROME, r-ROME); otherwise the bare prompt's key gets that weight and the prefixed
    ones share the rest. Deviation, measured in the README: where the subject opens the prompt
    its bare key sits at position 0 (an attention sink on models without BOS) and differs from
    every prefixed key, so an equal average can miss the very prompt being edited.

    ``forms[i]`` (``core.forms.Form``, the value optimisation's derived forms) with ``form_weight``
    w > 0: k* = (1 − w)·(the average above) + w·(the mean key at the subject in request i's forms),
    so the update also writes where the fact is asked as a chat turn (another deviation of ours:
    the rank-one update writes δ·(dᵀk) at a key k, and a chat turn's key gets about 0.9 of it with
    prefixes alone, README, "Giving each prompt what the update writes there"). A request without
    forms keeps the average.
    """
    templates = [c.replace("{}", r.prompt) for r in requests for c in contexts]
    subjects = [r.subject for r in requests for _ in contexts]
    keys = subject_keys(model, tok, module_name, templates, subjects).view(len(requests), len(contexts), -1)
    if bare_weight is None or len(contexts) == 1:
        mean = keys.mean(1)
    else:
        mean = bare_weight * keys[:, 0] + (1 - bare_weight) * keys[:, 1:].mean(1)
    if not forms or form_weight <= 0:
        return mean
    owners = [i for i, fs in enumerate(forms) for _ in fs]
    if not owners:
        return mean
    encoded = [encode_with_subject(tok, f.template, requests[i].subject, chat=f.chat, reply=f.reply)
               for i, fs in enumerate(forms) for f in fs]
    form_keys = _keys_at(model, tok, module_name, encoded)
    mixed = mean.clone()
    for i in sorted(set(owners)):
        rows = form_keys[[j for j, o in enumerate(owners) if o == i]]
        mixed[i] = (1 - form_weight) * mean[i] + form_weight * rows.mean(0)
    return mixed


def mean_subject_key(model, tok, module_name: str, request: EditRequest, contexts: list[str],
                     bare_weight: float | None = None, forms: list[Form] | None = None,
                     form_weight: float = 0.0) -> torch.Tensor:
    """k* of one request (``mean_subject_keys``; ``forms``: that request's derived forms), (d_in,)."""
    return mean_subject_keys(model, tok, module_name, [request], contexts, bare_weight,
                             [forms] if forms else None, form_weight)[0]


def top_states(model, tok, module_name: str, requests: list[EditRequest], contexts: list[str]) -> torch.Tensor:
    """The output of ``module_name`` (MEMIT, AlphaEdit: the top edited block) at each request's
    last subject token, averaged over the context prompts: (n, d), float32. MEMIT re-measures it
    after each layer's update to find what the layers above still have to write."""
    templates = [c.replace("{}", r.prompt) for r in requests for c in contexts]
    subjects = [r.subject for r in requests for _ in contexts]
    states = subject_keys(model, tok, module_name, templates, subjects, output=True)
    return states.view(len(requests), len(contexts), -1).mean(1)


def through_post_norm(model, tok, layer: int, requests: list[EditRequest], contexts: list[str],
                      residuals: torch.Tensor) -> torch.Tensor:
    """The change of the MLP output that moves the residual stream by ``residuals`` (n, d) where
    an RMS norm N(m) = s ⊙ m / rms(m) sits between the MLP and the residual (``mlp_post_norm``,
    Gemma 2 and 3). MEMIT's solve writes ΔW k = r, which there moves the residual by about
    (s / rms(m)) ⊙ r instead: on Gemma 3 270M s ranges from 0 to several hundred within a layer,
    so some coordinates moved hundreds of times too far (MEMIT scored efficacy 0.61 on 100
    CounterFact records; its erasure broke the model).

    N is scale-invariant, so the residual can only turn: the MLP output is moved to the
    direction of N⁻¹(N(m) + r) = m / rms(m) + r / s, kept at m's own size (m averaged over the
    context prompts, as the residual is). Coordinates the norm all but zeroes (|s| below a tenth
    of its median) cannot be written through it at any cost and are left as they are; on the
    others N(m) turns to N(m) + r's direction exactly. A residual large next to N(m) therefore
    moves it less than r. Computed in float32 whatever the model's dtype."""
    spec = arch_of(model)
    norm = model.get_submodule(spec.mlp_post_norm.format(layer))
    templates = [c.replace("{}", r.prompt) for r in requests for c in contexts]
    subjects = [r.subject for r in requests for _ in contexts]
    outputs = subject_keys(model, tok, spec.mlp_out.format(layer), templates, subjects, output=True)
    with torch.no_grad():
        scale = norm(torch.ones(1, outputs.shape[-1], device=outputs.device)).float()[0]

    def rms(x):
        return x.pow(2).mean(-1, keepdim=True).sqrt()

    n = len(requests)
    direction = (outputs / rms(outputs)).view(n, len(contexts), -1).mean(1)  # N(m) / s, without dividing by s
    writable = scale.abs() >= 0.1 * scale.abs().median()
    wanted = direction + torch.where(writable, residuals.to(outputs) / torch.where(writable, scale, 1.0), 0.0)
    outputs = outputs.view(n, len(contexts), -1).mean(1)
    return (wanted * rms(outputs) / rms(wanted) - outputs).to(residuals)


def check_layer_range(config) -> None:
    """Validate the layer-range keys MEMIT and AlphaEdit share (``layers``, ``auto_layer_count``,
    ``batch_size``): raises ``ValueError`` naming the key."""
    if isinstance(config.layers, str):
        if config.layers != "auto":
            raise ValueError(f"layers must be a list of block indices or 'auto', got {config.layers!r}")
    elif not config.layers or any(l < 0 for l in config.layers) or config.layers != sorted(set(config.layers)):
        raise ValueError(f"layers must be distinct block indices in increasing order, got {config.layers}")
    if config.auto_layer_count < 1 or config.batch_size < 1:
        raise ValueError("auto_layer_count >= 1 and batch_size >= 1 are required")


def resolve_layers(model, tok, config) -> tuple[list[int], dict | None]:
    """The edited blocks (``layers: auto``: causal tracing's, ending at the traced peak) and the
    tracing summary; a block the model lacks raises ``ConfigError``."""
    from ..core.arch import num_layers
    from ..core.config import ConfigError

    located, layers = None, config.layers
    if layers == "auto":
        from ..locating.average import auto_layers

        layers, located = auto_layers(model, tok, config.auto_layer_count)
    if layers[-1] >= num_layers(model):
        raise ConfigError(f"layer {layers[-1]} does not exist: the model has {num_layers(model)} layers")
    return list(layers), located


def spread_over_layers(model, tok, requests: list[EditRequest], contexts: list[str], layers: list[int],
                       targets: torch.Tensor, bare_key_weight: float | None, solve, *,
                       forms: list[list[Form]] | None = None, form_weight: float = 0.0):
    """MEMIT's Algorithm 1 (Meng et al. 2023, §4.3), the layer loop MEMIT and AlphaEdit share:
    for each layer from bottom to top, the keys K and the residual R = (Z − H)/(layers
    remaining), H the top layer's current states at the subject; ``solve(layer, residuals,
    keys)`` gives the layer's update as factors (d_out, n), (n, d_in), applied before moving up
    because the next layer's keys and H depend on it. Every update is taken out again at the end.
    The keys mix in each request's ``forms`` by ``form_weight`` (``mean_subject_keys``), and those
    mixed keys are what is returned per module (AlphaEdit keeps later batches off them).
    Returns the factors per weight (in its storage layout) and the keys per module."""
    from ..core.patch import WeightDelta

    spec = arch_of(model)
    top = spec.layer(layers[-1])
    factors, keys_by_module, applied = {}, {}, []
    try:
        for i, layer in enumerate(layers):
            name = spec.mlp_out.format(layer)
            keys = mean_subject_keys(model, tok, name, requests, contexts, bare_key_weight, forms, form_weight)
            residuals = (targets - top_states(model, tok, top, requests, contexts)) / (len(layers) - i)
            if spec.mlp_post_norm:
                residuals = through_post_norm(model, tok, layer, requests, contexts, residuals)
            left, right = solve(layer, residuals, keys)
            if spec.mlp_out_transposed:  # Conv1D stores (in, out)
                left, right = right.T, left.T
            factors[name + ".weight"] = (left, right)
            keys_by_module[name] = keys
            # in place only while the next layers' residuals are computed, reverted below: no base to check
            applied.append(WeightDelta({name + ".weight": (left, right)}).apply(model, check_base=False))
    finally:
        for delta in reversed(applied):
            delta.revert(model)
    return factors, keys_by_module
