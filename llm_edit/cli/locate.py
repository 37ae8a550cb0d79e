"""``llm-edit locate``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_BAD_INPUT, add_model_args, check_out, load

HELP = "causal tracing: which layers and tokens carry a fact"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompt", help="the factual prompt, with {} for the subject or the subject verbatim")
    p.add_argument("--subject", help="the subject whose tokens are corrupted")
    p.add_argument("--target", help="the object (default: the model's own top next token)")
    p.add_argument("--facts", help="average tracing over a file of facts ('knowns': ROME's 1,209 known facts)")
    p.add_argument("--limit", type=int, default=50, help="average over the first N facts the model answers correctly")
    p.add_argument("--kinds", default="hidden,mlp,attn", help="states to restore: hidden, mlp, attn (comma-separated)")
    p.add_argument("--samples", type=int, default=10, help="noise draws per run (ROME: 10)")
    p.add_argument("--window", type=int, default=10, help="layers restored together for mlp/attn (ROME: 10)")
    p.add_argument("--noise", type=float, help="noise scale (default: 3 x std of subject embeddings over the known facts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256, help="sequences per forward pass")
    p.add_argument("--out", required=True, help="output directory (trace.json + heat maps, or average.json + plot)")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from ..core.files import atomic_directory, run_info, write_json
    from ..core.models import fingerprint
    from ..locating import trace as locate
    from ..locating.average import trace_facts
    from ..locating.plots import plot_average

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in locate.KINDS]
    if unknown or not kinds:
        print(f"llm-edit: error: --kinds: unknown kind(s) {unknown}; choose from {', '.join(locate.KINDS)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if bool(args.facts) == bool(args.prompt or args.subject):
        print("llm-edit: error: give either --prompt and --subject (one fact) or --facts FILE (average tracing)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.prompt and not args.subject:
        print("llm-edit: error: --prompt needs --subject", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        locate.check_settings(prompt=args.prompt, subject=args.subject, target=args.target, samples=args.samples,
                              window=args.window, noise=args.noise, limit=args.limit, batch_size=args.batch_size)
    except ValueError as e:
        from ..core.config import ConfigError

        raise ConfigError(f"locate: {e}") from None
    facts = locate.known_facts(None if args.facts == "knowns" else args.facts) if args.facts else None
    check_out(args)
    model, tok = load(args)
    if facts is None:
        from ..core.text import check_context, context_length

        check_context(tok, context_length(model), "--prompt", [(None, "prompt", args.prompt, " " + (args.target or ""))])
    settings = {"kinds": kinds, "samples": args.samples, "window": args.window, "seed": args.seed}
    manifest = {"model": args.model, "model_fingerprint": fingerprint(model), **settings, **run_info()}
    if facts is None:
        result = locate.trace(model, tok, args.prompt, args.subject, args.target, noise=args.noise,
                              batch_size=args.batch_size, progress=True, **settings)
        with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
            write_json(out / "trace.json", {**result.to_dict(), "manifest": manifest})
            for kind in kinds:
                result.plot(out / f"trace_{kind}.png", kind)
        print(f"{result.prompt!r} -> {result.target!r}: p clean {result.p_clean:.3f}, corrupted "
              f"{result.p_corrupted:.3f} (noise {result.noise_scale:.3f}, {result.samples} draws) "
              f"in {result.seconds:.1f} s" + ("" if result.correct else "; NOTE: not the model's top prediction"))
        for kind in kinds:
            ie = result.indirect_effect(kind).nan_to_num(nan=-1.0)
            t, l = divmod(int(ie.argmax()), ie.shape[1])
            at_subject = ie[result.subject_last]
            print(f"  {locate.KINDS[kind]:<28} strongest: token {t} {result.tokens[t]!r}, layer {l} "
                  f"(IE {ie[t, l]:.3f}); at the last subject token peaks at layer {int(at_subject.argmax())}")
        print(f"-> {args.out}")
        return 0
    if args.noise is not None:
        print("llm-edit: error: --noise applies to one trace; average tracing estimates it from the known facts",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    avg = trace_facts(model, tok, facts, limit=args.limit, batch_size=args.batch_size, **settings)
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_json(out / "average.json", {**avg.to_dict(), "facts_file": args.facts, "manifest": manifest})
        plot_average(avg, out / "average.png")
    print(f"average indirect effect over {avg.n_facts} facts the model answers correctly "
          f"(of {avg.n_tried} tried), {avg.seconds:.0f} s")
    print("layer " + "".join(f"{k + '@subj':>12}{k + '@last':>12}" for k in kinds))
    for layer in range(len(avg.effects[kinds[0]]["last_subject"])):
        print(f"{layer:>5} " + "".join(f"{avg.effects[k]['last_subject'][layer]:>12.4f}"
                                      f"{avg.effects[k]['last'][layer]:>12.4f}" for k in kinds))
    if "mlp" in kinds:
        print(f"peak of the MLP effect at the last subject token: layer {avg.peak('mlp')} "
              "(what --layers auto chooses)")
    print(f"-> {args.out}")
    return 0
