"""Read or rewrite module inputs and outputs during a forward pass.

``Trace`` is the one hook mechanism of llm-edit (baukit's ``TraceDict`` semantics): a context
manager that registers forward hooks on named modules and removes every one of them on exit,
also when the body raises or is interrupted. Edits to weights never use hooks; hooks exist
only while measuring or optimising.

    with Trace(model, ["model.layers.4.mlp.down_proj"], retain_input=True) as tr:
        model(**batch)
    keys = tr["model.layers.4.mlp.down_proj"].input     # (batch, seq, d_in)

``edit_output(output, name) -> output`` replaces a module's output (for example to add an
optimised vector at one token); it is called with the module's raw output. ``stop=True`` ends
the forward pass once every traced module has run (the ``with`` block swallows the stop), so
reading layer 4 of 30 costs a fifth of a forward pass.

``replay_blocks`` is the converse for the blocks *below* a layer: when many runs share their
lower blocks' outputs (causal tracing restores one state at layer l; every block below l
computes exactly what the corrupted run computed), those blocks return the recorded outputs
instead of recomputing them. Also a context manager that always restores the modules.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch


class StopForward(Exception):
    pass


class _Record:
    __slots__ = ("input", "output")

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.output = None


class Trace:
    def __init__(
        self,
        model: torch.nn.Module,
        names: Iterable[str],
        *,
        retain_input: bool = False,
        retain_output: bool = False,
        detach: bool = True,
        edit_output: Callable[[object, str], object] | None = None,
        stop: bool = False,
    ) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.retain_input = retain_input
        self.retain_output = retain_output
        self.detach = detach
        self.edit_output = edit_output
        self.stop = stop
        self._fired: set[str] = set()
        self.records: dict[str, _Record] = {}
        self._handles: list = []

    def __getitem__(self, name: str) -> _Record:
        return self.records[name]

    def __enter__(self) -> "Trace":
        try:
            for name in self.names:
                module = self.model.get_submodule(name)  # raises a clear AttributeError
                self.records[name] = _Record()
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        return exc_type is StopForward

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, name: str):
        record = self.records[name]

        def keep(t):
            return t.detach() if (self.detach and isinstance(t, torch.Tensor)) else t

        def hook(module, inputs, output):
            if self.retain_input:
                record.input = keep(inputs[0]) if inputs else None
            if self.edit_output is not None:
                output = self.edit_output(output, name)
            if self.retain_output:
                record.output = keep(output[0] if isinstance(output, tuple) else output)
            if self.stop:
                self._fired.add(name)
                if len(self._fired) == len(self.names):
                    self._fired.clear()
                    raise StopForward
            return output

        return hook


@contextlib.contextmanager
def replay_blocks(blocks: Sequence[torch.nn.Module], outputs: Sequence[object]):
    """Within the ``with``: ``blocks[i]`` skips its computation and returns ``outputs[i]``.

    Only the output of the last replayed block reaches the rest of the model, but every block
    returns its own recording, so nothing that looks at intermediate outputs is misled. The
    outputs must match the current batch's shape (the caller expands them)."""
    replaced = []
    try:
        for block, out in zip(blocks, outputs):
            block.forward = (lambda out: lambda *args, **kwargs: out)(out)  # instance attribute shadows the class's
            replaced.append(block)
        yield
    finally:
        for block in replaced:
            del block.forward
