"""Worker of tests/test_ddp.py: the real trainer's first optimisation step, in float64, saved to a file.

Run as ``python tests/ddp_first_step.py CONFIG.json OUT_PREFIX [MISTAKE ...]`` for one process, or
under ``torchrun --nproc-per-node 2`` for the distributed run; for each MISTAKE (default ``none``) each
rank writes ``OUT_PREFIX.<MISTAKE>.rank<R>.pt``. One launch serves several variants because starting
two processes that import torch costs far more than a step of the tiny model.

Why the first step in float64 and nothing later: it is exactly what the distributed machinery controls
(which images each rank gets, synchronised BatchNorm, global triplet mining, gradient averaging) and
nothing chaotic. In float64 with deterministic kernels the only difference between one process and
two is the order of a few sums, so a correct run agrees to ~1e-15 relative on any CPU, whereas every
mistake of the machinery changes the gradient at order 1e-2 to 1. Later steps would amplify
summation-order noise through ReLU flips (up to 24% after 6 steps, 1 vs 2 threads, one process).

A MISTAKE other than ``none`` injects one known distributed mistake, so the test can show each is caught:

* ``per_rank_bn``: BatchNorm statistics of each rank's half batch (``train.sync_bn`` off);
* ``per_rank_triplet``: batch-hard mining within each rank's half batch (no :class:`GlobalBatchLoss`);
* ``same_batch_on_every_rank``: every rank samples as rank 0 (a sampler that ignores the rank);
* ``gradients_summed``: DDP sums the ranks' gradients instead of averaging them;
* ``no_gradient_sync``: no DDP wrapper, each rank steps with its own gradient.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from typing import Iterator
from unittest import mock

import torch
import torch.distributed as dist

MISTAKES = ("per_rank_bn", "per_rank_triplet", "same_batch_on_every_rank", "gradients_summed", "no_gradient_sync")


@contextlib.contextmanager
def _injected(mistake: str, tree: dict) -> Iterator[dict]:
    """The config tree with ``mistake`` injected, and the one building block it names patched meanwhile."""
    import reid.data.loaders as loaders
    from reid.engine import distributed as dist_utils
    from reid.engine import state as state_mod

    tree = copy.deepcopy(tree)
    with contextlib.ExitStack() as stack:
        if mistake == "per_rank_bn":
            tree["train"]["sync_bn"] = False
        elif mistake == "per_rank_triplet":
            stack.enter_context(mock.patch.object(state_mod, "globalise_batch_losses", lambda objective: None))
        elif mistake == "same_batch_on_every_rank":
            real_loader = loaders.build_train_loader

            def rank0_loader(manifest, config, device, rank=0, world_size=1, **kwargs):
                return real_loader(manifest, config, device, 0, world_size, **kwargs)

            stack.enter_context(mock.patch.object(loaders, "build_train_loader", rank0_loader))
        elif mistake == "gradients_summed":
            real_wrap = dist_utils.wrap_ddp

            def allreduce_sum(state, bucket):
                return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])

            def summing_ddp(module, ctx, device, sync_bn):
                wrapped = real_wrap(module, ctx, device, sync_bn)
                wrapped.register_comm_hook(None, allreduce_sum)
                return wrapped

            stack.enter_context(mock.patch.object(dist_utils, "wrap_ddp", summing_ddp))
        elif mistake == "no_gradient_sync":
            stack.enter_context(mock.patch.object(dist_utils, "wrap_ddp", lambda module, ctx, device, sync_bn: module))
        elif mistake != "none":
            raise SystemExit(f"unknown mistake {mistake!r}; one of none, {', '.join(MISTAKES)}")
        yield tree


class _Captured(Exception):
    """Stops the trainer's evaluation once the buffers of the model it embeds with are recorded."""


def eval_buffers(state, manifest) -> dict:
    """The floating-point buffers of the model the trainer's evaluation hands to the feature extraction."""
    import reid.evaluation.runner as runner
    from reid.engine.epoch_eval import EpochEvaluation
    from reid.engine.metrics_log import MetricSinks

    seen: dict = {}

    def capture(model, manifest, config, device):
        seen.update({n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()})
        raise _Captured

    evaluation = EpochEvaluation(manifest, None, MetricSinks([]), lambda m: None, None, dict)
    with mock.patch.object(runner, "evaluate_model", capture):
        try:
            evaluation.evaluate(state, 1)
        except _Captured:
            pass
    return seen


def first_step(tree: dict, source: str) -> dict:
    """One step of the real trainer (its state builder, epoch set-up and step function, minus tracking),
    then the start of its evaluation (``eval_buffers``: what the model embeds query/gallery with on this rank)."""
    from reid.config import validate
    from reid.data import loaders
    from reid.data.manifest import load_manifest
    from reid.engine import distributed as dist_utils
    from reid.engine.device import epoch_seed, seed_everything
    from reid.engine.state import build_state, set_frozen
    from reid.engine.step import train_step

    config = validate(tree, source)
    manifest = load_manifest(config.data.manifest)
    device = torch.device("cpu")
    ctx = dist_utils.init_from_env(device)  # reuses the group main() joined
    dist_utils.check_batch_split(config.data.ids_per_batch, ctx)
    state = build_state(config, int(manifest.num_classes), device, ctx, make_loader=lambda: loaders.build_train_loader(
        manifest, config, device, rank=ctx.rank, world_size=ctx.world_size))
    state.objective.double()  # in place: the optimiser keeps the same Parameter objects
    set_frozen(state, False)
    seed_everything(epoch_seed(config.train.seed, 0, ctx.rank))
    state.loader.set_epoch(0)
    state.objective.train()
    images, labels = next(iter(state.loader))
    before = {n: p.detach().clone() for n, p in state.objective.named_parameters()}
    total = train_step(state, images.double(), labels).total
    buffers = {n: b.detach().clone() for n, b in state.objective.named_buffers() if b.is_floating_point()}
    return {
        "rank": ctx.rank,
        "loss": total.detach().double(),
        "labels": labels.cpu(),
        "grads": {n: p.grad.detach().clone() for n, p in state.objective.named_parameters() if p.grad is not None},
        "steps": {n: p.detach() - before[n] for n, p in state.objective.named_parameters()},
        "buffers": buffers,
        "eval_buffers": eval_buffers(state, manifest),
    }


def main(config_path: str, out_prefix: str, mistakes: list[str]) -> None:
    from reid.engine import distributed as dist_utils

    with open(config_path) as f:
        tree = json.load(f)
    ctx = dist_utils.init_from_env(torch.device("cpu"))
    try:
        for mistake in mistakes or ["none"]:
            with _injected(mistake, tree) as variant:
                out = first_step(variant, f"{config_path} ({mistake})")
            torch.save(out, f"{out_prefix}.{mistake}.rank{out['rank']}.pt")
    finally:
        dist_utils.cleanup(ctx)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
