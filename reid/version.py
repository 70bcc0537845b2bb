"""The package version, in a module of its own so that code recording it (the export contract) imports
this leaf instead of the ``reid`` package facade, which itself imports the deploy code lazily."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version
