"""Real services for the team tests: a throwaway PostgreSQL cluster and a SLURM cluster on this machine.

Nothing here is installed or mocked: the Debian binaries must be on the machine (`.ci/run` installs
`postgresql`, `slurm-wlm` and `munge` when missing) and each fixture skips, naming what is absent,
when they are not. Every daemon is started in a private temporary folder, bound to 127.0.0.1 (or a
Unix socket in that folder) on a free port, and stopped by the pid it wrote, also when a test fails.

PostgreSQL's ``initdb`` refuses to run as root, so as root the cluster belongs to the packaged
``postgres`` user (in a folder under /tmp that user can reach: pytest's own temporary root is
private to root). SLURM runs as root with the packaged munge key and ``munged`` as the munge user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send ``sig`` to one process by its id; SIGKILL it when it outlives ``timeout``."""
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- PostgreSQL ---------------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """Debian's versioned folder (newest first), else whatever ``initdb`` is on PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (no initdb/pg_ctl; Debian: apt-get install postgresql)"
    try:
        import psycopg2  # noqa: F401  (MLflow's driver for postgresql+psycopg2://)
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary, in the project's test extra)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to own the cluster (initdb refuses root)"
    return None


@dataclass
class PostgresCluster:
    """One throwaway cluster: data folder, socket and log under ``root``, listening on 127.0.0.1:``port``."""

    root: Path
    port: int
    bindir: Path
    user: str | None  # the OS user that runs it (``postgres`` when the tests run as root)
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    @classmethod
    def start(cls) -> "PostgresCluster":
        bindir = postgres_bindir()
        user = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="reid-pg-"))
        if user:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        cluster = cls(root, free_port(), bindir, user)
        subprocess.run(cluster._as_owner(str(bindir / "initdb"), "-D", str(cluster.data), "-A", "trust",
                                         "-U", "postgres", "-E", "UTF8", "--no-sync"),
                       check=True, capture_output=True, text=True, timeout=120)
        # -F: no fsync (a throwaway cluster); -k: the socket in our folder, not /var/run/postgresql.
        started = subprocess.run(cluster._as_owner(
            str(bindir / "pg_ctl"), "-D", str(cluster.data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
            "-o", f"-k {root} -h 127.0.0.1 -p {cluster.port} -F -c max_connections=200", "start"),
            capture_output=True, text=True, timeout=90)
        if started.returncode != 0:
            log = (root / "postgres.log").read_text() if (root / "postgres.log").exists() else ""
            cluster.stop()
            raise RuntimeError(f"pg_ctl start failed ({started.returncode}): {started.stderr}\n{log[-2000:]}")
        return cluster

    def database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URI (the psycopg2 driver named: SQLAlchemy 2.1's
        plain ``postgresql://`` means psycopg 3)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        self.databases.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the postmaster by the pid in its pid file (immediate: nothing to keep), remove the folder."""
        stop_pid(read_pid(self.data / "postmaster.pid"), signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        shutil.rmtree(self.root, ignore_errors=True)


# --- SLURM ---------------------------------------------------------------------------------------------

SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
MUNGE_KEY = Path("/etc/munge/munge.key")


def slurm_missing() -> str | None:
    """Why a SLURM cluster cannot be started on this machine, or None."""
    absent = [t for t in SLURM_TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).is_file()]
    if absent:
        return f"SLURM/munge not installed (no {', '.join(absent)}; Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root (SlurmUser=root) and munged as munge"
    if not MUNGE_KEY.is_file():
        return f"no munge key at {MUNGE_KEY} (the Debian munge package creates it)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user to run munged (the Debian munge package creates it)"
    return None


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    """munged + slurmctld + one slurmd per node on this machine, one partition, everything under ``root``.

    The nodes (``n1``, ``n2``, ...) are this machine split in parts (its CPUs shared out), each its own
    ``slurmd -N NAME`` on its own port: one-node jobs run side by side, and a two-node job runs
    ``srun`` across both as on two machines. ``env`` is what a client needs (``SLURM_CONF``); pass it
    to ``sbatch``/``reid sweep``. The recipe: ``ProctrackType=proctrack/linuxproc`` and
    ``TaskPlugin=task/none`` (no cgroups needed), no accounting (a job's end is read from ``scontrol
    show job``), a munged of our own on a socket in ``root``.
    """

    root: Path
    host: str
    cpus_per_node: int
    nodes: list[str]
    pids: dict[str, Path] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def logs(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.root.glob("log/*.log")) + [self.root / "munge" / "munged.log"]:
            if log.is_file():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    @classmethod
    def start(cls, nodes: int = 2) -> "SlurmCluster":
        host = socket.gethostname().split(".")[0]
        cpus = max(1, (os.cpu_count() or 1) // nodes)
        cluster = cls(Path(tempfile.mkdtemp(prefix="reid-slurm-")), host, cpus, [f"n{i}" for i in range(1, nodes + 1)])
        root = cluster.root
        os.chmod(root, 0o755)  # munged checks that every folder above its socket is reachable by all
        munge_dir = root / "munge"
        munge_dir.mkdir(mode=0o755)
        entry = pwd.getpwnam("munge")
        os.chown(munge_dir, entry.pw_uid, entry.pw_gid)
        for sub in ("state", "spool", "log"):
            (root / sub).mkdir()
        try:
            subprocess.run(["runuser", "-u", "munge", "--", _daemon("munged"), f"--socket={munge_dir / 'munge.sock'}",
                            f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
                            f"--seed-file={munge_dir / 'munged.seed'}"],
                           check=True, capture_output=True, text=True, timeout=30)
            cluster.pids["munged"] = munge_dir / "munged.pid"
            cluster.conf.write_text(cluster.config(free_port()))
            subprocess.run([_daemon("slurmctld"), "-f", str(cluster.conf)], env=cluster.env, check=True,
                           capture_output=True, text=True, timeout=60)
            cluster.pids["slurmctld"] = root / "slurmctld.pid"
            for node in cluster.nodes:
                subprocess.run([_daemon("slurmd"), "-f", str(cluster.conf), "-N", node], env=cluster.env, check=True,
                               capture_output=True, text=True, timeout=60)
                cluster.pids[f"slurmd-{node}"] = root / f"slurmd-{node}.pid"
            cluster.wait_idle(60)
        except (subprocess.SubprocessError, RuntimeError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            logs = cluster.logs()
            cluster.stop()
            raise RuntimeError(f"the test SLURM cluster did not start: {exc}\n{detail}\n{logs}") from None
        return cluster

    def config(self, ctld_port: int) -> str:
        r = self.root
        nodes = [f"NodeName={n} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={free_port()} "
                 f"CPUs={self.cpus_per_node} State=UNKNOWN" for n in self.nodes]
        return "\n".join([
            "ClusterName=reidtest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.sock'}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "KillWait=5",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",  # %n: the node's name, one folder per slurmd
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
            *nodes,
            f"PartitionName=reid Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n"

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            seen = (proc.stdout + proc.stderr).strip()
            if proc.returncode == 0 and seen.split() and all(s == "idle" for s in seen.split()):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the nodes are not idle after {timeout:.0f} s (sinfo: {seen!r})")

    def stop(self) -> None:
        """Cancel what is left, stop slurmd, slurmctld and munged by the pids they wrote, remove the folder."""
        if "slurmctld" in self.pids:
            subprocess.run(["scancel", "--full", "--partition=reid"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                queue = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True, timeout=30)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.3)
        for daemon in [*(f"slurmd-{n}" for n in self.nodes), "slurmctld", "munged"]:
            if daemon in self.pids:
                stop_pid(read_pid(self.pids[daemon]))
        shutil.rmtree(self.root, ignore_errors=True)
