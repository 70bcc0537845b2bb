"""Loss statistics of the training steps, kept on the device until the host asks for them.

Why on the device: reading a loss with ``.item()`` after every step makes the host wait for the GPU at
every step. :class:`StepStats` sums the loss terms and the accuracy count on the device and keeps a
watch for the first non-finite loss; the host copies everything once per ``train.log_every_steps``
steps (:meth:`StepStats.flush`), which is also when the progress bar and the metric sinks see new
numbers. A NaN is therefore noticed at the next flush, but the step where it first happened is still
known and named in the error.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from reid.parallel import all_reduce_


class StepStats:
    """Device-side sums of the loss terms and accuracy, plus a watch for the first non-finite loss.

    ``add`` launches a handful of tiny kernels and never synchronises; ``flush`` copies everything
    to the host in one transfer (and averages over the ranks of a distributed run).
    """

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names = names
        n = len(names) + 1  # total first
        self.device = device
        self.sums = torch.zeros(n, device=device)
        self.correct = torch.zeros((), device=device)
        self.images = 0
        self.steps = 0
        self.counter = torch.zeros((), device=device, dtype=torch.int64)  # global step on the device
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.bad_values = torch.zeros(n, device=device)
        self.last_finite = torch.full((n,), float("nan"), device=device)
        self.last_finite_step = torch.full((), -1, device=device, dtype=torch.int64)
        self.has_acc = False

    @property
    def labels(self) -> list[str]:
        """``loss`` (the sum) and ``loss_<term>`` for each term, as logged (``train/loss_id``...)."""
        return ["loss", *(n if n.startswith("loss") else f"loss_{n}" for n in self.names)]

    def set_global_step(self, step: int) -> None:
        self.counter.fill_(step)

    def add(self, total: torch.Tensor, losses: Mapping[str, torch.Tensor], logits: torch.Tensor | None,
            labels: torch.Tensor) -> None:
        self.counter += 1
        vec = torch.stack([total.detach().float()] + [losses[n].detach().float().reshape(()) for n in self.names])
        finite = torch.isfinite(vec).all()
        clean = self.first_bad < 0
        newly_bad = clean & ~finite
        self.first_bad = torch.where(newly_bad, self.counter, self.first_bad)
        self.bad_values = torch.where(newly_bad, vec, self.bad_values)
        keep = clean & finite
        self.last_finite = torch.where(keep, vec, self.last_finite)
        self.last_finite_step = torch.where(keep, self.counter, self.last_finite_step)
        self.sums += vec
        if logits is not None:
            self.has_acc = True
            self.correct += (logits.detach().argmax(dim=1) == labels).sum()
        self.images += int(labels.shape[0])
        self.steps += 1

    def flush(self, world_size: int) -> dict[str, Any]:
        """Host copy of the interval's means; resets the sums (the non-finite watch is kept)."""
        packed = torch.cat([self.sums, self.correct.reshape(1).float(), (self.first_bad >= 0).reshape(1).float()])
        all_reduce_(packed)
        values = packed.tolist()
        steps = max(self.steps, 1)
        out = {
            "losses": {name: values[i] / (steps * world_size) for i, name in enumerate(self.labels)},
            "acc": values[-2] / max(self.images * world_size, 1) if self.has_acc else None,
            "images": self.images * world_size,
            "steps": self.steps,
            "nonfinite": values[-1] > 0,
        }
        self.sums.zero_()
        self.correct.zero_()
        self.images = 0
        self.steps = 0
        return out

    def nonfinite_report(self) -> dict[str, Any]:
        names = self.labels
        return {
            "first_bad": int(self.first_bad.item()),
            "bad": dict(zip(names, self.bad_values.tolist())),
            "last_finite": dict(zip(names, self.last_finite.tolist())),
            "last_finite_step": int(self.last_finite_step.item()),
        }


def format_losses(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in values.items())
