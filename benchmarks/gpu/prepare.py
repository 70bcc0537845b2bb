"""Build and check everything the GPU check's one call needs (benchmarks/README.md, "The GPU check").

The GPU machine receives the checkout's tracked and untracked-not-ignored files plus at most 8
git-ignored paths named in the device tool's ``carry``, 64 MiB in all, and can install nothing from
the network. This command, run here once before the call:

1. **wheels**: downloads the wheels of ``wheels.lock`` (pydantic and its requirements, missing on the
   GPU image) for CPython 3.12 on manylinux x86_64 into ``benchmarks/gpu/wheels/``, unless that folder
   already holds exactly them; checks one wheel per pin and every requirement pinned.
2. **pack**: packs Market-1501 (junk dropped, distractors kept: 12,936 train, 3,368 query, 15,913
   gallery) into ``pack/market1501.reidpack`` (WebP quality 80, :mod:`reid.data.pack`), unless a pack
   there already holds exactly the dataset's images; checks its header, that the file ends where the
   header says, and that the first and last image of every split decode.
3. **size**: adds up what travels (``git ls-files --cached --others --exclude-standard``, a ``shared/``
   folder if the checkout has one, and the carried paths, each of which must exist and be git-ignored)
   against the 64 MiB limit.

It prints the exact device-tool call (command, ``carry``, ``timeout_s``) and exits 1, naming each
problem and its fix, when something is missing, wrong or too large. ``--find-links DIR`` takes the
wheels from a local folder instead of the package index (the same ``pip download``; the tests use
it), ``--dataset`` another Market-format folder, ``--expect any`` accepts any split sizes.

Usage:
    bash benchmarks/gpu/prepare.sh                  # PYTHON=.venv/bin/python by default
    bash benchmarks/gpu/prepare.sh --dataset /data/Market-1501-v15.09.15 --json prepare.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import check_tools  # noqa: E402

from reid.errors import ReidError  # noqa: E402

MIB = 2**20
LIMIT_MIB = 64.0  # what one device-tool call carries: working tree + shared/ + carried paths
MAX_CARRY = 8
FULL_PROTOCOL = {"train": 12_936, "query": 3_368, "gallery": 15_913}
DEFAULT_DATASET = Path(os.environ.get("REID_MARKET_ROOT", REPO.parent / "shared" / "data" / "Market-1501-v15.09.15"))
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CHECK_COMMAND = "bash benchmarks/gpu/check.sh"
CALL_MARGIN_S = 30  # the device call's timeout_s over the check's budget: interpreter exit, transfers


class PrepareError(ReidError):
    """A step that cannot complete; the message says what is missing and how to fix it."""


# -- wheels ------------------------------------------------------------------------------------------
def wheel_problems(lock: Path, wheels: Path) -> list[str]:
    """What is wrong with the wheels folder against the lock (empty when complete)."""
    if not wheels.is_dir():
        return [f"{wheels} does not exist"]
    return check_tools.check_lock(lock, wheels, check_installed=False)["problems"]


def download_wheels(lock: Path, wheels: Path, python: str, find_links: Path | None) -> None:
    """``pip download`` every pin of ``lock`` for CPython 3.12 manylinux x86_64 into ``wheels``."""
    pins = [f"{name}=={version}" for name, version in check_tools.read_lock(lock).items()]
    command = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(wheels),
               "--disable-pip-version-check", "--quiet"]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    proc = subprocess.run(command + pins, capture_output=True, text=True)
    if proc.returncode != 0:
        source = f"the folder {find_links}" if find_links else "the package index"
        raise PrepareError(f"pip download of {', '.join(pins)} from {source} failed (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr).strip()[-2000:]}\nCheck the pins in {lock} and the network "
                           "(only this machine can reach the index; the GPU machine cannot)")


def ensure_wheels(lock: Path, wheels: Path, python: str, find_links: Path | None, force: bool) -> dict[str, Any]:
    """The wheels folder holding exactly the lock's wheels: kept if already so, else (re)downloaded.

    A folder that does not match the lock is emptied of its ``*.whl`` first: two versions of one package
    stop ``pip install --no-index`` on the GPU machine. The folder is this command's own (git-ignored).
    """
    problems = wheel_problems(lock, wheels)
    action = "kept"
    if problems or force:
        wheels.mkdir(parents=True, exist_ok=True)
        for old in wheels.glob("*.whl"):
            old.unlink()
        download_wheels(lock, wheels, python, find_links)
        action = "downloaded"
        problems = wheel_problems(lock, wheels)
    if problems:
        raise PrepareError(f"the wheels in {wheels} do not match {lock}:\n  " + "\n  ".join(problems) +
                           "\nPin every missing requirement in the lock (one name==version a line) and rerun")
    files = sorted(wheels.glob("*.whl"))
    return {"path": str(wheels), "action": action, "files": [f.name for f in files],
            "bytes": sum(f.stat().st_size for f in files)}


# -- pack --------------------------------------------------------------------------------------------
def verify_pack(pack: Path, expected: dict[str, int] | None) -> dict[str, Any]:
    """Header, split sizes, file length and a decode of each split's first and last image.

    Raises :class:`PrepareError` naming the problem; returns the counts and size.
    """
    from PIL import Image

    from reid.data.pack import PackReader

    try:
        reader = PackReader(str(pack))
    except ReidError as exc:
        raise PrepareError(str(exc)) from None
    try:
        counts = {split: len(rows) for split, rows in reader.entries.items()}
        if expected is not None and counts != expected:
            raise PrepareError(f"{pack} holds {counts} images, expected {expected}; rebuild it (delete it and rerun)")
        entries = [e for rows in reader.entries.values() for e in rows]
        end = reader.data_start + max((e.offset + e.size for e in entries), default=0)
        size = pack.stat().st_size
        if end != size:
            raise PrepareError(f"{pack} is {size} bytes but its header ends the images at {end}: truncated or "
                               "appended to; delete it and rerun")
        for split, rows in reader.entries.items():
            for entry in (rows[:1] + rows[-1:]) if rows else []:
                try:
                    with Image.open(io.BytesIO(reader.read(entry.member))) as img:
                        img.load()
                except (OSError, ReidError) as exc:
                    raise PrepareError(f"{pack}: {entry.member} does not decode ({exc}); delete the pack and "
                                       "rerun") from None
        header = reader.header
    finally:
        os.close(reader.fd)
    return {"path": str(pack), "bytes": size, **counts, "codec": header.get("codec"), "quality": header.get("quality")}


def dataset_counts(dataset: Path) -> dict[str, int]:
    """Images per split of a Market-format folder, read as ``reid prepare`` reads it."""
    from reid.data.datasets import read_dataset

    try:
        splits = read_dataset("market1501", dataset)
    except ReidError as exc:
        raise PrepareError(f"cannot read the dataset at {dataset}: {exc}\nPass --dataset (or set "
                           "REID_MARKET_ROOT) to the Market-1501 folder") from None
    return {split: len(splits.split(split)) for split in ("train", "query", "gallery")}


def ensure_pack(dataset: Path | None, pack: Path, expect: str, quality: int, threads: int,
                force: bool) -> dict[str, Any]:
    """The pack of ``dataset`` at ``pack``: kept when it verifies against the dataset, else (re)built.

    ``expect='full'`` asks for the full Market-1501 protocol, whatever the dataset folder holds; without
    a dataset folder an existing pack is checked alone.
    """
    expected = dict(FULL_PROTOCOL) if expect == "full" else None
    if dataset is not None and dataset.is_dir():
        counts = dataset_counts(dataset)
        if expected is not None and counts != expected:
            raise PrepareError(f"{dataset} holds {counts} images, not the full Market-1501 protocol {expected}; "
                               "point --dataset at Market-1501-v15.09.15 (or pass --expect any)")
        expected = counts
    elif not pack.is_file():
        raise PrepareError(f"no pack at {pack} and no dataset at {dataset}: pass --dataset (or set REID_MARKET_ROOT) "
                           "to the Market-1501 folder")
    if pack.is_file() and not force:
        try:
            return {**verify_pack(pack, expected), "action": "kept"}
        except PrepareError as exc:
            if dataset is None or not dataset.is_dir():
                raise
            print(f"rebuilding the pack: {exc}", file=sys.stderr)
    from reid.data.datasets import read_dataset
    from reid.data.pack import write_pack

    started = time.perf_counter()
    print(f"packing {dataset} into {pack} (WebP quality {quality}, {threads} threads) ...", file=sys.stderr, flush=True)
    write_pack(read_dataset("market1501", dataset), pack, quality=quality, threads=threads)
    return {**verify_pack(pack, expected), "action": "built", "seconds": round(time.perf_counter() - started, 1)}


# -- what travels ------------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True)


def _tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_symlink() or f.is_file())


def travel_size(root: Path, carry: Sequence[Path]) -> dict[str, Any]:
    """Bytes of what a device call sends from checkout ``root`` with ``carry``; problems named."""
    problems: list[str] = []
    listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed.returncode != 0:
        raise PrepareError(f"{root} is not a git checkout ({listed.stderr.decode().strip()}); run this in the "
                           "checkout the device tool sends")
    files = [root / os.fsdecode(n) for n in listed.stdout.split(b"\0") if n]
    tree = sum(f.lstat().st_size for f in files if f.is_symlink() or f.is_file())
    shared = _tree_bytes(root / "shared") if (root / "shared").is_dir() else 0
    carried: dict[str, int] = {}
    if len(carry) > MAX_CARRY:
        problems.append(f"{len(carry)} carried paths; the device tool takes at most {MAX_CARRY}")
    for path in carry:
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            problems.append(f"{path} is outside the checkout {root}: only paths inside it can be carried")
            continue
        if not path.exists():
            problems.append(f"{rel} does not exist")
            continue
        if _git(root, "check-ignore", "-q", str(rel)).returncode != 0:
            problems.append(f"{rel} is not git-ignored: it would travel twice (and be committable); ignore it")
        carried[rel.as_posix()] = _tree_bytes(path)
    total = tree + shared + sum(carried.values())
    return {"tree_bytes": tree, "tree_files": len(files), "shared_bytes": shared, "carried_bytes": carried,
            "total_bytes": total, "total_mib": round(total / MIB, 2), "problems": problems}


def carry_for(pack: Path, root: Path) -> Path:
    """What to carry for the pack: its folder (``pack``), or the file when it lies in the checkout's root."""
    return pack if pack.parent.resolve() == root.resolve() else pack.parent


