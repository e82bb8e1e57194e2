// Python bindings of cldfast._core. Functions take raw addresses (tensor.data_ptr()), element
// strides, sizes and dtype codes; the CUDA ones take the caller's stream last. Checking
// tensors is the job of cldfast/core/kernels.py, the only caller of the kernel entry points.
#include <pybind11/pybind11.h>

#include <string>

#include "cldfast/common.h"
#include "cldfast/kernels.h"

namespace py = pybind11;
using namespace cldfast;

namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

RecordArgs make_record(uintptr_t index, int index_dtype, int64_t index_stride, uintptr_t loss,
                       int loss_dtype, int64_t loss_stride, int64_t batch, uintptr_t epoch,
                       int64_t chunk, int64_t num_samples, uintptr_t flags) {
  return RecordArgs{ptr<const void>(index), index_dtype, index_stride, ptr<const void>(loss),
                    loss_dtype, loss_stride, batch, ptr<float>(epoch), chunk, num_samples,
                    ptr<int64_t>(flags)};
}

RecordCEArgs make_record_ce(uintptr_t index, int index_dtype, int64_t index_stride,
                            uintptr_t logits, int logits_dtype, int64_t logits_stride,
                            uintptr_t target, int target_dtype, int64_t target_stride,
                            int64_t batch, int64_t num_classes, uintptr_t loss_out,
                            uintptr_t lse_out, uintptr_t epoch, int64_t chunk,
                            int64_t num_samples, uintptr_t flags) {
  return RecordCEArgs{ptr<const void>(index), index_dtype, index_stride,
                      ptr<const void>(logits), logits_dtype, logits_stride,
                      ptr<const void>(target), target_dtype, target_stride,
                      batch, num_classes, ptr<float>(loss_out), ptr<void>(lse_out),
                      ptr<float>(epoch), chunk, num_samples, ptr<int64_t>(flags)};
}

CEBackwardArgs make_ce_backward(uintptr_t logits, int logits_dtype, int64_t logits_stride,
                                uintptr_t target, int target_dtype, int64_t target_stride,
                                uintptr_t lse, uintptr_t grad_loss, int64_t grad_loss_stride,
                                int64_t batch, int64_t num_classes, uintptr_t grad) {
  return CEBackwardArgs{ptr<const void>(logits), logits_dtype, logits_stride,
                        ptr<const void>(target), target_dtype, target_stride,
                        ptr<const void>(lse), ptr<const float>(grad_loss), grad_loss_stride,
                        batch, num_classes, ptr<void>(grad)};
}

EndEpochArgs make_end_epoch(int64_t num_samples, uintptr_t labels, int labels_dtype,
                            uintptr_t val_history, int64_t val_stride, int32_t history_base,
                            int32_t checkpoint, uintptr_t epoch, int64_t chunk, int clear_epoch,
                            uintptr_t last, uintptr_t i32_state, uintptr_t acc, int acc_dtype,
                            uintptr_t flags) {
  return EndEpochArgs{num_samples, ptr<const void>(labels), labels_dtype,
                      ptr<const double>(val_history), val_stride, history_base, checkpoint,
                      ptr<float>(epoch), chunk, clear_epoch, ptr<float>(last),
                      ptr<int32_t>(i32_state), ptr<void>(acc), acc_dtype, ptr<int64_t>(flags)};
}

