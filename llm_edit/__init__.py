"""llm-edit: edit and unlearn knowledge in Hugging Face causal language models.

The public names load on first use (PEP 562), so ``import llm_edit`` and the command line start
without importing torch and transformers first: the CLI's own Ctrl-C handling then covers
those imports too.
"""
_EXPORTS = {
    "FactFileError": "core.files",
    "load_model": "core.models",
    "WeightDelta": "core.patch", "apply_patch": "core.patch", "load_patch": "core.patch",
    "EditRequest": "editing.requests", "Neighbor": "editing.requests", "read_requests": "editing.requests",
    "write_requests": "editing.requests",
    "EditResult": "editing.edit", "edit": "editing.edit",
    "EditSession": "editing.session",
    "ForgetItem": "unlearning.items", "read_items": "unlearning.items",
    "ForgetResult": "unlearning.forget", "forget": "unlearning.forget",
    "audit": "auditing.audit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name == "__version__":  # on first use too: importlib.metadata costs the start-up ~50 ms
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("llm-edit")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            value = "0+unknown"
        globals()[name] = value
        return value
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # llm_edit.core.config etc., as before
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'llm_edit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