# -- the command -------------------------------------------------------------------------------------
def default_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return os.environ.get("PYTHON") or (str(venv) if venv.exists() else sys.executable)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root).resolve()
    pack = Path(args.pack or root / "pack" / "market1501.reidpack").resolve()
    wheels = Path(args.wheels or root / "benchmarks" / "gpu" / "wheels").resolve()
    lock = Path(args.lock).resolve()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "root": str(root)}
    steps = [s for s in ("wheels", "pack") if s not in (args.skip or [])]
    if "wheels" in steps:
        report["wheels"] = ensure_wheels(lock, wheels, args.python, Path(args.find_links) if args.find_links else None,
                                         args.force)
        print(f"wheels: {report['wheels']['action']}, {len(report['wheels']['files'])} in {wheels} "
              f"({report['wheels']['bytes'] / MIB:.2f} MiB)")
    if "pack" in steps:
        dataset = Path(args.dataset) if args.dataset else None
        report["pack"] = ensure_pack(dataset, pack, args.expect, args.quality, args.threads, args.force)
        p = report["pack"]
        print(f"pack: {p['action']}, {p['train']} train / {p['query']} query / {p['gallery']} gallery images in "
              f"{pack} ({p['bytes'] / MIB:.2f} MiB)")
    if "size" in (args.skip or []):
        report["problems"] = []
        return report
    carry = [carry_for(pack, root) if "pack" in steps else None, wheels if "wheels" in steps else None]
    carry_paths = list(dict.fromkeys(c for c in carry if c is not None))
    size = travel_size(root, carry_paths)
    report["size"] = size
    carry_list = list(size["carried_bytes"])
    env = []
    if "pack" in steps and pack != (root / "pack" / "market1501.reidpack").resolve():
        env.append(f"REID_CHECK_PACK={shlex.quote(pack.relative_to(root).as_posix())}")
    command = " ".join(env + [CHECK_COMMAND])
    report["call"] = {"command": command, "carry": carry_list, "timeout_s": args.budget_s + CALL_MARGIN_S}
    print(f"working tree: {size['tree_files']} files, {size['tree_bytes'] / MIB:.2f} MiB"
          + (f"; shared/: {size['shared_bytes'] / MIB:.2f} MiB" if size["shared_bytes"] else ""))
    for rel, nbytes in size["carried_bytes"].items():
        print(f"carried: {rel}: {nbytes / MIB:.2f} MiB")
    print(f"total: {size['total_mib']:.2f} MiB of {args.limit_mib:g} MiB "
          f"({args.limit_mib - size['total_mib']:.2f} MiB to spare)")
    problems = list(size["problems"])
    if size["total_bytes"] > args.limit_mib * MIB:
        problems.append(f"{size['total_mib']:.2f} MiB would travel, over the {args.limit_mib:g} MiB a call takes: "
                        "lower the pack's --quality, or remove large untracked files from the checkout")
    report["problems"] = problems
    if not problems:
        print("ready. The device tool's run, once:")
        print(json.dumps(report["call"]))
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(REPO), help="the checkout the device tool sends (default: this one)")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET),
                        help="Market-1501 folder to pack (default $REID_MARKET_ROOT or ../shared/data/Market-1501-v15.09.15)")
    parser.add_argument("--pack", default=None, help="pack file (default <root>/pack/market1501.reidpack)")
    parser.add_argument("--expect", choices=["full", "any"], default="full",
                        help="full: the pack must hold the full Market-1501 protocol (the GPU check refuses less)")
    parser.add_argument("--quality", type=int, default=80, help="WebP quality of a new pack (80: 49.9 MiB for Market)")
    parser.add_argument("--threads", type=int, default=2, help="encoder threads for a new pack")
    parser.add_argument("--wheels", default=None, help="wheels folder (default <root>/benchmarks/gpu/wheels)")
    parser.add_argument("--lock", default=str(HERE / "wheels.lock"))
    parser.add_argument("--find-links", default=None, help="take the wheels from this folder, not the package index")
    parser.add_argument("--python", default=default_python(), help="the interpreter whose pip downloads the wheels")
    parser.add_argument("--skip", nargs="+", choices=["wheels", "pack", "size"], default=None,
                        help="steps to leave out (size: no travel-size check and no call, for a pack outside a checkout)")
    parser.add_argument("--force", action="store_true", help="rebuild the pack and re-download the wheels")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="what one device call may carry")
    parser.add_argument("--budget-s", type=int, default=int(os.environ.get("REID_CHECK_BUDGET_S", 420)),
                        help="the check's budget (REID_CHECK_BUDGET_S); the call's timeout_s adds a margin")
    parser.add_argument("--json", default=None, help="write the report here too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        words = sys.argv[1:] if argv is None else list(argv)
        report["command"] = " ".join(["benchmarks/gpu/prepare.py", *(shlex.quote(w) for w in words)])
        check_tools._write_json(args.json, report)
    for problem in report["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