ScoresArgs make_scores(int64_t num_samples, uintptr_t i32_state, uintptr_t acc, int acc_dtype,
                       uintptr_t out) {
  return ScoresArgs{num_samples, ptr<const int32_t>(i32_state), ptr<const void>(acc), acc_dtype,
                    ptr<void>(out)};
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "cldfast native kernels (private; use the cldfast package)";
  m.attr("__version__") = CLDFAST_VERSION;
#ifdef CLDFAST_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_architectures") = std::string(CLDFAST_CUDA_ARCHS);
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_architectures") = std::string();
#endif
#ifdef CLDFAST_WITH_OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
  m.attr("num_flags") = static_cast<int>(kNumFlags);
  m.def("cpu_num_threads", &cpu::num_threads, "OpenMP threads the CPU kernels use (1 without OpenMP)");
  m.def("cpu_set_num_threads", &cpu::set_num_threads, "set the OpenMP threads of the CPU kernels");

  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("cpu_record", [](uintptr_t index, int index_dtype, int64_t index_stride, uintptr_t loss,
                         int loss_dtype, int64_t loss_stride, int64_t batch, uintptr_t epoch,
                         int64_t chunk, int64_t num_samples, uintptr_t flags) {
    cpu::record(make_record(index, index_dtype, index_stride, loss, loss_dtype, loss_stride, batch,
                            epoch, chunk, num_samples, flags));
  }, release);
  m.def("cpu_record_ce", [](uintptr_t index, int index_dtype, int64_t index_stride,
                            uintptr_t logits, int logits_dtype, int64_t logits_stride,
                            uintptr_t target, int target_dtype, int64_t target_stride,
                            int64_t batch, int64_t num_classes, uintptr_t loss_out,
                            uintptr_t lse_out, uintptr_t epoch, int64_t chunk,
                            int64_t num_samples, uintptr_t flags) {
    cpu::record_ce(make_record_ce(index, index_dtype, index_stride, logits, logits_dtype,
                                  logits_stride, target, target_dtype, target_stride, batch,
                                  num_classes, loss_out, lse_out, epoch, chunk, num_samples,
                                  flags));
  }, release);
  m.def("cpu_ce_backward", [](uintptr_t logits, int logits_dtype, int64_t logits_stride,
                              uintptr_t target, int target_dtype, int64_t target_stride,
                              uintptr_t lse, uintptr_t grad_loss, int64_t grad_loss_stride,
                              int64_t batch, int64_t num_classes, uintptr_t grad) {
    cpu::ce_backward(make_ce_backward(logits, logits_dtype, logits_stride, target, target_dtype,
                                      target_stride, lse, grad_loss, grad_loss_stride, batch,
                                      num_classes, grad));
  }, release);
  m.def("cpu_end_epoch", [](int64_t num_samples, uintptr_t labels, int labels_dtype,
                            uintptr_t val_history, int64_t val_stride, int32_t history_base,
                            int32_t checkpoint, uintptr_t epoch, int64_t chunk, int clear_epoch,
                            uintptr_t last, uintptr_t i32_state, uintptr_t acc, int acc_dtype,
                            uintptr_t flags) {
    cpu::end_epoch(make_end_epoch(num_samples, labels, labels_dtype, val_history, val_stride,
                                  history_base, checkpoint, epoch, chunk, clear_epoch, last,
                                  i32_state, acc, acc_dtype, flags));
  }, release);
  m.def("cpu_scores", [](int64_t num_samples, uintptr_t i32_state, uintptr_t acc, int acc_dtype,
                         uintptr_t out) {
    cpu::scores(make_scores(num_samples, i32_state, acc, acc_dtype, out));
  }, release);

#ifdef CLDFAST_WITH_CUDA
  m.def("cuda_runtime_version", &cuda::runtime_version,
        "CUDA runtime version the kernels were built with (e.g. 13000 for 13.0)");
  m.def("cuda_driver_version", &cuda::driver_version,
        "CUDA version of the installed driver (e.g. 12040), 0 when there is no driver");
  m.def("cuda_record", [](uintptr_t index, int index_dtype, int64_t index_stride, uintptr_t loss,
                          int loss_dtype, int64_t loss_stride, int64_t batch, uintptr_t epoch,
                          int64_t chunk, int64_t num_samples, uintptr_t flags, int device,
                          uintptr_t stream) {
    cuda::record(make_record(index, index_dtype, index_stride, loss, loss_dtype, loss_stride,
                             batch, epoch, chunk, num_samples, flags), device, stream);
  }, release);
  m.def("cuda_record_ce", [](uintptr_t index, int index_dtype, int64_t index_stride,
                             uintptr_t logits, int logits_dtype, int64_t logits_stride,
                             uintptr_t target, int target_dtype, int64_t target_stride,
                             int64_t batch, int64_t num_classes, uintptr_t loss_out,
                             uintptr_t lse_out, uintptr_t epoch, int64_t chunk,
                             int64_t num_samples, uintptr_t flags, int device, uintptr_t stream) {
    cuda::record_ce(make_record_ce(index, index_dtype, index_stride, logits, logits_dtype,
                                   logits_stride, target, target_dtype, target_stride, batch,
                                   num_classes, loss_out, lse_out, epoch, chunk, num_samples,
                                   flags), device, stream);
  }, release);
  m.def("cuda_ce_backward", [](uintptr_t logits, int logits_dtype, int64_t logits_stride,
                               uintptr_t target, int target_dtype, int64_t target_stride,
                               uintptr_t lse, uintptr_t grad_loss, int64_t grad_loss_stride,
                               int64_t batch, int64_t num_classes, uintptr_t grad, int device,
                               uintptr_t stream) {
    cuda::ce_backward(make_ce_backward(logits, logits_dtype, logits_stride, target, target_dtype,
                                       target_stride, lse, grad_loss, grad_loss_stride, batch,
                                       num_classes, grad), device, stream);
  }, release);
  m.def("cuda_end_epoch", [](int64_t num_samples, uintptr_t labels, int labels_dtype,
                             uintptr_t val_history, int64_t val_stride, int32_t history_base,
                             int32_t checkpoint, uintptr_t epoch, int64_t chunk, int clear_epoch,
                             uintptr_t last, uintptr_t i32_state, uintptr_t acc, int acc_dtype,
                             uintptr_t flags, int device, uintptr_t stream) {
    cuda::end_epoch(make_end_epoch(num_samples, labels, labels_dtype, val_history, val_stride,
                                   history_base, checkpoint, epoch, chunk, clear_epoch, last,
                                   i32_state, acc, acc_dtype, flags), device, stream);
  }, release);
  m.def("cuda_scores", [](int64_t num_samples, uintptr_t i32_state, uintptr_t acc,
                          int acc_dtype, uintptr_t out, int device, uintptr_t stream) {
    cuda::scores(make_scores(num_samples, i32_state, acc, acc_dtype, out), device, stream);
  }, release);
#endif
}
