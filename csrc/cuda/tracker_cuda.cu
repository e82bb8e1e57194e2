// CUDA kernels of the streaming CLD tracker. Each entry point is one kernel launch on the
// stream the caller hands over (never the default stream implicitly), with no allocation and
// no host synchronisation. Math shared with the CPU kernels lives in cldfast/common.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <stdexcept>
#include <string>

#include "cldfast/common.h"
#include "cldfast/kernels.h"

namespace cldfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("cldfast: CUDA launch of ") + what + " failed: " +
                             cudaGetErrorString(err));
  }
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline unsigned grid_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  // Grid-stride loops cover the rest; this cap keeps launches cheap for very large N.
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

__device__ __forceinline__ int64_t load_index(const void* p, int dtype, int64_t i) {
  return dtype == kInt64 ? static_cast<const int64_t*>(p)[i]
                         : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

__device__ __forceinline__ int64_t load_label(const void* p, int dtype, int64_t i) {
  return dtype == kInt16 ? static_cast<int64_t>(static_cast<const int16_t*>(p)[i])
                         : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

__device__ __forceinline__ float load_float(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case kFloat64: return static_cast<float>(static_cast<const double*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void flag_bad(int64_t* flags, int count_slot, int first_slot,
                                         int64_t value) {
  const unsigned long long old =
      atomicAdd(reinterpret_cast<unsigned long long*>(flags + count_slot), 1ull);
  if (old == 0ull) flags[first_slot] = value;
}

__device__ __forceinline__ void fold_observation(float* epoch, int64_t chunk, int64_t n,
                                                 int64_t* flags, int64_t idx, float loss) {
  if (idx < 0 || idx >= n) {
    flag_bad(flags, kBadIndexCount, kFirstBadIndex, idx);
  } else if (!isfinite(loss)) {
    atomicAdd(reinterpret_cast<unsigned long long*>(flags + kNonFinite), 1ull);
  } else {
    const int64_t at = epoch_sum_offset(idx, chunk);
    atomicAdd(epoch + at, loss);
    atomicAdd(epoch + at + chunk, 1.0f);
  }
}

__global__ void record_kernel(RecordArgs a) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < a.batch;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    fold_observation(a.epoch, a.chunk, a.num_samples, a.flags, load_index(a.index, a.index_dtype, b * a.index_stride),
                     load_float(a.loss, a.loss_dtype, b * a.loss_stride));
  }
}

// One warp per row: an online log-sum-exp over the row, merged across lanes with shuffles.
__global__ void record_ce_kernel(RecordCEArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
       row < a.batch; row += warps) {
    const int64_t base = row * a.logits_stride;
    float m = -INFINITY;
    float s = 0.0f;
    for (int64_t j = lane; j < a.num_classes; j += kWarp) {
      const float x = load_float(a.logits, a.logits_dtype, base + j);
      if (x > m) {
        s = s * __expf(m - x) + 1.0f;
        m = x;
      } else {
        s += __expf(x - m);
      }
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
      const float mm = fmaxf(m, m2);
      const float a1 = (m == -INFINITY) ? 0.0f : s * __expf(m - mm);
      const float a2 = (m2 == -INFINITY) ? 0.0f : s2 * __expf(m2 - mm);
      s = a1 + a2;
      m = mm;
    }
    if (lane == 0) {
      const int64_t t = load_index(a.target, a.target_dtype, row * a.target_stride);
      if (t < 0 || t >= a.num_classes) {
        a.loss_out[row] = NAN;
        flag_bad(a.flags, kBadTargetCount, kFirstBadTarget, t);
      } else {
        const float loss = m + logf(s) - load_float(a.logits, a.logits_dtype, base + t);
        a.loss_out[row] = loss;
        fold_observation(a.epoch, a.chunk, a.num_samples, a.flags,
                         load_index(a.index, a.index_dtype, row * a.index_stride), loss);
      }
    }
  }
}

template <typename Acc>
__global__ void end_epoch_kernel(EndEpochArgs a) {
  const int64_t n = a.num_samples;
  const float* esum = a.epoch;
  const float* ecount = a.epoch + a.chunk;
  float* last = a.last;
  int32_t* tlast = a.i32_state + kLastCheckpoint * n;
  int32_t* ndiff = a.i32_state + kNumDiffs * n;
  Acc* acc = static_cast<Acc*>(a.acc);
  const double* vnow = a.val_history + static_cast<int64_t>(a.checkpoint - a.history_base) * a.val_stride;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  __shared__ int block_oldest;
  // The loop bound is uniform across the block so that every thread reaches the barrier.
  for (int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x); start < n; start += stride) {
    const int64_t i = start + threadIdx.x;
    int observed = 0;
    int oldest = INT_MAX;
    if (threadIdx.x == 0) block_oldest = INT_MAX;
    __syncthreads();
    if (i < n) {
      const float c = ecount[i];
      if (c == 0.0f) {
        if (tlast[i] >= 0) oldest = tlast[i];
      } else {
        oldest = a.checkpoint;
        observed = 1;
        const float mean = esum[i] / c;
        const int32_t t0 = tlast[i];
        if (t0 >= 0) {
          const int64_t col = load_label(a.labels, a.labels_dtype, i);
          const Acc dx = static_cast<Acc>(mean) - static_cast<Acc>(last[i]);
          const Acc dy = static_cast<Acc>(vnow[col] - a.val_history[static_cast<int64_t>(t0 - a.history_base) * a.val_stride + col]);
          const int32_t k = ndiff[i] + 1;
          Acc mx = acc[kMeanX * n + i], my = acc[kMeanY * n + i];
          Acc m2x = acc[kM2X * n + i], m2y = acc[kM2Y * n + i], cxy = acc[kCXY * n + i];
          welford_pair<Acc>(dx, dy, k, mx, my, m2x, m2y, cxy);
          acc[kMeanX * n + i] = mx;
          acc[kMeanY * n + i] = my;
          acc[kM2X * n + i] = m2x;
          acc[kM2Y * n + i] = m2y;
          acc[kCXY * n + i] = cxy;
          ndiff[i] = k;
        }
        last[i] = mean;
        tlast[i] = a.checkpoint;
      }
    }
    if (oldest != INT_MAX) atomicMin(&block_oldest, oldest);
    const int block_observed = __syncthreads_count(observed);
    if (threadIdx.x == 0) {
      if (block_observed > 0) {
        atomicAdd(reinterpret_cast<unsigned long long*>(a.flags + kObserved),
                  static_cast<unsigned long long>(block_observed));
      }
      if (block_oldest != INT_MAX) {
        atomicMin(reinterpret_cast<long long*>(a.flags + kMinLastCheckpoint),
                  static_cast<long long>(block_oldest));
      }
    }
  }
}

