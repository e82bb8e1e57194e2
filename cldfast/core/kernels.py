"""Thin dispatcher between torch tensors and the kernels: the native ones in
``cldfast._core`` where this build covers the tensors' device, their torch twins in
:mod:`cldfast.core.kernels_torch` everywhere else.

Every public kernel function here (``record``, ``record_ce``, ``ce_backward``,
``end_epoch``, ``scores``) first picks its path for the device of the tensors it writes:

* **native** on the CPU always, and on CUDA devices when this build has the CUDA kernels,
  torch is not a ROCm build and the NVIDIA driver can run them (:func:`cuda_compatibility`).
  The function turns the tensors into raw addresses and element strides and calls the CPU
  or CUDA entry point; CUDA kernels run on the caller's current stream. Nothing is
  allocated except the outputs of :func:`record_ce`, :func:`ce_backward` and :func:`scores`.
* **torch** (the same-named twin in ``kernels_torch``: same arguments, same state layout,
  same flags) on every other device (a CPU-only build on a GPU machine, ROCm, XPU, ...).
  The first use on a device type emits one :class:`KernelFallbackWarning`.

The environment variable ``CLDFAST_KERNELS`` chooses: ``auto`` (default: as above),
``torch`` (the twins on every device, e.g. to test them or to compare) or ``native``
(raise instead of falling back). It is read when a :class:`~cldfast.CLDTracker` is built
(:func:`uses_native`) and on the first kernel call for a device type, not at every call (an
environment look-up would cost each ``record`` more than the path's dictionary look-up): set
it before building the tracker. The path then chosen per device type holds for every kernel
call until a tracker is built under another value. :func:`kernel_paths` and
:func:`build_info` report the path each device takes.
"""

from __future__ import annotations

import os
from typing import Any

import warnings

import torch

from .. import _core

# Dtype codes shared with csrc/include/cldfast/common.h (enum DType).
FLOAT_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
INDEX_CODES = {torch.int64: 4, torch.int32: 5}
LABEL_CODES = {torch.int32: 5, torch.int16: 6}
ACC_CODES = {torch.float32: 0, torch.float64: 3}

# Slots of the int64 flag buffer (enum Flag in common.h).
(BAD_INDEX_COUNT, FIRST_BAD_INDEX, NON_FINITE, BAD_TARGET_COUNT, FIRST_BAD_TARGET, OBSERVED,
 MIN_LAST_CHECKPOINT) = range(7)
NO_CHECKPOINT = 2**31 - 1
NUM_FLAGS = int(_core.num_flags)


def cuda_compiled() -> bool:
    """Whether this build of cldfast contains the CUDA kernels."""
    return bool(_core.with_cuda)


