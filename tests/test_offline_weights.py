"""ImageNet starting weights on a machine without internet: `reid train` stops before any work with the
fixes, a cache that holds the file needs no network, and `reid weights fetch` fills the cache.

"No network" is made real for the subprocess: every HTTPS request goes to a proxy on a closed local
port (connection refused at once), the state of an offline GPU node. In-process tests refuse
``torch.hub``'s ``urlopen`` instead. Weight files are written by the tests (random values under
torchvision's ResNet-18 names, saved under the file name torch hub caches it as).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name (hash prefix included)


def offline_env(torch_home: Path) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, every connection is refused
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy")}
    return {**env, "PYTHONPATH": pythonpath, "TORCH_HOME": str(torch_home), "https_proxy": closed,
            "HTTPS_PROXY": closed, "http_proxy": closed, "HTTP_PROXY": closed}


def imagenet_tree(tiny_config, tmp_path: Path) -> dict:
    tree = tiny_config.model_dump(mode="json")
    tree["model"]["pretrained"] = "imagenet"
    tree["train"]["output_dir"] = str(tmp_path / "run")
    tree["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tree["tracking"]["artifact_root"] = str(tmp_path / "mlruns")
    return tree


def write_resnet18_weights(torch_home: Path, seed: int = 3) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def test_reid_train_offline_stops_before_any_work_and_names_the_fixes(tmp_path, tiny_config, synthetic_manifest):
    from reid.data.manifest import write_manifest

    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(imagenet_tree(tiny_config, tmp_path)))
    torch_home = tmp_path / "torch_home"
    proc = subprocess.run([sys.executable, "-m", "reid.cli", "train", "--params", str(params)], cwd=tmp_path,
                          env=offline_env(torch_home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = " ".join(proc.stderr.split())
    folder = torch_home / "hub" / "checkpoints"
    assert RESNET18_FILE in message and str(folder) in message  # the file and the cache folder it looked in
    assert "reid weights fetch resnet18" in message  # fix 1: fetch where there is internet, copy it here
    assert "-S model.pretrained=none" in message and "published numbers" in message  # fix 2, with its cost
    # Before any work: no MLflow store or run, no output folder, no partial download.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "run").exists()
    assert not list(folder.glob("*")) if folder.exists() else True


def test_training_starts_from_the_cached_file_without_the_network(tmp_path, tiny_config, synthetic_manifest,
                                                                  monkeypatch, refused_downloads):
    from reid.config import validate
    from reid.checkpoint import LAST_CHECKPOINT, load_checkpoint
    from reid.engine.trainer import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = refused_downloads
    _, state = write_resnet18_weights(tmp_path / "torch_home")
    tree = imagenet_tree(tiny_config, tmp_path)
    tree["train"]["epochs"] = 0  # the initial model: exactly what was loaded
    result = train(validate(tree), synthetic_manifest, progress=False, log=lambda m: None)
    assert calls == []
    model = load_checkpoint(result.output_dir / LAST_CHECKPOINT)["model"]
    assert torch.equal(model["backbone.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert torch.equal(model["backbone.stem.bn1.running_var"], state["bn1.running_var"])


def test_weights_fetch_prints_the_cached_file_and_the_folder_to_copy(tmp_path, monkeypatch, refused_downloads):
    from reid.cli import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = refused_downloads
    path, _ = write_resnet18_weights(tmp_path / "torch_home")
    result = CliRunner().invoke(app, ["weights", "fetch", "resnet18"])
    assert result.exit_code == 0, result.output
    assert calls == []
    lines = result.output.strip().splitlines()
    assert str(path) in lines[0] and "already in the cache" in lines[0]
    assert lines[-1] == str(path.parent)


def serve_bytes(monkeypatch, payload: bytes) -> list[str]:
    """torch hub's download served from memory (the URL recorded), in place of the network."""
    import io
    from email.message import Message

    requested: list[str] = []

    class Response(io.BytesIO):
        def info(self) -> Message:
            meta = Message()
            meta["Content-Length"] = str(len(payload))
            return meta

    def serve(req, *args, **kwargs):
        requested.append(getattr(req, "full_url", str(req)))
        return Response(payload)

    monkeypatch.setattr(torch.hub, "urlopen", serve)
    return requested


def test_weights_fetch_downloads_into_the_cache_and_checks_the_hash(tmp_path, monkeypatch):
    import re

    from reid.cli import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    source, _ = write_resnet18_weights(tmp_path / "elsewhere")
    payload = source.read_bytes()
    requested = serve_bytes(monkeypatch, payload)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / RESNET18_FILE
    # Our bytes are not the release's: the SHA-256 prefix in the file name refuses them, nothing is cached.
    refused = CliRunner().invoke(app, ["weights", "fetch", "resnet18"])
    assert refused.exit_code == 2 and "hash" in refused.output
    assert not cached.exists() and not list(cached.parent.glob("*.partial"))
    # Without the prefix check (the bytes stand in for the release), the file lands where training reads it.
    monkeypatch.setattr(torch.hub, "HASH_REGEX", re.compile(r"(?!)"))
    result = CliRunner().invoke(app, ["weights", "fetch", "resnet18"])
    assert result.exit_code == 0, result.output
    assert requested == ["https://download.pytorch.org/models/" + RESNET18_FILE] * 2
    assert cached.read_bytes() == payload and "downloaded" in result.output
    assert result.output.strip().splitlines()[-1] == str(cached.parent)


def test_weights_fetch_offline_fails_with_the_fixes(tmp_path, monkeypatch, refused_downloads):
    from reid.cli import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    result = CliRunner().invoke(app, ["weights", "fetch", "resnet50_ibn_a"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "resnet50_ibn_a-d9d0bb7b.pth" in message and str(tmp_path / "torch_home" / "hub" / "checkpoints") in message
    assert not list((tmp_path / "torch_home" / "hub" / "checkpoints").glob("*.partial"))


def test_an_unknown_backbone_is_refused_by_the_command() -> None:
    from reid.cli import app

    result = CliRunner().invoke(app, ["weights", "fetch", "resnet49"])
    assert result.exit_code != 0 and "resnet49" in result.output


@pytest.mark.parametrize("params", ["scripts/quickstart_params.yaml", "scripts/market_cpu_params.yaml"])
def test_the_quickstart_and_the_cpu_track_need_no_download(params) -> None:
    from reid.config import load_config

    assert load_config(REPO / params).model.pretrained == "none"
