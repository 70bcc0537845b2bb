"""Real services for the team tests: a throwaway PostgreSQL cluster and a one-node SLURM cluster.

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
