"""Resumable checkpoints of an unlearning run: the trainable weights and the optimizer state as
safetensors, the step, log and scheduler as JSON (no pickles), one atomic folder per step."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING

import torch

from ..core.config import ConfigError

if TYPE_CHECKING:
    from .trainer import Trainer


def config_hash(config) -> str:
    """The hyper-parameters that differ from their defaults (as ``finetune_key``): a key added to
    the config later, at a default that keeps today's behaviour, leaves checkpoints resumable."""
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != f.default}
    return hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(trainer: "Trainer") -> dict[str, torch.Tensor]:
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}


def save_checkpoint(trainer: "Trainer", step: int) -> None:
    """``checkpoint_dir/step-NNNNNN``: written by the main process only."""
    from safetensors.torch import save_file

    from ..core.files import atomic_directory, write_json

    if not trainer.accelerator.is_main_process:
        return
    opt = trainer.optimizer.state_dict()
    flat = {f"{pid}.{k}": v.detach().cpu().contiguous() for pid, st in opt["state"].items()
            for k, v in st.items() if torch.is_tensor(v)}
    final = trainer.checkpoint_dir / f"step-{step:06d}"
    with atomic_directory(final, overwrite=True) as tmp:
        save_file(trainable_state(trainer), str(tmp / "trainable.safetensors"))
        save_file(flat, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {"step": step, "config_hash": config_hash(trainer.config),
                                        "param_groups": opt["param_groups"], "log": trainer.log,
                                        "scheduler": trainer.scheduler.state_dict()})


def load_checkpoint(trainer: "Trainer") -> int:
    """Resume from the newest checkpoint in ``checkpoint_dir``; returns the next step."""
    from safetensors.torch import load_file

    if trainer.checkpoint_dir is None or not trainer.checkpoint_dir.is_dir():
        return 0
    steps = sorted(trainer.checkpoint_dir.glob("step-*"))
    if not steps:
        return 0
    folder = steps[-1]
    state = json.loads((folder / "state.json").read_text())
    if state["config_hash"] != config_hash(trainer.config):
        raise ConfigError(f"{folder}: checkpoint was made with other hyper-parameters; "
                          f"use another --checkpoint-dir or delete it")
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    trainable = load_file(str(folder / "trainable.safetensors"))
    missing = unwrapped.load_state_dict(trainable, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{folder}: unexpected weights {missing.unexpected_keys[:3]}")
    flat = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, tensor in flat.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = tensor
    trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.log = state["log"]
    return state["step"]
