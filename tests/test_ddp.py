"""Distributed training (gloo on the CPU) gives the single-process result on the same global batch.

Two levels: the building blocks (synchronised BatchNorm on the CPU, the differentiable gather that
lets the batch-hard triplet loss see the global batch) checked against plain single-process maths,
and a real ``torchrun --nproc-per-node 2 ... reid train`` compared with ``reid train`` in one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_hard_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """A plain batch-hard triplet loss (mean over anchors), standing in for the project's."""
    dist = torch.cdist(feats, feats)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (dist * same).max(dim=1).values
    hardest_neg = (dist + same * 1e6).min(dim=1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def reference_case(seed: int = 0) -> dict[str, torch.Tensor]:
    """Global batch of 4 ids x 2 images and a tiny net (linear -> BN -> features), single-process grads."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 5, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6))
    torch.manual_seed(seed)
    net.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    feats = net(x)
    loss = batch_hard_triplet(feats, labels) + feats.pow(2).mean()
    loss.backward()
    return {"x": x, "labels": labels, "state": state, "loss": loss.detach(),
            "grads": {n: p.grad.clone() for n, p in net.named_parameters()},
            "running": {k: v.clone() for k, v in net.state_dict().items() if "running" in k}}


def _blocks_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from reid.engine.distributed import GlobalBatchLoss, convert_sync_batchnorm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ref = reference_case()
        net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6))
        net.load_state_dict(ref["state"])
        net = convert_sync_batchnorm(net, torch.device("cpu"))
        ddp = nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)
        per = 8 // world
        x, labels = ref["x"][rank * per:(rank + 1) * per], ref["labels"][rank * per:(rank + 1) * per]
        feats = ddp(x)
        loss = GlobalBatchLoss(batch_hard_triplet)(feats, labels) + feats.pow(2).mean()
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in net.named_parameters()},
                    "running": {k: v.clone() for k, v in net.state_dict().items() if "running" in k}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_and_global_triplet_match_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_blocks_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref = reference_case()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, grad in ref["grads"].items():
            assert torch.allclose(got["grads"][name], grad, atol=1e-6, rtol=1e-5), (rank, name)
        for name, value in ref["running"].items():
            assert torch.allclose(got["running"][name], value, atol=1e-6), (rank, name)


def test_without_the_global_gather_the_triplet_gradient_differs() -> None:
    """The premise of GlobalBatchLoss: per-rank triplet mining is not the global loss."""
    ref = reference_case()
    feats = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    per_rank = (batch_hard_triplet(feats[:4], ref["labels"][:4]) + batch_hard_triplet(feats[4:], ref["labels"][4:])) / 2
    assert not torch.isclose(per_rank, batch_hard_triplet(feats, ref["labels"]))


def _sharded_eval_worker(rank: int, world: int, port: int, out_dir: str, manifest_path: str, config_tree: dict) -> None:
    import torch.distributed as dist

    from reid.config import validate
    from reid.data.manifest import load_manifest
    from reid.engine.distributed import gather_shards, shard_bounds
    from reid.evaluation.runner import evaluate_model
    from reid.models.reid_model import build_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        full = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)  # 7 rows: shards of 3 and 4
        start, stop = shard_bounds(7, rank, world)
        gathered = gather_shards(full[start:stop], 7)
        config = validate(config_tree)
        manifest = load_manifest(manifest_path)
        import reid.data.loaders as loaders

        seen: list[int] = []
        real_loader = loaders.build_test_loader

        def recording_loader(samples, *args, **kwargs):
            seen.append(len(samples))
            return real_loader(samples, *args, **kwargs)

        loaders.build_test_loader = recording_loader
        torch.manual_seed(0)
        model = build_model(config, manifest.num_classes)
        result = evaluate_model(model, manifest, config, "cpu")
        torch.save({"gathered": gathered, "mAP": result.mAP, "cmc": torch.as_tensor(result.cmc), "seen": seen},
                   os.path.join(out_dir, f"eval{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sharded_evaluation_equals_the_single_process_evaluation(tmp_path: Path, tiny_config,
                                                                 synthetic_manifest) -> None:
    """Under torchrun each rank embeds a shard of query and gallery; the gathered result is the whole."""
    import torch.multiprocessing as mp

    from reid.data.manifest import write_manifest
    from reid.evaluation.runner import evaluate_model
    from reid.models.reid_model import build_model

    manifest_path = write_manifest(synthetic_manifest, tmp_path / "manifest.json")
    tree = tiny_config.model_dump(mode="json")
    mp.spawn(_sharded_eval_worker, args=(2, free_port(), str(tmp_path), str(manifest_path), tree), nprocs=2,
             join=True)
    torch.manual_seed(0)
    model = build_model(tiny_config, synthetic_manifest.num_classes)
    single = evaluate_model(model, synthetic_manifest, tiny_config, "cpu")
    expected = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)
    for rank in range(2):
        got = torch.load(tmp_path / f"eval{rank}.pt", weights_only=True)
        assert torch.equal(got["gathered"], expected)
        # Each rank embedded only its own half of the query and of the gallery images.
        q, g = len(synthetic_manifest.query), len(synthetic_manifest.gallery)
        assert got["seen"] == [(rank + 1) * q // 2 - rank * q // 2, (rank + 1) * g // 2 - rank * g // 2]
        assert got["mAP"] == pytest.approx(single.mAP, abs=1e-6)
        assert torch.allclose(got["cmc"], torch.as_tensor(single.cmc), atol=1e-6)


# -- the real thing --------------------------------------------------------------------------------
# Why two plain-SGD steps and not the Adam recipe over many steps: this tiny from-scratch setup is
# chaotic. A ReLU whose input sits within float noise of zero flips when the summation order changes,
# and a single flip moves a gradient by up to ~15%; Adam then turns sign noise of near-zero gradients
# into lr-sized steps. Measured here: one process with 1 vs 2 threads (nothing distributed at all)
# already ends 6 SGD steps up to 24% apart. So the comparison keeps the first step tiny (warmup) and
# the second a full step: any machinery error (per-rank BatchNorm, per-rank triplet mining, a wrong
# batch split, gradients not averaged) shows as a relative error of 0.2 to 1.2 (per-rank BatchNorm:
# 1.07), while a correct run agrees to ~4e-5 after the first step and ~1e-2 after the second.
# The building blocks are checked exactly above.
def ddp_params(synthetic_root: Path, tmp_path: Path, out: str) -> dict:
    return {
        "data": {"root": str(synthetic_root), "manifest": str(tmp_path / "manifest.json"),
                 "height": 64, "width": 32, "padding": 4, "ids_per_batch": 4, "instances_per_id": 4,
                 "test_batch_size": 64, "num_workers": 0, "input_pipeline": "cpu"},
        "model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False},
        "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "warmup_epochs": 1, "milestones": [2]},
        "train": {"epochs": 2, "eval_every": 2, "device": "cpu", "amp": "off", "max_steps_per_epoch": 1,
                  "output_dir": str(tmp_path / out), "log_every_steps": 1, "sync_bn": True, "seed": 3},
        "eval": {"num_ranked_lists": 0},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_root": str(tmp_path / "mlruns"),
                     "experiment": out},
    }


@pytest.mark.slow
def test_torchrun_two_processes_train_the_single_process_model(tmp_path: Path, synthetic_root: Path,
                                                                synthetic_manifest) -> None:
    import yaml
    from mlflow.tracking import MlflowClient

    from reid.config import validate
    from reid.data.manifest import write_manifest
    from reid.engine.checkpoint import load_checkpoint
    from reid.engine.device import seed_everything
    from reid.models.reid_model import build_model

    write_manifest(synthetic_manifest, tmp_path / "manifest.json")
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    for out in ("single", "ddp"):
        (tmp_path / f"{out}.yaml").write_text(yaml.safe_dump(ddp_params(synthetic_root, tmp_path, out)))
    single = subprocess.run([sys.executable, "-m", "reid.cli", "train", "--params", str(tmp_path / "single.yaml")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "reid.cli", "train",
                          "--params", str(tmp_path / "ddp.yaml")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a = load_checkpoint(tmp_path / "single" / "last.pt")
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 2
    assert len(b["sampler_ranks"]) == 2 and len(b["rng_ranks"]) == 2

    config = validate(a["config"])
    seed_everything(config.train.seed)  # the trainer seeds right before building the model
    initial = build_model(config, a["num_classes"]).state_dict()
    for name, tensor in a["model"].items():
        other = b["model"][name]
        if not tensor.is_floating_point():
            assert torch.equal(tensor, other), name
            continue
        moved = (tensor - initial[name]).norm()
        if "running" not in name and moved > 0:
            # Measured: a correct run differs by <= 1.1% of the distance trained (float summation order
            # amplified by the second, full-lr step); per-rank BatchNorm instead of synchronised gives
            # 107%. 3% separates the two by a factor of 35.
            assert (tensor - other).norm() <= 3e-2 * moved, (name, float((tensor - other).norm() / moved))
    moved = max((a["model"][k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point())
    assert moved > 1e-3  # not vacuous: training moved the weights far beyond the tolerance

    # Rank 0 alone tracked: one run, finished, that knows it ran on two processes.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["world_size"] == "2"
    assert runs[0].info.run_id == b["mlflow_run_id"] and "mAP" in runs[0].data.metrics
