"""llm-edit: edit and unlearn knowledge in Hugging Face causal language models.

The public names load on first use (PEP 562), so ``import llm_edit`` and the command line start
without importing torch and transformers first: the CLI's own Ctrl-C handling then covers
those imports too.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "EditRequest": "facts", "FactFileError": "facts", "Neighbor": "facts", "read_requests": "facts",
    "write_requests": "facts",
    "load_model": "models",
    "WeightDelta": "patch", "apply_patch": "patch", "load_patch": "patch",
    "EditResult": "api", "ForgetResult": "api", "edit": "api", "forget": "api",
    "ForgetItem": "forget_data", "read_items": "forget_data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # llm_edit.config etc., as before
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'llm_edit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
