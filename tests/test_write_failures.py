"""Outputs that cannot be written: a full disk or a read-only folder is one clear error naming the path
and the space, exit 2, the previous file intact and no temporary file left (reid.atomic)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from reid.atomic import atomic_target, write_error, write_text_atomic
from reid.errors import DiskFullError, WriteError

runner = CliRunner()


def mount_tmpfs(folder: Path, size: int) -> None:
    """A tmpfs of ``size`` bytes at ``folder``; skips the test where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


def resize_tmpfs(folder: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


def umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path: Path):
    folder = tmp_path / "disk"
    yield folder
    umount(folder)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_a_full_disk_is_one_error_naming_path_and_space_and_keeps_the_previous_file(small_disk: Path) -> None:
    from reid.checkpoint import load_checkpoint, save_checkpoint

    mount_tmpfs(small_disk, 2 << 20)
    path = small_disk / "last.pt"
    save_checkpoint({"x": torch.zeros(200_000)}, path)  # 0.8 MB
    with pytest.raises(DiskFullError) as err:
        save_checkpoint({"x": torch.ones(400_000)}, path)  # 1.6 MB beside it cannot fit
    message = str(err.value)
    assert str(path) in message and "no space left" in message and "free on" in message
    assert "needed" in message and "MB" in message
    assert leftovers(small_disk) == []
    assert torch.equal(load_checkpoint(path)["x"], torch.zeros(200_000))  # the previous file, intact
    with pytest.raises(DiskFullError, match="metrics.json"):
        write_text_atomic(small_disk / "metrics.json", "x" * (3 << 20))
    assert not (small_disk / "metrics.json").exists() and leftovers(small_disk) == []


def test_write_errors_name_the_path_and_leave_reads_alone(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(WriteError, match="Read-only file system") as err:
        with atomic_target(target):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert str(target) in str(err.value) and not isinstance(err.value, DiskFullError)
    # An input that cannot be read is not the output's fault: it goes on as it is.
    with pytest.raises(FileNotFoundError):
        with atomic_target(target):
            open(tmp_path / "missing-input.jpg", "rb")
    assert write_error(target, ValueError("a bug")) is None
    assert leftovers(tmp_path) == []


def test_reid_train_on_a_full_disk_exits_2_with_the_resume_line_and_resumes_after_space_is_freed(
        tmp_path: Path, tiny_config, synthetic_manifest, small_disk: Path) -> None:
    from mlflow.tracking import MlflowClient

    from reid.cli import app
    from reid.data.manifest import write_manifest
    from reid.checkpoint import load_checkpoint

    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    tree = tiny_config.model_dump(mode="json")
    tree["train"].update({"epochs": 1, "max_steps_per_epoch": 1})
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump(tree))
    assert runner.invoke(app, ["train", "--params", str(reference)]).exit_code == 0
    size = (Path(tiny_config.train.output_dir) / "last.pt").stat().st_size  # what one checkpoint takes

    # Room for one checkpoint and the small files, not for the second one beside it.
    mount_tmpfs(small_disk, int(size * 1.5))
    tree["train"].update({"epochs": 2, "output_dir": str(small_disk / "run")})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree))
    result = runner.invoke(app, ["train", "--params", str(params)])
    assert result.exit_code == 2, result.output
    last = small_disk / "run" / "last.pt"
    assert f"error: no space left on the device to write {last}" in result.stderr
    assert "free on" in result.stderr and "needed" in result.stderr
    assert f"holds epoch 1. Continue with: reid train --params {params} --resume" in result.stderr
    assert "Traceback" not in result.output + result.stderr and "basic_ios" not in result.stderr
    assert leftovers(small_disk) == []
    state = load_checkpoint(last)
    assert state["epoch"] == 1
    run_id = state["mlflow_run_id"]
    assert MlflowClient(tracking_uri=tiny_config.tracking.uri).get_run(run_id).info.status == "FAILED"

    resize_tmpfs(small_disk, size * 4)  # space freed
    result = runner.invoke(app, ["train", "--params", str(params), "--resume"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(last)["mlflow_run_id"] == run_id
    assert json.loads((small_disk / "run" / "metrics.json").read_text())["epochs"] == 2
