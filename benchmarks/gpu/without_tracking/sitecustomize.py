"""Make ``import mlflow`` and ``import dvc`` fail, as on the GPU machine, where neither is installed.

Put this folder first on ``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up): the CPU dry
run of check.sh and tests/test_gpu_check.py then prove that ``reid train`` with
``tracking.enabled: false`` and the whole check never import them.
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
