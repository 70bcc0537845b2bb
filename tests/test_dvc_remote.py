"""A DVC remote shared by several machines: one clone trains and pushes, a fresh clone pulls the models
and has nothing to rerun.

The remote is a folder in the test's temporary directory (a lab would use ssh://, s3:// or a shared
mount: the commands are the same). The pipeline is the project's own dvc.yaml with tiny parameters
(one model, synthetic data, no tracking), run as in tests/test_pipeline.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from test_pipeline import copy_project, dvc, git_init, ran_stages, run, tiny_params


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".gitignore" not in p.name}


@pytest.mark.slow
def test_push_from_one_clone_pull_in_a_fresh_clone_nothing_to_rerun(tmp_path: Path, synthetic_root: Path) -> None:
    remote = tmp_path / "dvc-remote"
    first = copy_project(tmp_path / "machine-a")
    params = tiny_params(synthetic_root)
    params.update({"variants": {}, "evaluate": {**params["evaluate"], "models": ["baseline"]}})
    params["tracking"]["enabled"] = False
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_init(first)
    dvc("remote", "add", "--default", "shared", str(remote), cwd=first)
    run(["git", "commit", "-qam", "a shared DVC remote"], first)

    built = dvc("repro", cwd=first, timeout=1200)
    assert {"prepare", "train_baseline", "evaluate@baseline"} <= ran_stages(built.stdout), built.stdout
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "results"], first)
    dvc("push", cwd=first)
    models = digests(first / "pipeline" / "models")
    assert any(name.endswith(".pt") for name in models), models

    second = tmp_path / "machine-b"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    assert not list((second / "pipeline" / "models").rglob("*.pt"))  # git carries no model
    dvc("pull", cwd=second)
    assert digests(second / "pipeline" / "models") == models
    assert (second / "pipeline" / "data" / "manifest.json").is_file()

    status = dvc("status", cwd=second)
    assert "up to date" in status.stdout, status.stdout
    again = dvc("repro", cwd=second)
    assert ran_stages(again.stdout) == set(), again.stdout
    assert digests(second / "pipeline" / "models") == models
