"""A sweep of tiny DVC experiments through a real SLURM cluster: wall time and what comes back.

Starts what the sweep test starts (tests/services.py: munged, slurmctld and two slurmd as two nodes
sharing this machine's CPUs, with a config it writes; a throwaway PostgreSQL with an `mlflow server`
on it), builds the test's tiny project (synthetic data, the baseline at 64 x 32, one epoch of two
steps, a bare git remote and a local DVC remote), then times ``reid sweep submit -S
train.seed=0,1,... --wait``: from the first ``sbatch`` to the last job's end, every job cloning,
pulling, running the pipeline (train, evaluate, export, compare) and pushing its experiment.
Afterwards a fresh clone runs ``dvc exp pull`` + ``dvc exp show`` and the MLflow server is asked for
its runs; both are stored in the record. Needs root, slurm-wlm, munge and postgresql (the Debian
packages `.ci/run` installs).

Usage:
    .venv/bin/python benchmarks/bench_sweep.py --experiments 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from machine_info import describe_machine  # noqa: E402
from services import PostgresCluster, SlurmCluster, postgres_missing, slurm_missing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                        f"sweep_slurm_{dt.date.today().isoformat()}.json")
    args = parser.parse_args()
    for missing in (slurm_missing(), postgres_missing()):
        if missing:
            sys.exit(f"bench_sweep: {missing}")

    from reid.data.synthetic import generate_synthetic
    from test_pipeline import VENV_BIN, dvc, run, tool_env
    from test_sweep import sweep_project
    from test_tracking_server import client_of, start_server

    tmp = Path(tempfile.mkdtemp(prefix="reid-bench-sweep-"))
    slurm, postgres = SlurmCluster.start(), PostgresCluster.start()
    server = None
    try:
        server = start_server(tmp / "mlflow", backend=postgres.database("team"))
        data = generate_synthetic(tmp / "Synthetic-Market", num_train_ids=16, num_test_ids=12, num_cameras=3,
                                  images_per_id=8, height=64, width=32, seed=0)
        dev, origin = sweep_project(tmp, data, server.uri)
        env = {**tool_env(), "SLURM_CONF": str(slurm.conf)}
        seeds = ",".join(str(s) for s in range(args.experiments))
        command = ["reid", "sweep", "submit", "-S", f"train.seed={seeds}", "--name", "bench", "--dir",
                   str(tmp / "sweeps" / "bench"), "--wait"]
        load_before = os.getloadavg()
        started = time.monotonic()
        proc = subprocess.run([str(VENV_BIN / "reid"), *command[1:]], cwd=dev, env=env, capture_output=True,
                              text=True, timeout=3600)
        wall_s = time.monotonic() - started
        load_after = os.getloadavg()
        if proc.returncode != 0:
            sys.exit(f"bench_sweep: the sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        jobs = {}
        for line in proc.stdout.splitlines():
            if ": job " in line:
                name, rest = line.split(": job ", 1)
                job = rest.split()[0]
                shown = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True,
                                       text=True).stdout
                fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
                jobs[name] = {"job": job, "state": fields.get("JobState"), "start": fields.get("StartTime"),
                              "end": fields.get("EndTime"), "run_time": fields.get("RunTime")}

        other = tmp / "other"
        run(["git", "clone", "-q", str(origin), str(other)], tmp)
        names = sorted(jobs)
        dvc("exp", "pull", "origin", *names, cwd=other)
        shown_command = ["exp", "show", "--no-pager", "--md", "--drop", ".*", "--keep",
                         r"Experiment$|Created$|train\.seed$|pipeline/eval/baseline/metrics\.json:(mAP|rank1)$"]
        table = dvc(*shown_command, cwd=other).stdout
        client = client_of(server)
        experiment = client.get_experiment_by_name("sweep")
        runs = [{"run_name": r.info.run_name, "dvc_exp": r.data.tags.get("dvc_exp"), "status": r.info.status,
                 "train.seed": r.data.params.get("train.seed"), "eval/mAP": r.data.metrics.get("eval/mAP")}
                for r in client.search_runs([experiment.experiment_id], max_results=1000)]
        record = {
            "benchmark": "a sweep of tiny DVC experiments through a SLURM cluster on this machine (reid sweep submit --wait)",
            "date": dt.date.today().isoformat(),
            "command": f"benchmarks/bench_sweep.py --experiments {args.experiments}",
            "sweep_command": " ".join(command[:7] + ["--dir", "<tmp>/sweeps/bench", "--wait"]),
            "slurm": subprocess.run(["slurmctld", "-V"], capture_output=True, text=True).stdout.strip(),
            "nodes": len(slurm.nodes), "cpus_per_node": slurm.cpus_per_node,
            "cpus_per_job": 1,
            "experiment": "the baseline at 64 x 32 on synthetic data, 1 epoch of 2 steps; stages train, evaluate, "
                          "export, compare (prepare pulled from the DVC remote)",
            "machine": describe_machine(),
            # The machine is shared: its load average (1, 5, 15 min) before and after the sweep.
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "results": {"wall_s": round(wall_s, 1), "experiments": len(jobs), "jobs": jobs,
                        "sweep_output": proc.stdout,
                        "dvc_exp_show_command": "dvc " + " ".join(shown_command), "dvc_exp_show": table, "mlflow_runs": runs},
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(proc.stdout)
        print(table)
        print(json.dumps(runs, indent=1))
        print(f"wall {wall_s:.1f} s for {len(jobs)} experiments -> {args.out}")
    finally:
        if server is not None:
            server.stop()
        slurm.stop()
        postgres.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