def _version_str(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_compatibility(runtime: int, driver: int) -> tuple[bool, str]:
    """Whether kernels built with CUDA runtime ``runtime`` (e.g. 13000) can run on a driver
    that supports CUDA ``driver`` (e.g. 12040; 0 = no driver). CUDA guarantees minor-version
    compatibility: a runtime runs on any driver of the same major version or newer. Returns
    (compatible, a sentence for users)."""
    if driver <= 0:
        return False, (f"cldfast's CUDA kernels were built with CUDA {_version_str(runtime)}; "
                       "no NVIDIA driver was found")
    if driver // 1000 >= runtime // 1000:
        caveat = ("" if driver >= runtime else
                  "; the driver is older than the toolkit's minor version, which is enough for "
                  "the compiled architectures but not for compiling PTX for a newer GPU at run "
                  "time (build for your GPU's architecture with CMAKE_CUDA_ARCHITECTURES)")
        return True, (f"cldfast's CUDA kernels (CUDA {_version_str(runtime)}) run on this driver "
                      f"(CUDA {_version_str(driver)}){caveat}")
    return False, (
        f"cldfast's CUDA kernels were built with CUDA {_version_str(runtime)}, but the installed "
        f"NVIDIA driver supports only CUDA {_version_str(driver)} (torch was built for CUDA "
        f"{torch.version.cuda}). Rebuild cldfast with a CUDA toolkit of at most the driver's "
        f"major version, ideally torch's (pip install --no-build-isolation -C "
        f"cmake.define.CMAKE_CUDA_COMPILER=/path/to/cuda-{torch.version.cuda}/bin/nvcc .), or "
        "upgrade the driver")


def cuda_versions() -> dict:
    """The CUDA runtime the kernels were built with, the driver found, and whether they are
    compatible (all None in a build without CUDA kernels)."""
    if not cuda_compiled():
        return {"cuda_runtime": None, "cuda_driver": None, "cuda_compatible": None}
    runtime, driver = int(_core.cuda_runtime_version()), int(_core.cuda_driver_version())
    ok, _ = cuda_compatibility(runtime, driver)
    return {"cuda_runtime": _version_str(runtime),
            "cuda_driver": _version_str(driver) if driver > 0 else None,
            "cuda_compatible": ok}


def _check_driver_at_import() -> tuple[bool, str] | None:
    if not cuda_compiled():
        return None
    runtime, driver = int(_core.cuda_runtime_version()), int(_core.cuda_driver_version())
    verdict = cuda_compatibility(runtime, driver)
    if driver > 0 and not verdict[0]:
        warnings.warn(verdict[1] + "; CUDA trackers will run the slower torch twins of the "
                      "kernels instead (CPU trackers use the compiled kernels)",
                      RuntimeWarning, stacklevel=3)
    return verdict


_DRIVER = _check_driver_at_import()


# How to get compiled CUDA kernels (README, "Install and run"; CMakeLists.txt, CLDFAST_CUDA).
BUILD_HINT = ("reinstall cldfast from source on a machine with the CUDA toolkit's nvcc on PATH "
              "(pip install -C cmake.define.CLDFAST_CUDA=ON . fails loudly without nvcc; see the "
              "README's install section)")


def _require_cuda_build(device: torch.device) -> None:
    if not cuda_compiled():
        raise RuntimeError(
            f"cldfast was built without CUDA kernels, so they cannot run on {device}: "
            f"{BUILD_HINT}, or let the torch twins run (CLDFAST_KERNELS=auto)")
    if _DRIVER is not None and not _DRIVER[0] and torch.cuda.is_available():
        raise RuntimeError(_DRIVER[1])


# --------------------------------------------------------------------------- kernel paths
KERNELS_ENV = "CLDFAST_KERNELS"
KERNEL_MODES = ("auto", "native", "torch")


class KernelFallbackWarning(UserWarning):
    """The tracker runs the torch twins of cldfast's kernels (:mod:`cldfast.core.kernels_torch`)
    because this build has no compiled kernels for its device, or because
    ``CLDFAST_KERNELS=torch`` asks for them. Emitted once per device type; the scores are the
    same up to rounding, only slower."""


def kernels_mode() -> str:
    """The value of ``CLDFAST_KERNELS`` (``auto`` when unset or empty); ValueError for any
    other value than auto, native or torch."""
    raw = os.environ.get(KERNELS_ENV, "")
    mode = raw.strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={raw!r} is not one of {', '.join(KERNEL_MODES)}")
    return mode


def native_coverage(device_type: str) -> tuple[bool, str]:
    """Whether this build's compiled kernels can run on devices of ``device_type`` ("cpu",
    "cuda", "mps", ...), and why not (empty when they can)."""
    if device_type == "cpu":
        return True, ""
    if device_type == "cuda":
        if getattr(torch.version, "hip", None):
            return False, (f"torch is a ROCm build (HIP {torch.version.hip}) and cldfast's GPU "
                           "kernels are CUDA only")
        if not cuda_compiled():
            return False, "this build of cldfast has no CUDA kernels"
        if _DRIVER is not None and not _DRIVER[0]:
            return False, _DRIVER[1]
        return True, ""
    return False, f"cldfast compiles kernels for the CPU and CUDA only, not for {device_type}"


def _decide(mode: str, device_type: str) -> tuple[str, str]:
    """("native" | "torch" | "none", why) for ``device_type`` under ``mode``."""
    covered, why = native_coverage(device_type)
    if mode == "torch":
        return "torch", f"{KERNELS_ENV}=torch"
    if covered:
        return "native", ""
    if mode == "native":
        return "none", f"{KERNELS_ENV}=native, but {why}"
    return "torch", why


def _describe(device_type: str) -> str:
    try:
        path, why = _decide(kernels_mode(), device_type)
    except ValueError as exc:
        return f"none ({exc})"
    return path if not why else f"{path} ({why})"


def kernel_path(device: str | torch.device) -> str:
    """Which kernels a tracker built now on ``device`` would run: ``"native"``,
    ``"torch (why)"``, or ``"none (why)"`` when ``CLDFAST_KERNELS`` is invalid or says
    ``native`` and no compiled kernels cover the device. Describes only; emits no warning."""
    return _describe(torch.device(device).type)


def kernel_paths() -> dict[str, str]:
    """The path each device type would take for a tracker built now, as :func:`kernel_path`
    words it: ``{"cpu": ..., "cuda": ..., "other": ...}``, where ``other`` stands for every
    other device type torch knows (mps, xpu, ...), which always takes the torch path."""
    return {"cpu": _describe("cpu"), "cuda": _describe("cuda"),
            "other": _describe("mps, xpu, ...")}


# device type -> whether the native kernels run there, under CLDFAST_KERNELS=_ROUTES_ENV.
_ROUTES: dict[str, bool] = {}
_ROUTES_ENV: str | None = None
_WARNED: set[str] = set()  # device types whose fallback has been announced


def uses_native(device: torch.device, *, stacklevel: int = 2) -> bool:
    """Whether the kernels for tensors on ``device`` take the native path (False: the torch
    twins). Reads ``CLDFAST_KERNELS`` (a new value drops the paths chosen so far); raises
    ValueError for a bad value and RuntimeError when it says ``native`` and no compiled
    kernels cover ``device``. The first fallback on a device type emits a
    :class:`KernelFallbackWarning` (``stacklevel`` as warnings.warn would take it in the
    caller). CLDTracker calls this when it is built; the kernel functions use the path it
    chose."""
    global _ROUTES_ENV
    raw = os.environ.get(KERNELS_ENV)
    if raw != _ROUTES_ENV:
        _ROUTES.clear()
        _ROUTES_ENV = raw
    native = _ROUTES.get(device.type)
    if native is not None:
        return native
    path, why = _decide(kernels_mode(), device.type)
    if path == "none":
        raise RuntimeError(f"no compiled kernels for device {device}: {why}"
                           + (f"; {BUILD_HINT}" if device.type == "cuda" else "")
                           + f". Unset {KERNELS_ENV} (or set it to auto) to run the torch twins")
    native = path == "native"
    if not native and device.type not in _WARNED:
        _WARNED.add(device.type)
        if why.startswith(KERNELS_ENV):
            advice = f"unset {KERNELS_ENV} (or set it to auto) for the compiled kernels"
        elif device.type == "cuda" and not getattr(torch.version, "hip", None):
            advice = ("for the compiled kernels " + BUILD_HINT if not cuda_compiled() else
                      "the compiled kernels need an NVIDIA driver for their CUDA version "
                      "(cldfast.build_info() shows both)")
        else:
            advice = f"the torch path is the one cldfast has for {device.type}"
        warnings.warn(
            f"cldfast runs the torch twins of its kernels on {device.type} ({why}): the same "
            f"scores up to rounding, slower; {advice}. cldfast.build_info()['kernels'] shows "
            "the path of each device", KernelFallbackWarning, stacklevel=stacklevel + 1)
    _ROUTES[device.type] = native
    return native


def _native(t: torch.Tensor) -> bool:
    """The path for a kernel call writing ``t``: the one chosen for its device type (a
    dictionary look-up), or, the first time, :func:`uses_native` (its warning attributed to
    the kernel function's caller)."""
    if t.is_cpu:
        native = _ROUTES.get("cpu")
    elif t.is_cuda:
        native = _ROUTES.get("cuda")
    else:
        native = _ROUTES.get(t.device.type)
    return native if native is not None else uses_native(t.device, stacklevel=3)


_WITH_CUDA = bool(_core.with_cuda)
# The raw handle of the current stream without building a torch.cuda.Stream object (a few µs
# per launch); the public call is the fallback.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(device: torch.device) -> tuple[int, int]:
    """(device index, raw stream) for a launch on ``device``'s current stream."""
    if not _WITH_CUDA:
        _require_cuda_build(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if _raw_stream is not None:
        return index, _raw_stream(index)
    return index, torch.cuda.current_stream(index).cuda_stream


def _launch(fn, args: tuple, device: torch.device) -> None:
    """Run the CUDA entry point ``fn`` on ``device``. When another device is current, torch's
    device guard makes ``device`` current for the call (and restores the caller's device
    without creating a context on it)."""
    index, stream = _stream(device)
    if index == torch.cuda.current_device():
        fn(*args, index, stream)
    else:
        with torch.cuda.device(index):
            fn(*args, index, stream)


def _is_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def record(index: torch.Tensor, loss: torch.Tensor, epoch: torch.Tensor, num_samples: int,
           flags: torch.Tensor) -> None:
    """Add one batch of losses to the open epoch.

    index: [B] int64/int32 on the epoch buffer's device; loss: [B] floating, same device.
    epoch: [S, 2, chunk] float32 open-epoch buffer (sums, counts per shard); flags: [NUM_FLAGS].
    """
    if not _native(epoch):
        return _twins.record(index, loss, epoch, num_samples, flags)
    args = (index.data_ptr(), INDEX_CODES[index.dtype], index.stride(0), loss.data_ptr(),
            FLOAT_CODES[loss.dtype], loss.stride(0), loss.shape[0], epoch.data_ptr(),
            epoch.shape[2], int(num_samples), flags.data_ptr())
    if _is_cuda(epoch):
        _launch(_core.cuda_record, args, epoch.device)
    else:
        _core.cpu_record(*args)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' arithmetic type for logits of ``dtype`` (common.h, Compute<T>)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def record_ce(index: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, epoch: torch.Tensor,
              num_samples: int, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy of ``logits`` [B, C] against ``target`` [B], recorded in place.

    Returns (losses, lse): the losses as a new float32 tensor [B] (no autograd; see
    CLDTracker.record) and each row's log-sum-exp [B] (float64 for float64 logits, float32
    otherwise) for :func:`ce_backward`. ``logits`` must have unit stride along classes; rows
    may be strided. Rows whose target is outside [0, C) get a NaN loss and are flagged.
    """
    if not _native(epoch):
        return _twins.record_ce(index, logits, target, epoch, num_samples, flags)
    batch, classes = logits.shape
    out = torch.empty(batch, dtype=torch.float32, device=logits.device)
    lse = torch.empty(batch, dtype=_compute_dtype(logits.dtype), device=logits.device)
    args = (index.data_ptr(), INDEX_CODES[index.dtype], index.stride(0), logits.data_ptr(),
            FLOAT_CODES[logits.dtype], logits.stride(0), target.data_ptr(),
            INDEX_CODES[target.dtype], target.stride(0), batch, classes, out.data_ptr(),
            lse.data_ptr(), epoch.data_ptr(), epoch.shape[2], int(num_samples), flags.data_ptr())
    if _is_cuda(epoch):
        _launch(_core.cuda_record_ce, args, epoch.device)
    else:
        _core.cpu_record_ce(*args)
    return out, lse


def ce_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                grad_loss: torch.Tensor) -> torch.Tensor:
    """Gradient of the per-sample cross-entropy w.r.t. ``logits``: (softmax - onehot) scaled
    by ``grad_loss`` [B] (float32, any stride incl. 0), in one kernel. Rows whose target is
    outside [0, C) get a zero gradient. Returns a new contiguous [B, C] tensor in the kernels'
    arithmetic type (float64 for float64 logits, float32 otherwise)."""
    if not _native(logits):
        return _twins.ce_backward(logits, target, lse, grad_loss)
    batch, classes = logits.shape
    grad = torch.empty(batch, classes, dtype=_compute_dtype(logits.dtype), device=logits.device)
    if grad_loss.dtype != torch.float32:
        grad_loss = grad_loss.float()
    args = (logits.data_ptr(), FLOAT_CODES[logits.dtype], logits.stride(0), target.data_ptr(),
            INDEX_CODES[target.dtype], target.stride(0), lse.data_ptr(), grad_loss.data_ptr(),
            grad_loss.stride(0), batch, classes, grad.data_ptr())
    if _is_cuda(logits):
        _launch(_core.cuda_ce_backward, args, logits.device)
    else:
        _core.cpu_ce_backward(*args)
    return grad


def end_epoch(labels: torch.Tensor, val_history: torch.Tensor, history_base: int,
              checkpoint: int, epoch_shard: torch.Tensor, last: torch.Tensor,
              i32_state: torch.Tensor, acc: torch.Tensor, flags: torch.Tensor,
              clear_epoch: bool = False) -> None:
    """Close checkpoint ``checkpoint`` for the n samples held here.

    labels: [n] int16/int32 column into val_history; val_history: [R, C] float64 with
    contiguous rows, row r holding checkpoint ``history_base + r``; epoch_shard: [2, chunk]
    float32 contiguous (this shard's summed losses and counts, chunk >= n); last: [n] float32;
    i32_state: [2, n] int32; acc: [5, n] float32 or float64. Writes the number of samples
    folded to flags[OBSERVED] and the oldest checkpoint any sample still refers to to
    flags[MIN_LAST_CHECKPOINT] (NO_CHECKPOINT if none). With ``clear_epoch`` the kernel zeroes
    the slots of ``epoch_shard`` it read (saves a separate pass); otherwise the buffer is left
    as it was.
    """
    if not _native(acc):
        return _twins.end_epoch(labels, val_history, history_base, checkpoint, epoch_shard, last,
                                i32_state, acc, flags, clear_epoch=clear_epoch)
    n = last.shape[0]
    flags[OBSERVED] = 0
    flags[MIN_LAST_CHECKPOINT] = NO_CHECKPOINT
    args = (n, labels.data_ptr(), LABEL_CODES[labels.dtype], val_history.data_ptr(),
            val_history.stride(0), int(history_base), int(checkpoint), epoch_shard.data_ptr(),
            epoch_shard.shape[1], int(bool(clear_epoch)), last.data_ptr(), i32_state.data_ptr(), acc.data_ptr(),
            ACC_CODES[acc.dtype], flags.data_ptr())
    if _is_cuda(acc):
        _launch(_core.cuda_end_epoch, args, acc.device)
    else:
        _core.cpu_end_epoch(*args)


def scores(i32_state: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per sample from the Welford state; NaN where fewer than 2 differences.

    i32_state: [2, n]; acc: [5, n]. Returns a new [n] tensor in the accumulator dtype.
    """
    if not _native(acc):
        return _twins.scores(i32_state, acc)
    n = acc.shape[1]
    out = torch.empty(n, dtype=acc.dtype, device=acc.device)
    args = (n, i32_state.data_ptr(), acc.data_ptr(), ACC_CODES[acc.dtype], out.data_ptr())
    if _is_cuda(acc):
        _launch(_core.cuda_scores, args, acc.device)
    else:
        _core.cpu_scores(*args)
    return out


def build_info() -> dict[str, Any]:
    """What this installation of cldfast was compiled with.

    Keys: ``version``; ``cuda`` (bool: CUDA kernels compiled); ``cuda_architectures`` (list
    of compute capabilities, empty without CUDA); ``cuda_runtime`` (the CUDA runtime the
    kernels were built with, e.g. "13.0"); ``cuda_driver`` (the CUDA version of the driver
    found, None without one); ``cuda_compatible`` (whether the kernels can run on that driver);
    ``torch_cuda`` (the CUDA version torch was built for); ``openmp`` (bool); ``cpu_threads``
    (threads the CPU kernels use); ``kernels_mode`` (``CLDFAST_KERNELS``: auto, native or
    torch); ``kernels`` (the path each device type takes: ``{"cpu": "native", "cuda":
    "native" or "torch (why)", "other": "torch (...)"}``, :func:`kernel_paths`).
    """
    archs = [a for a in str(_core.cuda_architectures).split(",") if a]
    return {
        "version": _core.__version__,
        "cuda": bool(_core.with_cuda),
        "cuda_architectures": archs,
        **cuda_versions(),
        "torch_cuda": torch.version.cuda,
        "openmp": bool(_core.with_openmp),
        "cpu_threads": int(_core.cpu_num_threads()),
        "kernels_mode": os.environ.get(KERNELS_ENV, "").strip().lower() or "auto",
        "kernels": kernel_paths(),
    }


# The twins import this module's constants; imported last so that either module may be
# imported first.
from . import kernels_torch as _twins  # noqa: E402
