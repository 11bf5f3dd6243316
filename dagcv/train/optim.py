"""Optimizers, schedules and optimizer groups, shared by every loop.

An *optimizer group* owns the parameters of some blocks, minimises a weighted sum of some Loss outputs, and
steps every ``every`` steps. One group over every block is plain supervised learning; a discriminator group and
a generator group stepped 5:1 is WGAN's schedule; an actor and a critic group is actor-critic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dagcv.train.config import OptimizerConfig, ScheduleConfig, SupervisedConfig
from dagcv.train.context import NonFiniteLoss


@dataclass
class OptimizerGroup:
    name: str
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[nn.Parameter]
    losses: dict[str, float]  # Loss output → weight
    every: int = 1
    last: dict[str, torch.Tensor] = field(default_factory=dict)  # detached losses of its last step


def make_optimizer(cfg: OptimizerConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.type == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.type == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps, weight_decay=cfg.weight_decay)
    kind = torch.optim.Adam if cfg.type == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: ScheduleConfig | None, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """A per-step LR scheduler (None for a constant rate)."""
    if cfg is None or cfg.type == "constant":
        return None
    S = torch.optim.lr_scheduler
    if cfg.type == "step":
        main = S.StepLR(optimizer, step_size=cfg.step_size or max(1, total_steps // 3), gamma=cfg.gamma)
    elif cfg.type == "multistep":
        main = S.MultiStepLR(optimizer, milestones=cfg.milestones or [], gamma=cfg.gamma)
    elif cfg.type == "onecycle":
        return S.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps)
    else:
        main = S.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - cfg.warmup_steps), eta_min=cfg.min_lr)
    if cfg.warmup_steps:
        warm = S.LinearLR(optimizer, start_factor=1e-3, total_iters=cfg.warmup_steps)
        return S.SequentialLR(optimizer, [warm, main], milestones=[cfg.warmup_steps])
    return main


def make_groups(
    model: nn.Module, cfg: SupervisedConfig, loss_outputs: list[str], total_steps: int
) -> list[OptimizerGroup]:
    """One :class:`OptimizerGroup` per configured optimizer."""
    weights = cfg.losses or dict.fromkeys(loss_outputs, 1.0)
    groups = []
    for i, opt in enumerate(cfg.optimizers):
        if opt.blocks is None:
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            params = [p for b in opt.blocks for p in getattr(model, b).parameters() if p.requires_grad]
        losses = {k: weights.get(k, 1.0) for k in (opt.losses or weights)}
        optimizer = make_optimizer(opt, params)
        groups.append(
            OptimizerGroup(
                f"opt{i}" if len(cfg.optimizers) > 1 else "opt",
                optimizer,
                make_scheduler(cfg.schedule, optimizer, total_steps),
                params,
                losses,
                opt.every,
            )
        )
    return groups


class GroupStepper:
    """One training step over optimizer groups: forward the train program, sum each group's weighted losses,
    backward, clip, step (each group every ``every`` steps)."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[OptimizerGroup],
        *,
        grad_clip: float | None,
        amp: bool,
        device: torch.device,
    ) -> None:
        self.model, self.groups, self.grad_clip = model, groups, grad_clip
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One training step (``step`` counts from 1); returns the detached losses of the groups that ran."""
        logs: dict[str, torch.Tensor] = {}
        for group in self.groups:
            if (step - 1) % group.every:
                continue
            group.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=self.amp):
                out = self.model(**batch)
            parts = {name: out[name] for name in group.losses}
            if len(parts) == 1 and next(iter(group.losses.values())) == 1.0:
                total = next(iter(parts.values()))  # no extra autograd ops for the common case
            else:
                total = sum(w * parts[name] for name, w in group.losses.items())
            if not torch.isfinite(total):
                raise NonFiniteLoss({k: v.detach().item() for k, v in parts.items()}, step)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(group.optimizer)
            else:
                total.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(group.params, self.grad_clip)
            if self.scaler is not None:
                self.scaler.step(group.optimizer)
                self.scaler.update()
            else:
                group.optimizer.step()
            if group.scheduler is not None:
                group.scheduler.step()
            for name, value in parts.items():
                logs[name] = value.detach()
            if len(group.losses) > 1 or len(self.groups) > 1:
                logs[f"{group.name}/total" if len(self.groups) > 1 else "total"] = total.detach()
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [g.optimizer.state_dict() for g in self.groups],
            "schedulers": [g.scheduler.state_dict() if g.scheduler is not None else {} for g in self.groups],
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for group, opt, sched in zip(self.groups, state["optimizers"], state["schedulers"], strict=True):
            group.optimizer.load_state_dict(opt)
            if group.scheduler is not None:
                group.scheduler.load_state_dict(sched)
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
