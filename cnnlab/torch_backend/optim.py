"""torch.optim state in cnnlab's checkpoint layout, and back.

cnnlab's optimizers keep torch.optim's layout (cnnlab/optim.py): ``{"state": {i: {"step",
"exp_avg", "exp_avg_sq"} or {"momentum_buffer"}}, "param_groups": [hyperparameters]}``. The
torch backend saves its optimizer in that layout with NumPy arrays, so a checkpoint holds the
same keys whichever backend wrote it, and torch-only settings (``foreach``, ``fused``, ...)
never reach the file.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import CheckpointError

# the hyperparameters cnnlab's SGD, Adam and AdamW keep (and their checkpoints hold)
_HYPERPARAMETERS = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "Adam": ("lr", "betas", "eps", "weight_decay"),
    "AdamW": ("lr", "betas", "eps", "weight_decay"),
}


def optimizer_state_to_numpy(optimizer) -> dict:
    """``optimizer.state_dict()`` of a torch SGD/Adam/AdamW in cnnlab's layout (NumPy arrays)."""
    import torch

    saved = optimizer.state_dict()
    names = _HYPERPARAMETERS[type(optimizer).__name__]
    state = {}
    for index, entry in saved["state"].items():
        converted = {}
        for key, value in entry.items():
            if key == "step":
                converted[key] = int(value.item() if isinstance(value, torch.Tensor) else value)
            elif isinstance(value, torch.Tensor):
                converted[key] = value.detach().cpu().numpy().copy()
        state[int(index)] = converted
    groups = []
    for group in saved["param_groups"]:
        kept = {name: group[name] for name in names}
        if "betas" in kept:
            kept["betas"] = tuple(float(beta) for beta in kept["betas"])
        kept["params"] = list(group["params"])
        groups.append(kept)
    return {"state": state, "param_groups": groups}


def load_numpy_optimizer_state(optimizer, state_dict: dict) -> None:
    """Load a cnnlab-layout optimizer state (as :func:`optimizer_state_to_numpy` gives, or as
    read back from a checkpoint) into a torch optimizer over the same parameters."""
    import torch

    name = type(optimizer).__name__
    template = optimizer.state_dict()
    try:
        groups, saved_state = state_dict["param_groups"], state_dict["state"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{name} state must have 'state' and 'param_groups'") from None
    if len(groups) != len(template["param_groups"]) or any(
            len(saved.get("params", ())) != len(ours["params"])
            for saved, ours in zip(groups, template["param_groups"])):
        raise CheckpointError(f"the checkpoint's optimizer state is for another model "
                              f"({sum(len(g.get('params', ())) for g in groups)} parameters)")
    for ours, saved in zip(template["param_groups"], groups):
        for key in _HYPERPARAMETERS[name]:
            if key not in saved:
                raise CheckpointError(f"{name} state lacks the hyperparameter '{key}': it was "
                                      "saved by another optimizer")
            ours[key] = tuple(saved[key]) if key == "betas" else saved[key]
    state = {}
    for index, entry in saved_state.items():
        converted = {}
        for key, value in entry.items():
            if key == "step":
                # torch keeps Adam's step as a float32 tensor on the CPU
                converted[key] = torch.tensor(float(value), dtype=torch.float32)
            else:
                converted[key] = torch.from_numpy(np.array(value, dtype=np.float32))
        state[int(index)] = converted
    template["state"] = state
    try:
        optimizer.load_state_dict(template)
    except (ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this model: "
                              f"{str(error).splitlines()[0] if str(error) else error!r}") from None
