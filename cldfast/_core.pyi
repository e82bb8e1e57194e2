"""Type stub of ``cldfast._core``, the compiled module built from csrc/bindings.cpp (private: the
only caller is :mod:`cldfast.core.kernels`, which checks the tensors first).

Every function takes raw addresses (``tensor.data_ptr()``, as ``int``), element strides, sizes
and dtype codes (``FLOAT_CODES``, ``INDEX_CODES``, ``LABEL_CODES``, ``ACC_CODES`` in
:mod:`cldfast.core.kernels`); the CUDA ones take the device index and the caller's stream
(``torch.cuda.current_stream().cuda_stream``) last. The bindings declare no argument names
(pybind11 calls them ``arg0``, ``arg1``, ...), so every parameter is positional-only; the names
here are those of the C++ structs in csrc/include/cldfast/kernels.h. Pointer arguments are
``int`` addresses and are not checked: a wrong one crashes the process.

The ``cuda_*`` functions exist only in a build with the CUDA kernels (``with_cuda`` is True).
"""

__version__: str
"""The project version from pyproject.toml (scikit-build-core passes it to CMake)."""
with_cuda: bool
"""Whether this build contains the CUDA kernels (and the ``cuda_*`` functions)."""
cuda_architectures: str
"""The CUDA architectures compiled, comma-separated (e.g. ``"75,80,86,89,90"``); ``""`` without
CUDA kernels."""
with_openmp: bool
"""Whether the CPU kernels were compiled with OpenMP."""
num_flags: int
"""Length of the int64 flag buffer every kernel reports into."""

def cpu_num_threads() -> int:
    """OpenMP threads the CPU kernels use (1 without OpenMP)."""

def cpu_set_num_threads(n: int, /) -> None:
    """Set the OpenMP threads of the CPU kernels."""

# CPU kernels (release the GIL while they run).
def cpu_record(
    index: int, index_dtype: int, index_stride: int, loss: int, loss_dtype: int,
    loss_stride: int, batch: int, epoch: int, chunk: int, num_samples: int, flags: int, /,
) -> None: ...
def cpu_record_ce(
    index: int, index_dtype: int, index_stride: int, logits: int, logits_dtype: int,
    logits_stride: int, target: int, target_dtype: int, target_stride: int, batch: int,
    num_classes: int, loss_out: int, lse_out: int, epoch: int, chunk: int, num_samples: int,
    flags: int, /,
) -> None: ...
def cpu_ce_backward(
    logits: int, logits_dtype: int, logits_stride: int, target: int, target_dtype: int,
    target_stride: int, lse: int, grad_loss: int, grad_loss_stride: int, batch: int,
    num_classes: int, grad: int, /,
) -> None: ...
def cpu_end_epoch(
    num_samples: int, labels: int, labels_dtype: int, val_history: int, val_stride: int,
    history_base: int, checkpoint: int, epoch: int, chunk: int, clear_epoch: int, last: int,
    i32_state: int, acc: int, acc_dtype: int, flags: int, /,
) -> None: ...
def cpu_scores(num_samples: int, i32_state: int, acc: int, acc_dtype: int, out: int, /) -> None: ...

# CUDA kernels: only in a build with them (with_cuda). They launch on `stream` of `device`.
def cuda_runtime_version() -> int:
    """CUDA runtime version the kernels were built with (e.g. 13000 for 13.0)."""

def cuda_driver_version() -> int:
    """CUDA version of the installed driver (e.g. 12040), 0 when there is no driver."""

def cuda_record(
    index: int, index_dtype: int, index_stride: int, loss: int, loss_dtype: int,
    loss_stride: int, batch: int, epoch: int, chunk: int, num_samples: int, flags: int,
    device: int, stream: int, /,
) -> None: ...
def cuda_record_ce(
    index: int, index_dtype: int, index_stride: int, logits: int, logits_dtype: int,
    logits_stride: int, target: int, target_dtype: int, target_stride: int, batch: int,
    num_classes: int, loss_out: int, lse_out: int, epoch: int, chunk: int, num_samples: int,
    flags: int, device: int, stream: int, /,
) -> None: ...
def cuda_ce_backward(
    logits: int, logits_dtype: int, logits_stride: int, target: int, target_dtype: int,
    target_stride: int, lse: int, grad_loss: int, grad_loss_stride: int, batch: int,
    num_classes: int, grad: int, device: int, stream: int, /,
) -> None: ...
def cuda_end_epoch(
    num_samples: int, labels: int, labels_dtype: int, val_history: int, val_stride: int,
    history_base: int, checkpoint: int, epoch: int, chunk: int, clear_epoch: int, last: int,
    i32_state: int, acc: int, acc_dtype: int, flags: int, device: int, stream: int, /,
) -> None: ...
def cuda_scores(
    num_samples: int, i32_state: int, acc: int, acc_dtype: int, out: int, device: int,
    stream: int, /,
) -> None: ...
