"""The command line: every command is registered and documented, `reid ui` stays private by default,
hints quote paths with spaces as a shell needs (registry names keep none), and a typo in an option's
value is blamed on the option."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from reid.cli import app

from conftest import save_params

COMMANDS = ("prepare", "synth", "train", "evaluate", "compare", "ui", "export", "extract", "search", "index", "log-run",
            "sweep")
runner = CliRunner()


def plain(text: str) -> str:
    """Help text without ANSI colours (rich colours it when it thinks it has a terminal)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    out = plain(result.output)
    for name in COMMANDS:
        assert re.search(rf"^\W*{name}\b", out, re.MULTILINE), f"{name} missing from reid --help:\n{out}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    out = plain(result.output)
    assert f"reid {name}" in out or "Usage" in out
    assert "--help" in out


def write_params(tmp_path: Path, tracking: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tracking": tracking}))
    return path


def dry_run(args: list[str]) -> tuple[dict[str, str], list[str]]:
    result = runner.invoke(app, ["ui", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    words = shlex.split(result.output.strip())
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # leading NAME=value assignments
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def option(argv: list[str], name: str) -> str:
    assert name in argv, argv
    return argv[argv.index(name) + 1]


def test_ui_dry_run_binds_localhost_with_one_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(tmp_path, {"uri": "sqlite:///mlflow.db", "artifact_root": "mlruns"})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    env, argv = dry_run(["--params", str(params)])
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert option(argv, "--host") == "127.0.0.1"
    assert option(argv, "--port") == "5000"
    assert option(argv, "--workers") == "1"
    assert env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The relative sqlite store is relative to the working directory, like every relative path.
    assert option(argv, "--backend-store-uri") == f"sqlite:///{(work / 'mlflow.db').resolve()}"
    assert option(argv, "--default-artifact-root") == str((work / "mlruns").resolve())


def test_ui_host_port_and_absolute_uri_pass_through(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "runs.db"
    params = write_params(tmp_path, {"uri": f"sqlite:///{db}"})
    _, argv = dry_run(["--params", str(params), "--host", "0.0.0.0", "--port", "5123"])
    assert option(argv, "--host") == "0.0.0.0"
    assert option(argv, "--port") == "5123"
    assert option(argv, "--backend-store-uri") == f"sqlite:///{db}"


def test_ui_missing_params_is_a_clean_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ui", "--dry-run", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml does not exist" in result.output
    assert "Traceback" not in result.output


REPO = Path(__file__).resolve().parents[1]


def test_parameter_table_is_generated_from_config() -> None:
    """Every key of reid/config.py is documented in docs/PARAMETERS.md with its current default and
    params.yaml's value (scripts/params_table.py), and the README points there."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "scripts/params_table.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reference = (REPO / "docs" / "PARAMETERS.md").read_text()
    from reid.config import Config

    for section, field in Config.model_fields.items():
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"| `{section}.{key}` |" in reference, f"{section}.{key} missing from docs/PARAMETERS.md"
    assert "docs/PARAMETERS.md" in (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/quickstart.sh" in readme
    assert "bash scripts/test.sh" in ci
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


def test_ui_says_where_it_looked_when_the_store_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reid ui` in the wrong folder (the quickstart's runs are in .quickstart/) must say where it looked,
    and must not create an empty store there."""
    from reid.commands.ui import comparison_page

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  uri: sqlite:///mlflow.db\n")
    url, message = comparison_page(params, "http://localhost:5000")
    assert url is None and str(tmp_path / "mlflow.db") in message and "cd .quickstart && reid ui" in message
    assert not (tmp_path / "mlflow.db").exists()


# -- a user's own paths and typos: shell-quoted hints, the option blamed -------------------------------
def test_a_path_with_a_space_is_quoted_in_hints_and_kept_out_of_registry_names(
        tmp_path: Path, tiny_config, synthetic_manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.engine.trainer as trainer_module
    from reid.data.manifest import write_manifest
    from reid.deploy.registry import registered_name

    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = save_params(tmp_path / "my project" / "params.yaml", tiny_config)
    out = Path(tiny_config.train.output_dir)

    def fake_train(config, manifest, resume=False, **kwargs):
        return trainer_module.TrainResult(out, out / "last.pt", None, out / "metrics.json", out / "config.yaml",
                                          {"mAP": 0.5}, None, None, 1, 3, "run123")

    monkeypatch.setattr(trainer_module, "train", fake_train)
    result = runner.invoke(app, ["train", "--params", str(params)])
    assert result.exit_code == 0, result.output
    hint = result.stdout.split("see it with: ", 1)[1].splitlines()[0]
    assert shlex.split(hint) == ["reid", "ui", "--params", str(params)]
    from reid.data.manifest import load_manifest
    from reid.errors import DatasetError

    with pytest.raises(DatasetError) as err:
        load_manifest(tmp_path / "none.json", params)
    assert f"run `reid prepare --params {shlex.quote(str(params))}` first" in str(err.value)
    assert registered_name("reid", "my run") == "reid-my-run"
    assert registered_name("reid market", "a/b  c") == "reid-market-a-b-c"


def test_a_format_typo_is_blamed_on_the_option(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("{}\n")
    result = runner.invoke(app, ["prepare", "--params", str(params), "--format", "markett"])
    assert result.exit_code == 2
    assert "--format" in result.output and "'pack'" in result.output and "override" not in result.output
    assert "pack" in runner.invoke(app, ["prepare", "--help"]).output
