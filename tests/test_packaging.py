"""The distribution's name: PyPI's ``reid`` is an unrelated project, so ``pip install`` by our name must
never resolve to it. The import name and the command stay ``reid``."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_distribution_has_its_own_name_and_keeps_the_reid_import_and_command() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    name = project["name"].lower().replace("_", "-").replace(".", "-")  # PEP 503 normalisation
    assert name != "reid" and name.startswith("reid-")
    assert project["scripts"]["reid"] == "reid.cli:app"
    readme = (REPO / "README.md").read_text()
    assert project["name"] in readme  # the README says what to install