template <typename Acc>
__global__ void scores_kernel(ScoresArgs a) {
  const int64_t n = a.num_samples;
  const int32_t* ndiff = a.i32_state + kNumDiffs * n;
  const Acc* acc = static_cast<const Acc*>(a.acc);
  Acc* out = static_cast<Acc*>(a.out);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = pearson_from_moments<Acc>(ndiff[i], acc[kM2X * n + i], acc[kM2Y * n + i],
                                       acc[kCXY * n + i]);
  }
}

}  // namespace

void record(const RecordArgs& a, uintptr_t stream) {
  if (a.batch == 0) return;
  record_kernel<<<grid_for(a.batch, kThreads), kThreads, 0, as_stream(stream)>>>(a);
  check_launch("record");
}

void record_ce(const RecordCEArgs& a, uintptr_t stream) {
  if (a.batch == 0) return;
  record_ce_kernel<<<grid_for(a.batch, kThreads / kWarp), kThreads, 0, as_stream(stream)>>>(a);
  check_launch("record_ce");
}

void end_epoch(const EndEpochArgs& a, uintptr_t stream) {
  // The caller zeroes flags[kObserved] and sets flags[kMinLastCheckpoint] to INT32_MAX.
  const cudaStream_t s = as_stream(stream);
  if (a.num_samples == 0) return;
  if (a.acc_dtype == kFloat64) {
    end_epoch_kernel<double><<<grid_for(a.num_samples, kThreads), kThreads, 0, s>>>(a);
  } else {
    end_epoch_kernel<float><<<grid_for(a.num_samples, kThreads), kThreads, 0, s>>>(a);
  }
  check_launch("end_epoch");
}

void scores(const ScoresArgs& a, uintptr_t stream) {
  if (a.num_samples == 0) return;
  if (a.acc_dtype == kFloat64) {
    scores_kernel<double><<<grid_for(a.num_samples, kThreads), kThreads, 0, as_stream(stream)>>>(a);
  } else {
    scores_kernel<float><<<grid_for(a.num_samples, kThreads), kThreads, 0, as_stream(stream)>>>(a);
  }
  check_launch("scores");
}

}  // namespace cuda
}  // namespace cldfast
