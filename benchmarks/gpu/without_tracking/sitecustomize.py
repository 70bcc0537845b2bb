"""Make ``import mlflow`` and ``import dvc`` fail, as on the GPU machine, where neither is installed.

Put this folder first on ``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up): the CPU dry
run of check.sh and tests/test_gpu_check.py then prove that ``reid train`` with
``tracking.enabled: false`` and the whole check never import them.

With ``REID_IMPORTS_LOG`` set, each process also appends the top-level names of every module it had
imported at exit to that file: ``check_tools.py imports`` checks them against the GPU image's
packages and the carried wheels.
"""

import importlib.abc
import os
import sys

BLOCKED = ("mlflow", "dvc")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the finder protocol
        if name.split(".", 1)[0] in BLOCKED:
            record = os.environ.get("REID_BLOCKED_IMPORTS_LOG")  # tests: see even a swallowed attempt
            if record:
                import traceback

                caller = "".join(traceback.format_stack(limit=8)[:-1])
                with open(record, "a") as fh:
                    fh.write(f"{name}  (process: {' '.join(sys.argv)[:200]})\n{caller}\n")
            raise ImportError(f"{name} is blocked here (benchmarks/gpu/without_tracking): the GPU machine has no {name}")
        return None


sys.meta_path.insert(0, _Block())


def _record_imports() -> None:
    names = sorted({name.split(".", 1)[0] for name in list(sys.modules)})
    with open(os.environ["REID_IMPORTS_LOG"], "a") as fh:
        fh.write("".join(f"{name}\t{os.getpid()}\n" for name in names))


if os.environ.get("REID_IMPORTS_LOG"):
    import atexit

    atexit.register(_record_imports)
