// CPU kernels of the streaming CLD tracker: loops only. The per-element math is in
// cldfast/common.h, shared with the CUDA kernels. record() is one serial pass over the batch
// (a batch is small and may repeat indices, so a scatter without atomics is the fast and
// deterministic choice); the cross-entropy rows, end_epoch() and scores() run in parallel
// with OpenMP.
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cldfast/common.h"
#include "cldfast/kernels.h"

#ifdef CLDFAST_WITH_OPENMP
#include <omp.h>
#endif

namespace cldfast {
namespace cpu {
namespace {

// Shared counters are bumped by one thread at a time on the CPU.
struct SerialOps {
  static int64_t increment(int64_t* p) { return (*p)++; }
  static void add(float* p, float v) { *p += v; }
};

// Enough work per call to pay for waking the OpenMP team.
constexpr int64_t kParallelWork = 65536;

// The cross-entropy row loops are vectorised (the shared math is branch-free and the CPU
// translation unit is built with -fno-trapping-math, which lets the compiler evaluate both
// sides of a select; no value changes). On x86-64 they are also compiled for x86-64-v3 (AVX2
// with hardware fmaf) and picked at load time; the default variant gets fmaf from libm, with
// the same correctly rounded results. Neither contracts other multiply-adds, so both round as
// the GPU does, up to the order in which the lanes' partial sums are added.
#if defined(__x86_64__) && defined(__has_attribute) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#if __has_attribute(target_clones) && !defined(CLDFAST_SANITIZE_BUILD)
#define CLDFAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef CLDFAST_CPU_CLONES
#define CLDFAST_CPU_CLONES
#endif

// Both passes of the shared cross-entropy over one row of logits.
template <typename T>
CLDFAST_CPU_CLONES void ce_row(const void* logits, int64_t row, int64_t classes,
                               typename Compute<T>::type& m, int& nan,
                               typename Compute<T>::type& r, int& c) {
  using Acc = typename Compute<T>::type;
  Acc mm = -static_cast<Acc>(INFINITY);
  int nn = 0;
#pragma omp simd reduction(max : mm) reduction(| : nn)
  for (int64_t j = 0; j < classes; ++j) ce_max_step(mm, nn, load<T>(logits, row + j));
  Acc rr = 0;
  int cc = 0;
#pragma omp simd reduction(+ : rr, cc)
  for (int64_t j = 0; j < classes; ++j) ce_sum_step(rr, cc, load<T>(logits, row + j), mm);
  m = mm;
  nan = nn;
  r = rr;
  c = cc;
}

template <typename T>
CLDFAST_CPU_CLONES void ce_grad_row(const void* logits, int64_t row, int64_t classes, int64_t t,
                                    typename Compute<T>::type lse, typename Compute<T>::type g,
                                    typename Compute<T>::type* out) {
  // The target column is redone after the loop, so that the loop has no 64-bit compare.
#pragma omp simd
  for (int64_t j = 0; j < classes; ++j) out[j] = ce_grad(load<T>(logits, row + j), lse, false, g);
  out[t] = ce_grad(load<T>(logits, row + t), lse, true, g);
}

template <typename T, typename I>
void record_impl(const RecordArgs& a) {
  for (int64_t b = 0; b < a.batch; ++b) {
    fold_observation<SerialOps>(a.epoch, a.chunk, a.num_samples, a.flags,
                                load_int<I>(a.index, b * a.index_stride),
                                load<T>(a.loss, b * a.loss_stride));
  }
}

template <typename T, typename I, typename Tgt>
void record_ce_impl(const RecordCEArgs& a) {
  using Acc = typename Compute<T>::type;
  const int64_t classes = a.num_classes;
  Acc* lse_out = static_cast<Acc*>(a.lse_out);
  // Rows are independent; compute them in parallel, then fold serially because a batch may
  // hold the same index twice.
#pragma omp parallel for schedule(static) if (a.batch * classes > kParallelWork)
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t row = b * a.logits_stride;
    Acc m, r;
    int nan, c;
    ce_row<T>(a.logits, row, classes, m, nan, r, c);
    const int64_t t = load_int<Tgt>(a.target, b * a.target_stride);
    const Acc tail = ce_tail(m, nan, r, c);
    lse_out[b] = m + tail;
    a.loss_out[b] = (t < 0 || t >= classes)
                        ? NAN
                        : static_cast<float>((m - load<T>(a.logits, row + t)) + tail);
  }
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t t = load_int<Tgt>(a.target, b * a.target_stride);
    if (t < 0 || t >= classes) {
      flag_bad<SerialOps>(a.flags, kBadTargetCount, kFirstBadTarget, t);
      continue;
    }
    fold_observation<SerialOps>(a.epoch, a.chunk, a.num_samples, a.flags,
                                load_int<I>(a.index, b * a.index_stride), a.loss_out[b]);
  }
}

template <typename T, typename Tgt>
void ce_backward_impl(const CEBackwardArgs& a) {
  using Acc = typename Compute<T>::type;
  const int64_t classes = a.num_classes;
  const Acc* lse = static_cast<const Acc*>(a.lse);
  Acc* grad = static_cast<Acc*>(a.grad);
#pragma omp parallel for schedule(static) if (a.batch * classes > kParallelWork)
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t t = load_int<Tgt>(a.target, b * a.target_stride);
    Acc* out = grad + b * classes;
    if (t < 0 || t >= classes) {
      for (int64_t j = 0; j < classes; ++j) out[j] = Acc(0);
      continue;
    }
    const int64_t row = b * a.logits_stride;
    const Acc g = static_cast<Acc>(a.grad_loss[b * a.grad_loss_stride]);
    ce_grad_row<T>(a.logits, row, classes, t, lse[b], g, out);
  }
}

