"""A sweep of DVC experiments on a SLURM cluster: one ``sbatch`` job per experiment, nothing scheduled here.

Why this shape: DVC's own queue runs on one machine, and parallel ``dvc exp run`` in one checkout
collide on DVC's lock. So every job clones the project's git remote into a scratch folder of its own,
``dvc pull``s the committed outputs it can reuse, runs ``dvc exp run -n NAME -S ...`` and ``dvc exp
push``es the experiment (git refs to the git remote, files to the DVC remote). Any machine then sees
every experiment with ``dvc exp pull`` + ``dvc exp show``, and every run in the MLflow server the
committed ``tracking.uri`` names. SLURM does the scheduling; this module writes job scripts, calls
``sbatch``/``scontrol``/``scancel`` and keeps the sweep's state in one folder on a file system the
submitting machine and the jobs share:

``<sweep dir>/sweep.json``
    the plan: git remote and commit, each experiment's overrides, its job ids (last one current);
``<sweep dir>/<exp>.sbatch``, ``<exp>.<jobid>.out``
    the job script and its log;
``<sweep dir>/<exp>.<jobid>.exit``
    written by the job itself when it ends (its exit code): the job's end is read from
    ``scontrol show job`` while SLURM remembers the job (``MinJobAge``, 300 s by default; no
    accounting database is needed) and from this file afterwards.

A failed or cancelled experiment is resubmitted alone (:func:`resubmit`): it is a new job on the same
commit with the same overrides; what the others pushed is untouched.

Several nodes for one experiment (``nodes > 1``): the job puts a ``reid`` launcher first on PATH for
the pipeline's stages, so ``reid train`` runs as ``srun`` + ``torchrun`` (rendezvous ``c10d`` on the
first node of the allocation, one launcher per node); the other commands run once. Every node then
needs the clone, so its scratch folder must be on a shared file system (the sweep folder by default).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reid.atomic import atomic_target
from reid.errors import ReidError

PLAN_FILE = "sweep.json"
# States as SLURM names them; the last four are ends.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
ENDED_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ReidError):
    """A sweep that cannot be planned, submitted or read (bad override, missing tool, unknown experiment)."""


# --- planning ---------------------------------------------------------------------------------------------


def split_choices(value: str) -> list[str]:
    """``"0.01,0.1"`` -> ``["0.01", "0.1"]``; commas inside brackets or quotes do not split (``[2,4],[6]``)."""
    out, depth, quote, current = [], 0, "", []
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def expand_grid(sets: list[str]) -> list[list[str]]:
    """Each ``-S key=a,b`` is one axis; the experiments are every combination, in the order given.

    ``["train.seed=0,1", "optim.lr=0.001"]`` -> ``[["train.seed=0", "optim.lr=0.001"], ["train.seed=1", ...]]``.
    """
    if not sets:
        raise SweepError("no -S override given: a sweep needs at least one, e.g. -S 'train.seed=0,1,2'")
    axes: list[list[str]] = []
    seen: set[str] = set()
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise SweepError(f"-S {item!r}: expected KEY=VALUE[,VALUE...], e.g. -S 'kd.feature_loss_coefficient=0.03,0.1'")
        if key in seen:
            raise SweepError(f"-S {key} is given twice: put every value in one -S {key}=a,b,c")
        seen.add(key)
        choices = [c.strip() for c in split_choices(value)]
        if any(not c for c in choices):
            raise SweepError(f"-S {item!r}: an empty value between commas")
        axes.append([f"{key}={c}" for c in choices])
    return [list(combo) for combo in itertools.product(*axes)]


@dataclass
class Experiment:
    name: str
    overrides: list[str]
    jobs: list[str] = field(default_factory=list)  # SLURM job ids, oldest first; the last one is current


@dataclass
class Resources:
    """What each job asks SLURM for. ``gpus_per_node`` 0 runs on the CPU."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    partition: str | None = None
    time: str | None = None
    sbatch_args: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    name: str
    folder: Path
    repo: str                  # the git remote every job clones and pushes to
    rev: str                   # the commit every experiment starts from
    scratch: str               # where each job makes its clone (a shell expression, expanded in the job)
    experiments: list[Experiment]
    resources: Resources = field(default_factory=Resources)
    rendezvous_port: int = 29400  # the first of 1000 ports: a job uses this + its job id % 1000

    # -- the plan file -------------------------------------------------------------------------------
    def save(self) -> None:
        data = asdict(self)
        data["folder"] = str(self.folder)
        with atomic_target(self.folder / PLAN_FILE) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Sweep":
        path = Path(folder) / PLAN_FILE
        if not path.is_file():
            raise SweepError(f"{path} does not exist: give the folder `reid sweep submit` printed (--dir)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SweepError(f"{path} is not a sweep plan ({exc}); it is written by `reid sweep submit`") from None
        data["folder"] = Path(folder)
        data["experiments"] = [Experiment(**e) for e in data["experiments"]]
        data["resources"] = Resources(**data["resources"])
        return cls(**data)

    def experiment(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise SweepError(f"sweep {self.name} has no experiment {name!r}; it has {[e.name for e in self.experiments]}")


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def plan(name: str, folder: Path, sets: list[str], *, checkout: Path, remote: str = "origin", rev: str = "HEAD",
         scratch: str | None = None, resources: Resources | None = None) -> Sweep:
    """Experiments ``<name>-01 ...`` for every combination of ``sets``, from commit ``rev`` of ``checkout``,
    which must already be on ``remote`` (the jobs clone it from there)."""
    if not NAME_RE.match(name):
        raise SweepError(f"sweep name {name!r}: use letters, digits, '.', '_' or '-' (it names git refs)")
    folder = Path(folder).resolve()
    if (folder / PLAN_FILE).exists():
        raise SweepError(f"{folder / PLAN_FILE} exists: that sweep was submitted already; choose another --dir "
                         "or use `reid sweep resubmit`")
    resources = resources or Resources()
    if resources.nodes < 1 or resources.gpus_per_node < 0 or resources.cpus_per_task < 1:
        raise SweepError(f"nodes ({resources.nodes}) and cpus per task ({resources.cpus_per_task}) must be >= 1, "
                         f"gpus per node ({resources.gpus_per_node}) >= 0")
    url = git("remote", "get-url", remote, cwd=checkout)
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=checkout)
    if not git("branch", "-r", "--contains", commit, cwd=checkout):
        raise SweepError(f"commit {commit[:12]} is not on the git remote {remote!r} ({url}): the jobs clone it "
                         f"from there; `git push {remote}` first (and `dvc push` what they should pull)")
    combos = expand_grid(sets)
    width = max(2, len(str(len(combos))))
    experiments = [Experiment(f"{name}-{i:0{width}d}", combo) for i, combo in enumerate(combos, 1)]
    if scratch is None:  # several nodes share the clone: a shared folder; one node: its local temp folder
        scratch = str(folder / "work") if resources.nodes > 1 else "${TMPDIR:-/tmp}"
    return Sweep(name, folder, url, commit, scratch, experiments, resources)


# --- the job -------------------------------------------------------------------------------------------


LAUNCHER = """#!/usr/bin/env bash
# `reid train` of this job's pipeline on every node of the allocation: one torchrun per node (srun),
# joined through the c10d rendezvous on the first node. Other reid commands run once, here.
if [ "${1:-}" = train ]; then
  exec srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    "$REID_PYTHON" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node=%(nproc)s \\
    --rdzv-backend=c10d --rdzv-endpoint="$REID_RDZV_HOST:$REID_RDZV_PORT" --rdzv-id="$SLURM_JOB_ID" \\
    -m reid.cli "$@"
fi
exec "$REID_PYTHON" -m reid.cli "$@"
"""


def job_script(sweep: Sweep, exp: Experiment) -> str:
    """The batch script of one experiment: clone, pull, run, push, and the exit code into its own file."""
    res = sweep.resources
    q = shlex.quote
    directives = [f"--job-name={sweep.name}:{exp.name}", f"--output={sweep.folder}/{exp.name}.%j.out",
                  f"--nodes={res.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={res.cpus_per_task}"]
    if res.gpus_per_node:
        directives.append(f"--gpus-per-node={res.gpus_per_node}")
    if res.partition:
        directives.append(f"--partition={res.partition}")
    if res.time:
        directives.append(f"--time={res.time}")
    sets = " ".join(f"-S {q(s)}" for s in exp.overrides)
    lines = ["#!/usr/bin/env bash", *(f"#SBATCH {d}" for d in directives), *(f"#SBATCH {a}" for a in res.sbatch_args),
             f"# Sweep {sweep.name}, experiment {exp.name}: {' '.join(exp.overrides)}",
             "set -euo pipefail",
             f'exit_file={q(str(sweep.folder))}/{q(exp.name)}."$SLURM_JOB_ID".exit',
             # Written on every end the shell sees (success, a failed command, scancel's SIGTERM).
             'trap \'rc=$?; echo "$rc" > "$exit_file"; [ -n "${work:-}" ] && rm -rf "$work"\' EXIT',
             "trap 'exit 143' TERM",
             f'mkdir -p "{sweep.scratch}"',
             f'work=$(mktemp -d "{sweep.scratch}/reid-{exp.name}-XXXXXX")',
             'echo "job $SLURM_JOB_ID on $(hostname): clone in $work"',
             f'git clone -q {q(sweep.repo)} "$work/repo"',
             'cd "$work/repo"',
             f"git checkout -q {q(sweep.rev)}",
             "export DVC_NO_ANALYTICS=1"]
    if res.nodes > 1:
        launcher = LAUNCHER % {"nproc": max(1, res.gpus_per_node)}
        lines += ['mkdir -p "$work/bin"',
                  f"cat > \"$work/bin/reid\" <<'LAUNCHER'\n{launcher}LAUNCHER",
                  'chmod +x "$work/bin/reid"',
                  'export REID_PYTHON="$(command -v python)"',
                  # The first node's address (NodeAddr: its NodeName unless the cluster says otherwise),
                  # and a port of this job's own, so that two jobs sharing a first node do not collide.
                  'first_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                  'export REID_RDZV_HOST="$(scontrol show node "$first_node" | grep -o "NodeAddr=[^ ]*" | cut -d= -f2)"',
                  f'export REID_RDZV_PORT=$(({sweep.rendezvous_port} + SLURM_JOB_ID % 1000))',
                  'export PATH="$work/bin:$PATH"']
    lines += ["dvc pull --allow-missing",  # outputs of stages not run yet: the experiment makes them
              f"dvc exp run -n {q(exp.name)} {sets}",
              f"dvc exp push origin {q(exp.name)}",
              f'echo "experiment {exp.name} pushed"']
    return "\n".join(lines) + "\n"


def require_slurm() -> None:
    for tool in ("sbatch", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            raise SweepError(f"`{tool}` is not on PATH: run the sweep on a SLURM login node (slurm-wlm client tools)")


def submit_one(sweep: Sweep, exp: Experiment) -> str:
    """Write the experiment's script and ``sbatch`` it; its job id is appended and the plan saved."""
    script = sweep.folder / f"{exp.name}.sbatch"
    with atomic_target(script) as tmp:
        tmp.write_text(job_script(sweep, exp))
    proc = subprocess.run(["sbatch", "--parsable", str(script)], cwd=sweep.folder, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"sbatch {script} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    exp.jobs.append(job_id)
    sweep.save()
    return job_id


def submit(sweep: Sweep) -> list[str]:
    """One job per experiment; the plan is saved first and after each submission, so a refused
    ``sbatch`` leaves the submitted jobs recorded and the rest resubmittable by name."""
    require_slurm()
    sweep.folder.mkdir(parents=True, exist_ok=True)
    sweep.save()
    jobs = []
    for i, exp in enumerate(sweep.experiments):
        try:
            jobs.append(submit_one(sweep, exp))
        except SweepError as exc:
            rest = " ".join(e.name for e in sweep.experiments[i:])
            raise SweepError(f"{exc}\n{i} of {len(sweep.experiments)} experiments were submitted; once sbatch "
                             f"accepts jobs again: reid sweep resubmit {sweep.folder} {rest}") from None
    return jobs


def resubmit(sweep: Sweep, names: list[str]) -> dict[str, str]:
    """A new job for each named experiment that is not running or done; the others are not touched."""
    require_slurm()
    out = {}
    for name in names:
        exp = sweep.experiment(name)
        state = experiment_state(sweep, exp)
        if state.state in ACTIVE or state.state == "COMPLETED":
            raise SweepError(f"{name} is {state.state} (job {state.job}): only a failed or cancelled experiment "
                             "is resubmitted")
        out[name] = submit_one(sweep, exp)
    return out


# --- watching ------------------------------------------------------------------------------------------


@dataclass
class State:
    name: str
    job: str | None
    state: str            # a SLURM state, or UNKNOWN when SLURM forgot the job and it left no exit file
    exit_code: int | None
    log: Path | None

    @property
    def ended(self) -> bool:
        return self.state not in ACTIVE

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"


def slurm_state(job: str) -> tuple[str, int | None] | None:
    """(JobState, exit code) from ``scontrol show job``; None once SLURM no longer knows the job."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    if proc.returncode != 0:
        return None  # "Invalid job id specified": purged after MinJobAge
    fields = dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
    code = fields.get("ExitCode", "").split(":")[0]
    return fields.get("JobState", "UNKNOWN"), int(code) if code.isdigit() else None


def experiment_state(sweep: Sweep, exp: Experiment) -> State:
    if not exp.jobs:
        return State(exp.name, None, "NOT_SUBMITTED", None, None)
    job = exp.jobs[-1]
    log = sweep.folder / f"{exp.name}.{job}.out"
    exit_file = sweep.folder / f"{exp.name}.{job}.exit"
    written = exit_file.read_text().strip() if exit_file.is_file() else ""
    code = int(written) if written.lstrip("-").isdigit() else None
    known = slurm_state(job)
    if known is not None:
        state, slurm_code = known
        if state == "COMPLETED" and code not in (None, 0):  # the shell's own record wins
            state = "FAILED"
        return State(exp.name, job, state, code if code is not None else slurm_code, log)
    if code is None:
        return State(exp.name, job, "UNKNOWN", None, log)
    return State(exp.name, job, "COMPLETED" if code == 0 else ("CANCELLED" if code == 143 else "FAILED"), code, log)


def states(sweep: Sweep) -> list[State]:
    return [experiment_state(sweep, exp) for exp in sweep.experiments]


def wait(sweep: Sweep, timeout_s: float | None = None, poll_s: float = 2.0) -> list[State]:
    """Poll until every experiment's current job has ended (or ``timeout_s``); the states at that point."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        current = states(sweep)
        if all(s.ended for s in current) or (deadline is not None and time.monotonic() >= deadline):
            return current
        time.sleep(poll_s)


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def cancel(sweep: Sweep, names: list[str]) -> None:
    require_slurm()
    for name in names:
        exp = sweep.experiment(name)
        if exp.jobs:
            subprocess.run(["scancel", exp.jobs[-1]], check=False)


def default_folder(name: str) -> Path:
    return Path(os.environ.get("REID_SWEEP_ROOT", "sweeps")) / name
