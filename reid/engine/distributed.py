"""Multi-process training under ``torchrun``: process group, DDP, synchronised BatchNorm, gathers.

Launch: ``torchrun --nproc-per-node N -m reid.cli train --params params.yaml``. Each process reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment torchrun sets; the backend is NCCL on
CUDA and gloo on the CPU. Without ``WORLD_SIZE > 1`` everything here is a no-op, so the trainer has
one code path.

What makes N processes train *the same model* as one process on the global batch ``P x K``:

* each rank draws whole identities, ``P / N`` ids x ``K`` images (the rank-aware ``PKSampler``), and
  the union of the ranks' batches at a step is the single-process batch;
* DDP averages gradients, which is exact for every loss that is a mean over the samples (the
  label-smoothed cross entropy, the centre loss, the distillation terms);
* the batch-hard triplet loss is *not* such a mean: an anchor's hardest negative may sit on another
  rank. :class:`GlobalBatchLoss` therefore gathers the features of all ranks with a gradient
  (:func:`all_gather_with_grad`) and evaluates the loss on the global batch. Every rank then
  computes the same global loss; the gather's backward sums the N ranks' gradients into each rank's
  slice and DDP's averaging divides by N again, which is exactly the single-process gradient;
* BatchNorm statistics are those of the global batch (``train.sync_bn``, on by default):
  :func:`convert_sync_batchnorm` uses ``torch.nn.SyncBatchNorm`` on GPUs and :class:`CPUSyncBatchNorm`
  (below) on the CPU, where PyTorch's version refuses to run. With ``train.sync_bn=false`` (the opt-out)
  each rank normalises with its own ``B / N`` samples (8 images of 2 identities at N = 8), the usual,
  different, DDP behaviour.

Evaluation is shared: each rank extracts the features of its contiguous shard of the query and
gallery images (:func:`shard_bounds`), :func:`gather_shards` reassembles them in order on every rank,
and the metrics are computed from the full matrices; before it every rank takes rank 0's buffers
(:func:`broadcast_buffers`), so the shards are embedded by one model. Only rank 0 writes checkpoints
and logs to MLflow.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function
from torch.nn.modules.batchnorm import _BatchNorm

from reid.errors import PeerLostError, ReidError
from reid.parallel import all_gather_no_grad, all_reduce_, is_distributed


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``world_size == 1`` for ordinary single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when init_from_env created the process group (and must destroy it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ReidError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def init_from_env(device: torch.device, timeout_min: float = 60.0) -> DistContext:
    """Join the process group described by torchrun's environment (no-op for a single process).

    A group that the caller already initialised (e.g. a test spawning workers) is reused and left
    for the caller to destroy. ``timeout_min`` bounds a collective: rank 0 evaluates while the
    other ranks wait at a barrier, which can take minutes on a large gallery.
    """
    world = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()), False)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise ReidError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ReidError(f"WORLD_SIZE={world} but {name} is not set; launch distributed runs with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=timeout_min), **kwargs)
    return DistContext(rank, world, local_rank, True)


# How the transports report a peer that is gone: gloo's TCP pairs (reset, closed, EOF), the TCP store
# (a failed receive), NCCL (a remote rank that exited or an aborted communicator). A collective raises
# these as torch.distributed.DistError or, from inside autograd (SyncBN, the global triplet gather), as
# a plain RuntimeError with the transport's text.
PEER_LOST_SIGNS = ("connection reset by peer", "connection closed by peer", "broken pipe", "failed to recv",
                   "remote process exited", "communicator was aborted", "connection refused")


def peer_lost(exc: BaseException, ctx: DistContext) -> PeerLostError | None:
    """``exc`` as a :class:`PeerLostError` when it says that another process of this distributed run is
    gone, else None. A single process has no peers; a ReidError is the run's own, clearer message."""
    if not ctx.distributed or isinstance(exc, ReidError) or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if not (isinstance(exc, dist.DistError) or any(sign in text.lower() for sign in PEER_LOST_SIGNS)):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return PeerLostError(f"rank {ctx.rank} of {ctx.world_size} lost its connection to the other processes of the "
                         f"distributed run (a node or worker stopped; see its log): {first[:300]}")


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def check_batch_split(ids_per_batch: int, ctx: DistContext) -> None:
    """The global P must split into whole identities per rank (the per-rank batch is ``P/N x K``)."""
    if ctx.distributed and ids_per_batch % ctx.world_size:
        raise ReidError(
            f"data.ids_per_batch={ids_per_batch} cannot be split over {ctx.world_size} processes; "
            f"use a multiple of {ctx.world_size} (each process trains on whole identities)"
        )


def wrap_ddp(module: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool) -> nn.Module:
    """``DistributedDataParallel(module)`` for a distributed run, ``module`` itself otherwise.

    With synchronised BatchNorm the running statistics are identical on every rank, so DDP need not
    broadcast buffers before each forward; without it rank 0's statistics are broadcast (DDP's
    default) so the ranks at least evaluate the same model.
    """
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # Newer torch renamed the flag (and warns on the old name); buffers are synced at construction either way.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=not sync_bn)
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=not sync_bn)


def broadcast_buffers(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics), in place.

    Why: DDP broadcasts buffers *before* each forward, and each rank's last training forward then
    updates its own copy, so after an epoch without ``train.sync_bn`` the ranks hold different running
    statistics. The sharded evaluation would embed query and gallery shards with slightly different
    models; one broadcast before evaluating makes it one model (rank 0's, the one checkpointed).
    """
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP and/or ``torch.compile`` wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


# -- collectives with gradients -------------------------------------------------------------------
class _AllReduceSum(Function):
    """``y = sum over ranks of x``; backward: the gradient of ``sum_r L_r`` is the summed upstream grad."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _AllGatherWithGrad(Function):
    """Concatenate equal-sized tensors of all ranks along dim 0; backward returns this rank's slice of
    the *summed* gradient (every rank's loss may depend on every rank's features)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.size = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x) if is_distributed() else x


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, differentiable (identity for one process)."""
    return _AllGatherWithGrad.apply(x) if is_distributed() else x


class GlobalBatchLoss(nn.Module):
    """Evaluate a batch loss ``inner(features, labels, ...)`` on the features of *all* ranks.

    For losses that compare samples with each other (batch-hard triplet mining); see the module
    docstring for why the resulting gradient equals the single-process one. A no-op wrapper in a
    single process.
    """

    def __init__(self, inner: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, features: torch.Tensor, labels: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.inner(all_gather_with_grad(features), all_gather_no_grad(labels), *args, **kwargs)


# -- synchronised BatchNorm on the CPU -----------------------------------------------------------
class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all ranks, on any device.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this is the same computation written with
    differentiable all-reduces (two per layer: the sums, then the centred sums of squares), for gloo
    runs on CPUs and for the CPU test of DDP. Eval mode and single-process runs use plain
    ``F.batch_norm``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # half -> float32; float64 stays exact
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float64)
        all_reduce_(count)
        n = float(count.item())
        mean = all_reduce_sum_with_grad(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = all_reduce_sum_with_grad((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised across ranks (PyTorch's on GPUs, ours on the CPU).

    Parameters and buffers are shared with the original layers (same objects), so ``requires_grad``
    flags, e.g. the BN-neck's frozen bias, are kept.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (CPUSyncBatchNorm, nn.SyncBatchNorm)):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        for name, child in module.named_children():  # pragma: no cover - BatchNorm has none
            out.add_module(name, _convert_cpu(child))
        return out
    for name, child in module.named_children():
        converted = _convert_cpu(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