template <typename Acc, typename L>
void end_epoch_impl(const EndEpochArgs& a) {
  const int64_t n = a.num_samples;
  const EpochState<Acc> s{a.epoch, a.epoch + a.chunk, a.last, a.i32_state + kLastCheckpoint * n,
                          a.i32_state + kNumDiffs * n, static_cast<Acc*>(a.acc), n,
                          a.val_history, a.val_stride, a.history_base, a.checkpoint};
  int64_t observed = 0;
  int32_t oldest = INT32_MAX;
#pragma omp parallel for schedule(static) reduction(+ : observed) reduction(min : oldest)
  for (int64_t i = 0; i < n; ++i) {
    end_epoch_element<Acc, L>(s, a.labels, i, a.clear_epoch != 0, observed, oldest);
  }
  a.flags[kObserved] = observed;
  a.flags[kMinLastCheckpoint] = oldest;
}

template <typename Acc>
void scores_impl(const ScoresArgs& a) {
  const int64_t n = a.num_samples;
  const int32_t* ndiff = a.i32_state + kNumDiffs * n;
  const Acc* acc = static_cast<const Acc*>(a.acc);
  Acc* out = static_cast<Acc*>(a.out);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = scores_element<Acc>(ndiff, acc, n, i);
}

}  // namespace

void record(const RecordArgs& a) {
  dispatch_float(a.loss_dtype, "loss", [&](auto t) {
    dispatch_index(a.index_dtype, "index", [&](auto i) {
      record_impl<decltype(t), decltype(i)>(a);
    });
  });
}

void record_ce(const RecordCEArgs& a) {
  dispatch_float(a.logits_dtype, "logits", [&](auto t) {
    dispatch_index(a.index_dtype, "index", [&](auto i) {
      dispatch_index(a.target_dtype, "target", [&](auto g) {
        record_ce_impl<decltype(t), decltype(i), decltype(g)>(a);
      });
    });
  });
}

void ce_backward(const CEBackwardArgs& a) {
  dispatch_float(a.logits_dtype, "logits", [&](auto t) {
    dispatch_index(a.target_dtype, "target", [&](auto g) {
      ce_backward_impl<decltype(t), decltype(g)>(a);
    });
  });
}

void end_epoch(const EndEpochArgs& a) {
  dispatch_acc(a.acc_dtype, [&](auto acc) {
    dispatch_label(a.labels_dtype, [&](auto l) { end_epoch_impl<decltype(acc), decltype(l)>(a); });
  });
}

void scores(const ScoresArgs& a) {
  dispatch_acc(a.acc_dtype, [&](auto acc) { scores_impl<decltype(acc)>(a); });
}

int num_threads() {
#ifdef CLDFAST_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
#ifdef CLDFAST_WITH_OPENMP
  if (n >= 1) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace cpu
}  // namespace cldfast
