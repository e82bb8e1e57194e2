// CPU kernels of the streaming CLD tracker. record() is one serial pass over the batch (a
// batch is small and may repeat indices, so a scatter without atomics is the fast choice);
// end_epoch() and scores() are O(N) and parallel over samples with OpenMP.
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

inline int64_t load_index(const void* p, int dtype, int64_t i) {
  return dtype == kInt64 ? static_cast<const int64_t*>(p)[i]
                         : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

inline int64_t load_label(const void* p, int dtype, int64_t i) {
  return dtype == kInt16 ? static_cast<int64_t>(static_cast<const int16_t*>(p)[i])
                         : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

inline double load_float(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case kFloat32: return static_cast<const float*>(p)[i];
    case kFloat64: return static_cast<const double*>(p)[i];
    case kFloat16: return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case kBFloat16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default: throw std::invalid_argument("cldfast: unsupported float dtype code " + std::to_string(dtype));
  }
}

inline void flag_bad(int64_t* flags, int count_slot, int first_slot, int64_t value) {
  if (flags[count_slot]++ == 0) flags[first_slot] = value;
}

// Adds one observation to the open epoch; shared by record() and record_ce().
inline void fold_observation(float* epoch, int64_t chunk, int64_t n, int64_t* flags,
                             int64_t idx, double loss) {
  if (idx < 0 || idx >= n) {
    flag_bad(flags, kBadIndexCount, kFirstBadIndex, idx);
  } else if (!is_finite(loss)) {
    flags[kNonFinite]++;
  } else {
    const int64_t at = epoch_sum_offset(idx, chunk);
    epoch[at] += static_cast<float>(loss);
    epoch[at + chunk] += 1.0f;
  }
}

template <typename Acc>
void end_epoch_impl(const EndEpochArgs& a) {
  const int64_t n = a.num_samples;
  const float* esum = a.epoch;
  const float* ecount = a.epoch + a.chunk;
  float* last = a.last;
  int32_t* tlast = a.i32_state + kLastCheckpoint * n;
  int32_t* ndiff = a.i32_state + kNumDiffs * n;
  Acc* acc = static_cast<Acc*>(a.acc);
  Acc* mx = acc + kMeanX * n;
  Acc* my = acc + kMeanY * n;
  Acc* m2x = acc + kM2X * n;
  Acc* m2y = acc + kM2Y * n;
  Acc* cxy = acc + kCXY * n;
  const double* vnow = a.val_history + static_cast<int64_t>(a.checkpoint - a.history_base) * a.val_stride;
  int64_t observed = 0;
  int32_t oldest = INT32_MAX;
#pragma omp parallel for schedule(static) reduction(+ : observed) reduction(min : oldest)
  for (int64_t i = 0; i < n; ++i) {
    const float c = ecount[i];
    if (c == 0.0f) {
      if (tlast[i] >= 0 && tlast[i] < oldest) oldest = tlast[i];
      continue;
    }
    const float mean = esum[i] / c;
    const int32_t t0 = tlast[i];
    if (t0 >= 0) {
      const int64_t col = load_label(a.labels, a.labels_dtype, i);
      const Acc dx = static_cast<Acc>(mean) - static_cast<Acc>(last[i]);
      const Acc dy = static_cast<Acc>(vnow[col] - a.val_history[static_cast<int64_t>(t0 - a.history_base) * a.val_stride + col]);
      const int32_t k = ndiff[i] + 1;
      welford_pair<Acc>(dx, dy, k, mx[i], my[i], m2x[i], m2y[i], cxy[i]);
      ndiff[i] = k;
    }
    last[i] = mean;
    tlast[i] = a.checkpoint;
    ++observed;
    if (a.checkpoint < oldest) oldest = a.checkpoint;
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
  for (int64_t i = 0; i < n; ++i) {
    out[i] = pearson_from_moments<Acc>(ndiff[i], acc[kM2X * n + i], acc[kM2Y * n + i],
                                       acc[kCXY * n + i]);
  }
}

}  // namespace

void record(const RecordArgs& a) {
  const int64_t n = a.num_samples;
  for (int64_t b = 0; b < a.batch; ++b) {
    fold_observation(a.epoch, a.chunk, n, a.flags, load_index(a.index, a.index_dtype, b * a.index_stride),
                     load_float(a.loss, a.loss_dtype, b * a.loss_stride));
  }
}

void record_ce(const RecordCEArgs& a) {
  const int64_t n = a.num_samples;
  const int64_t classes = a.num_classes;
  // Cross-entropy rows are independent; compute them in parallel, then fold serially
  // because a batch may hold the same index twice.
#pragma omp parallel for schedule(static) if (a.batch * classes > 65536)
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t row = b * a.logits_stride;
    const int64_t t = load_index(a.target, a.target_dtype, b * a.target_stride);
    if (t < 0 || t >= classes) {
      a.loss_out[b] = NAN;
      continue;
    }
    double mx = -INFINITY;
    for (int64_t j = 0; j < classes; ++j) mx = std::fmax(mx, load_float(a.logits, a.logits_dtype, row + j));
    double s = 0.0;
    for (int64_t j = 0; j < classes; ++j) s += std::exp(load_float(a.logits, a.logits_dtype, row + j) - mx);
    a.loss_out[b] = static_cast<float>(mx + std::log(s) - load_float(a.logits, a.logits_dtype, row + t));
  }
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t t = load_index(a.target, a.target_dtype, b * a.target_stride);
    if (t < 0 || t >= classes) {
      flag_bad(a.flags, kBadTargetCount, kFirstBadTarget, t);
      continue;
    }
    fold_observation(a.epoch, a.chunk, n, a.flags, load_index(a.index, a.index_dtype, b * a.index_stride),
                     a.loss_out[b]);
  }
}

void end_epoch(const EndEpochArgs& a) {
  if (a.acc_dtype == kFloat64) {
    end_epoch_impl<double>(a);
  } else {
    end_epoch_impl<float>(a);
  }
}

void scores(const ScoresArgs& a) {
  if (a.acc_dtype == kFloat64) {
    scores_impl<double>(a);
  } else {
    scores_impl<float>(a);
  }
}

int num_threads() {
#ifdef CLDFAST_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace cpu
}  // namespace cldfast
