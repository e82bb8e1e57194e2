// Shared definitions for the CPU and CUDA kernels of cldfast.
//
// The kernels never see a torch tensor: the Python layer checks dtype, device and shape and
// hands over raw pointers, element strides and sizes. Everything here compiles both as host
// C++17 and as CUDA device code.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define CLDFAST_HD __host__ __device__ __forceinline__
#else
#define CLDFAST_HD inline
#endif

namespace cldfast {

// Element type codes shared with cldfast/_ops.py (keep in sync).
enum DType : int {
  kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kInt64 = 4, kInt32 = 5, kInt16 = 6
};

// Layout of the int64 flag buffer written by the kernels (cldfast/_ops.py mirrors it).
enum Flag : int {
  kBadIndexCount = 0,   // indices outside [0, N) seen by record since the last check
  kFirstBadIndex = 1,   // the value of the first of them (in order of detection)
  kNonFinite = 2,       // non-finite losses skipped
  kBadTargetCount = 3,  // targets outside [0, C) in the fused cross-entropy
  kFirstBadTarget = 4,  // the value of the first of them
  kObserved = 5,        // samples folded in by the last end_epoch
  kMinLastCheckpoint = 6,  // after end_epoch: oldest checkpoint any sample still refers to
  kNumFlags = 8,
};

// Rows of the accumulator block [5, N]: Welford state of the (dx, dy) pairs.
enum AccRow : int { kMeanX = 0, kMeanY = 1, kM2X = 2, kM2Y = 3, kCXY = 4, kNumAccRows = 5 };
// The open epoch's buffer is float32 [S, 2, chunk]: S shards of `chunk` samples (S = 1 in a
// single process, the world size under torch.distributed, so that one reduce-scatter hands
// every rank its shard), each shard a row of loss sums then a row of observation counts
// (exact in float32 up to 2^24 observations). Sample i lives in shard i / chunk.
CLDFAST_HD int64_t epoch_sum_offset(int64_t i, int64_t chunk) {
  return (i / chunk) * 2 * chunk + (i % chunk);
}
// Rows of the int32 block [2, n]: last observed checkpoint (-1 = never), number of
// differences folded in. n is the number of samples this process owns.
enum I32Row : int { kLastCheckpoint = 0, kNumDiffs = 1, kNumI32Rows = 2 };

// IEEE binary16 -> binary32, exact (normals, subnormals, inf, nan).
CLDFAST_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise the mantissa.
    exp = 113u;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// bfloat16 -> binary32 is the upper half of the float's bits.
CLDFAST_HD float bf16_bits_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

CLDFAST_HD bool is_finite(double v) { return v - v == 0.0; }

// One Welford co-moment step for the pair (x, y); `n` is the count after this pair.
template <typename Acc>
CLDFAST_HD void welford_pair(Acc x, Acc y, int32_t n, Acc& mx, Acc& my, Acc& m2x, Acc& m2y,
                             Acc& cxy) {
  const Acc dx = x - mx;
  const Acc dy = y - my;
  mx += dx / static_cast<Acc>(n);
  my += dy / static_cast<Acc>(n);
  const Acc ry = y - my;
  m2x += dx * (x - mx);
  m2y += dy * ry;
  cxy += dx * ry;
}

// Pearson correlation from the co-moments. Fewer than two pairs: NaN (no score).
// A zero-variance series: 0. The division by the count cancels, so population and sample
// statistics give the same ratio.
template <typename Acc>
CLDFAST_HD Acc pearson_from_moments(int32_t n, Acc m2x, Acc m2y, Acc cxy) {
  if (n < 2) return static_cast<Acc>(NAN);
  if (!(m2x > Acc(0)) || !(m2y > Acc(0))) return Acc(0);
  Acc r = cxy / (sqrt(m2x) * sqrt(m2y));
  if (r > Acc(1)) r = Acc(1);
  if (r < Acc(-1)) r = Acc(-1);
  return r;
}

}  // namespace cldfast
