"""What the commands share: the model flags, loading, the checks made before any work."""
from __future__ import annotations

import argparse
from pathlib import Path

EXIT_BAD_INPUT = 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama", help="alias, hub id, model directory or .gguf file (default: llama)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code from the hub (off by default)")


def load(args):
    from ..core.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def check_requests_fit(model, tok, source, numbered) -> None:
    """Every prompt of an edit file fits the model's context (checked before any work)."""
    from ..core.text import check_context, context_length
    from ..editing.requests import request_texts

    check_context(tok, context_length(model), str(source),
                  (e for line, r in numbered for e in request_texts(line, r)))


def check_items_fit(model, tok, source, numbered) -> None:
    from ..core.text import check_context, context_length
    from ..unlearning.items import item_texts

    check_context(tok, context_length(model), str(source), (e for line, x in numbered for e in item_texts(line, x)))


def check_out(args) -> None:
    from ..core.files import check_output_dir

    check_output_dir(args.out, overwrite=args.overwrite)


def save_model(model, tok, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def layers_to_sets(args, config_cls) -> None:
    """``--layers auto`` (or a value) sets the recipe key ``layers`` (MEMIT) or ``layer`` (ROME, RMU)."""
    import dataclasses

    if args.layers is None:
        return
    fields = {f.name for f in dataclasses.fields(config_cls)}
    key = "layers" if "layers" in fields else "layer" if "layer" in fields else None
    if key is None:
        from ..core.config import ConfigError

        raise ConfigError(f"--layers: method {args.method!r} has no layer to choose")
    args.sets = list(args.sets) + [f"{key}={args.layers}"]


def eval_settings(args):
    from ..core.config import ConfigError
    from ..evaluating.tofu import EvalSettings

    if args.max_new_tokens < 1 or args.batch_size < 1 or args.generation_batch_size < 1:
        raise ConfigError("--max-new-tokens, --batch-size and --generation-batch-size must be at least 1")
    return EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        generation_batch_size=args.generation_batch_size)


def tofu_task(args):
    from ..core.config import ConfigError
    from ..evaluating.tofu import make_task

    try:
        return make_task(args.split, args.authors, data=args.tofu_data, eval_limit=args.eval_limit,
                         forget_authors=args.forget_authors, forget_block=args.forget_block)
    except ValueError as e:
        raise ConfigError(str(e)) from None
