"""Optimizers: AdamW with weight decay on matrices only, or Muon for hidden matrices.

Decay applies to parameters with two or more dimensions (linear and embedding matrices), not
to norms' gains or biases (Loshchilov & Hutter 2019; nanoGPT's grouping). Muon (Jordan et al.
2024, ``torch.optim.Muon``) orthogonalizes the updates of 2-D hidden weights; embeddings,
the output head and 1-D parameters stay with AdamW, as its authors recommend.

Optimizer state is saved without pickle: tensors to safetensors, everything else to JSON.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmkit.errors import UserError

OPTIMIZERS = ("adamw", "muon")


class Optimizers:
    """One or two torch optimizers stepped together, with one flat state for checkpoints."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_tensors(self, states: list[dict] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for safetensors, JSON-able rest) of every optimizer's state_dict (or of the
        given state dicts, e.g. gathered from a sharded model and keyed by parameter name)."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"optimizers": [], "keys": "index" if states is None else "name"}
        for index, opt in enumerate(self.optimizers):
            state = opt.state_dict() if states is None else states[index]
            scalars: dict[str, dict[str, Any]] = {}
            for param_id, values in state["state"].items():
                for name, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"{index}.{param_id}.{name}"] = value.detach().clone().contiguous()
                    else:
                        scalars.setdefault(str(param_id), {})[name] = value
            meta["optimizers"].append({"param_groups": state["param_groups"], "scalars": scalars,
                                       "params_with_state": [str(k) for k in state["state"]]})
        return tensors, meta

    def saved_states(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> list[dict]:
        """The state dicts that ``state_tensors`` flattened, rebuilt."""
        by_name = meta.get("keys") == "name"
        states = []
        for index, saved in enumerate(meta["optimizers"]):
            state: dict[Any, dict[str, Any]] = {}
            for param_id in saved["params_with_state"]:
                values = dict(saved["scalars"].get(param_id, {}))
                prefix = f"{index}.{param_id}."
                values.update({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
                state[param_id if by_name else int(param_id)] = values
            states.append({"state": state, "param_groups": saved["param_groups"]})
        return states

    def keyed_by_name(self, states: list[dict], model: nn.Module) -> list[dict]:
        """Index-keyed state dicts (an unsharded run's) keyed by parameter name instead, as a sharded run saves
        them: index i is the i-th parameter of the optimizer's groups, in order."""
        names = {id(param): name for name, param in model.named_parameters()}
        keyed = []
        for opt, state in zip(self.optimizers, states):
            order = [names[id(param)] for group in opt.param_groups for param in group["params"]]
            keyed.append({"state": {order[int(index)]: values for index, values in state["state"].items()},
                          "param_groups": [{**group, "params": [order[int(i)] for i in group["params"]]}
                                           for group in state["param_groups"]]})
        return keyed

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta.get("keys") == "name":
            raise ValueError("name-keyed optimizer state belongs to a sharded run")  # see distributed
        for opt, state in zip(self.optimizers, self.saved_states(tensors, meta)):
            opt.load_state_dict(state)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float]) -> Optimizers:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    if name == "adamw":
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return Optimizers([torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)])  # one kernel, CPU and CUDA
    if name == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise UserError(f"--optimizer muon: needs torch.optim.Muon (torch 2.9 or newer); this is torch "
                            f"{torch.__version__} (upgrade torch, or use --optimizer adamw)")
        # Hidden 2-D weights go to Muon; embeddings and the (tied) output head stay with AdamW.
        outer = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        head = getattr(model, "lm_head", None)
        if isinstance(head, nn.Linear):
            outer.add(id(head.weight))
        hidden = [p for _, p in named if p.dim() == 2 and id(p) not in outer]
        hidden_ids = {id(p) for p in hidden}
        rest_decay = [p for p in decay if id(p) not in hidden_ids]
        adamw = torch.optim.AdamW([{"params": rest_decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, fused=True)
        muon = torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        return Optimizers([adamw, muon])
    raise ValueError(f"unknown optimizer {name!r}")
