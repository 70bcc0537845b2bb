"""Where training runs and with which numerics: device, mixed precision, backend flags, seeds.

Everything that depends on the hardware is decided here, once, so the trainer never tests for CUDA
itself and the same code runs on a laptop CPU, an Apple GPU and an H100:

* ``train.device = "auto"`` picks CUDA (``cuda:LOCAL_RANK`` under torchrun), then MPS, then the CPU.
* ``train.amp = "auto"`` is bf16 on a CUDA device that supports it (no loss scaling needed, same
  exponent range as fp32), fp16 with a ``GradScaler`` on older CUDA devices, and off elsewhere
  (CPU autocast is slower than fp32 for convolutions on most CPUs).
* On CUDA, TF32 matmuls/convolutions are on (Ampere and later: ~2x on fp32 paths with no measurable
  effect on ReID accuracy) and ``cudnn.benchmark`` picks the fastest kernels unless
  ``train.deterministic`` asks for reproducibility instead of speed.

RNG: :func:`seed_everything` seeds Python, NumPy and torch (all devices). :func:`epoch_seed` derives
a well-mixed seed from ``(seed, epoch, rank)``; the trainer reseeds the global generators with it at
the start of every epoch, so an epoch's randomness never depends on what ran before it (evaluation,
logging, a resume from a checkpoint). :func:`rng_state`/:func:`set_rng_state` capture and restore
every generator in a form ``torch.load(weights_only=True)`` accepts (no NumPy objects).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reid.errors import ReidError

#: The devices ``reid train`` leased for this job, one per local rank (``cuda:2,cuda:3``), set by
#: :mod:`reid.engine.launch` for this process and its workers.
DEVICES_ENV = "REID_DEVICES"


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``train.device`` -> a usable ``torch.device``; a device that is not there is a clear error.

    ``local_rank`` (torchrun's ``LOCAL_RANK``) selects the GPU of this process when the name does not
    pin one (``auto`` or ``cuda``), so every process of a multi-GPU run gets its own device: the
    ``local_rank``-th GPU ``reid train`` leased (``REID_DEVICES``), else ``cuda:local_rank``.
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ReidError(f"train.device={name!r} but CUDA is not available here; use train.device=auto or cpu")
        if device.index is None:
            device = torch.device("cuda", _leased_index(local_rank or 0))
        if device.index >= torch.cuda.device_count():
            raise ReidError(f"train.device asks for {device} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not _mps_available():
        raise ReidError("train.device='mps' but the MPS backend is not available here; use train.device=auto or cpu")
    return device


def _leased_index(local_rank: int) -> int:
    leased = [d for d in os.environ.get(DEVICES_ENV, "").split(",") if d.startswith("cuda:")]
    return int(leased[local_rank].split(":", 1)[1]) if local_rank < len(leased) else local_rank


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@dataclass(frozen=True)
class AmpPolicy:
    """Resolved mixed-precision settings: the autocast dtype (None = off) and whether to scale the loss."""

    dtype: torch.dtype | None
    use_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this policy on ``device`` (a no-op context when off)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A ``GradScaler`` that is only active for fp16 (bf16 and fp32 need no loss scaling)."""
        return torch.amp.GradScaler(device.type, enabled=self.use_scaler)


def amp_policy(amp: str, device: torch.device) -> AmpPolicy:
    """``train.amp`` on ``device`` -> :class:`AmpPolicy` (see the module docstring for ``auto``)."""
    if amp == "off":
        return AmpPolicy(None, False)
    if amp == "bf16":
        return AmpPolicy(torch.bfloat16, False)
    if amp == "fp16":
        return AmpPolicy(torch.float16, True)
    if amp != "auto":
        raise ReidError(f"train.amp must be auto, bf16, fp16 or off, got {amp!r}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return AmpPolicy(torch.bfloat16, False)
        return AmpPolicy(torch.float16, True)
    return AmpPolicy(None, False)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Set the global backend flags for speed (default) or bitwise reproducibility (``deterministic``).

    Deterministic mode uses ``warn_only=True``: a few CUDA backward kernels (e.g. adaptive average
    pooling) have no deterministic implementation, and refusing to train is worse than a warning that
    names the op. ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS starts, hence here.
    """
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's legacy global generator and torch (CPU and every GPU)."""
    seed = int(seed) % 2**63
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seed is 32-bit
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed mixed from ``(seed, epoch, rank)``; neighbouring epochs get unrelated streams."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(rank)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors, ints and lists (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when as many GPUs are present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])

