"""Training state that a resume restores exactly: RNG states, the poly schedule's position, the metrics rows."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.utils import atomic_path

__all__ = ["rng_state", "set_rng_state", "seed_all", "seek_schedule", "trim_metrics"]


def rng_state() -> dict[str, Any]:
    """RNG states as tensors / lists so ``torch.load(weights_only=True)`` can read them."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "python": {"version": int(py_state[0]), "state": list(py_state[1]),
                        "gauss": py_state[2] if py_state[2] is None else float(py_state[2])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seek_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, iteration: int) -> None:
    """Put a closed-form LambdaLR at ``iteration`` and set each group's lr accordingly."""
    scheduler.last_epoch = iteration
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(iteration)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def trim_metrics(path: Path, start_epoch: int) -> None:
    """Keep only the metrics rows of epochs before ``start_epoch`` (all of them for a fresh run: none)."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", -1) < start_epoch:
                rows.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    with atomic_path(path) as tmp:
        tmp.write_text("".join(r + "\n" for r in rows))
