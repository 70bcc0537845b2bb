"""Helper of tests/test_gpu_lease.py: one process that leases GPU slots, as a ``reid train`` would.

``python tests/gpu_lease_holder.py FOLDER SLOTS WANTED HOLD_S LOG`` leases WANTED of SLOTS slots
(``auto``: every free one) in lease folder FOLDER, waiting while they are busy; appends
``<pid> acquired <indices> <time>`` to LOG once it holds them and ``<pid> released <indices> <time>``
just before it lets them go after HOLD_S seconds (``inf``: until killed). No CUDA is involved: the
slots are the names ``0`` .. ``SLOTS-1``, as for a machine with SLOTS GPUs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def log(path: str, event: str, indices: tuple[int, ...]) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {event} {','.join(map(str, indices))} {time.time():.6f}\n")
        f.flush()
        os.fsync(f.fileno())


def main(folder: str, slots: str, wanted: str, hold_s: str, log_path: str) -> None:
    from reid.engine.gpu_lease import acquire, visible_gpus

    names = visible_gpus(int(slots), {})
    lease, _ = acquire(names, list(range(len(names))), None if wanted == "auto" else int(wanted), wait=True,
                       folder=Path(folder), what=f"holder {os.getpid()}", poll_s=0.1,
                       on_wait=lambda m: print(m, file=sys.stderr, flush=True))
    log(log_path, "acquired", lease.indices)
    print("acquired", flush=True)
    end = time.time() + float(hold_s)
    while time.time() < end:
        time.sleep(min(1.0, end - time.time()))
    log(log_path, "released", lease.indices)
    lease.release()


if __name__ == "__main__":
    main(*sys.argv[1:6])
