// The per-element math of cldfast, shared by the CPU and the CUDA kernels.
//
// Everything that decides a number lives here, as host+device code: loading and widening
// the input types, the observation rules of record(), the cross-entropy, the end-of-epoch
// Welford update and the Pearson correlation. tracker_cpu.cpp and tracker_cuda.cu only
// choose the loop (serial / OpenMP vs. launch geometry), the way a shared counter is bumped
// (plain vs. atomic) and how per-block results are reduced, so the CPU tests, including
// CI's sanitizer run, execute the code the GPU runs.
//
// Agreement between the two backends (tests/test_kernels.py checks each statement):
// * end_epoch and scores: bit-identical for the same inputs. Both compile without
//   floating-point contraction (-ffp-contract=off on the host, --fmad=false for CUDA), use
//   IEEE division and square roots, and run the same sequence of operations per sample.
// * record: bit-identical for a batch without repeated indices (subnormal losses are
//   flushed to zero on both sides; CUDA's atomics would flush them). A sample repeated k
//   times in one batch is summed in a fixed order on the CPU and in atomic (unordered) order
//   on CUDA; each order is within (k - 1) float32 roundings of the exact sum, so the two
//   differ by at most (k - 1) * 2^-23 * (|sum already in the buffer| + sum(|loss|)).
// * record_ce and its backward: the same two-pass algorithm and the same exp (exp_nonpos,
//   bit-identical on both sides); the lanes of a CUDA row (and the SIMD lanes of the CPU)
//   add their partial sums in different orders and log1pf comes from each side's math
//   library (within 1 ulp), so losses agree to about 1e-6 relative (tested at 4e-6
//   relative + 1e-6 absolute).
//
// The kernels never see a torch tensor: cldfast/core/kernels.py checks dtype, device and shape and
// hands over raw pointers, element strides and sizes.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

// The smallest normal float32 (FLT_MIN), spelled out for host and device code alike.
#define CLDFAST_FLT_MIN 1.17549435e-38f

#if defined(__CUDACC__)
#define CLDFAST_HD __host__ __device__ __forceinline__
// Templates below are instantiated with host-only or device-only helper policies; nvcc must
// not check the side a given instantiation never runs on.
#define CLDFAST_HD_TEMPLATE _Pragma("nv_exec_check_disable")
#else
#define CLDFAST_HD inline
#define CLDFAST_HD_TEMPLATE
#endif

#include <stdexcept>
#include <string>

namespace cldfast {

// Element type codes shared with cldfast/core/kernels.py (keep in sync).
enum DType : int {
  kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kInt64 = 4, kInt32 = 5, kInt16 = 6
};

// Layout of the int64 flag buffer written by the kernels (cldfast/core/kernels.py mirrors it).
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
// Rows of the int32 block [2, n]: last observed checkpoint (-1 = never), number of
// differences folded in. n is the number of samples this process owns.
enum I32Row : int { kLastCheckpoint = 0, kNumDiffs = 1, kNumI32Rows = 2 };

// The open epoch's buffer is float32 [S, 2, chunk]: S shards of `chunk` samples (S = 1 in a
// single process, the world size under torch.distributed, so that one reduce-scatter hands
// every rank its shard), each shard a row of loss sums then a row of observation counts
// (exact in float32 up to 2^24 observations). Sample i lives in shard i / chunk.
// 0 <= i < N < 2^31 (the tracker refuses larger N), so a 32-bit division suffices, and the
// single-process case (i < chunk) needs none.
CLDFAST_HD int64_t epoch_sum_offset(int64_t i, int64_t chunk) {
  if (i < chunk) return i;
  const uint32_t shard = static_cast<uint32_t>(i) / static_cast<uint32_t>(chunk);
  return i + static_cast<int64_t>(shard) * chunk;  // shard * 2 * chunk + (i - shard * chunk)
}

// ---------------------------------------------------------------------------- element types
// Storage tags for the 16-bit float types (the kernels read raw bits, so no CUDA headers are
// needed and host and device widen them with the same exact code).
struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

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
CLDFAST_HD float bits_to_float(uint32_t bits);
CLDFAST_HD float bf16_bits_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

// The arithmetic type of each storage type: float64 stays double, the rest widen to float.
template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

CLDFAST_HD float widen(float v) { return v; }
CLDFAST_HD double widen(double v) { return v; }
CLDFAST_HD float widen(f16_t v) { return half_bits_to_float(v.bits); }
CLDFAST_HD float widen(bf16_t v) { return bf16_bits_to_float(v.bits); }

template <typename T>
CLDFAST_HD typename Compute<T>::type load(const void* p, int64_t i) {
  return widen(static_cast<const T*>(p)[i]);
}

// Integer loads (indices and targets: int64/int32; labels: int16/int32) widen to int64.
template <typename I>
CLDFAST_HD int64_t load_int(const void* p, int64_t i) {
  return static_cast<int64_t>(static_cast<const I*>(p)[i]);
}

// A bit cast that the host compiler can vectorise (memcpy stops GCC's loop vectoriser).
CLDFAST_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#elif defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
  return __builtin_bit_cast(float, bits);
#else
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
#else
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// exp(d) for d <= 0, the only arguments the cross-entropy needs (x - max and x - lse), in
// float32: Cody-Waite reduction d = k ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial for
// exp(r) (truncation error < 5e-9 relative) and 2^k from the exponent bits. It uses only
// operations that IEEE 754 specifies exactly (+, *, and fmaf, correctly rounded on every
// host and GPU), so host and device compute bit-identical values, and the branch-free body
// vectorises on the CPU. Accuracy: within 1 ulp of exp over [-87, 0] (an exhaustive sweep
// found 0.92 ulp at most); d < -87 (exp below 1.7e-38) gives 0, exp(-inf) = 0, NaN stays
// NaN; d > 88 is clamped to 88 (no caller passes d > 0).
CLDFAST_HD float exp_nonpos(float d) {
  const bool underflow = d < -87.0f;
  const bool nan = d != d;
  // Clamped to [-87, 88] so that 2^k below stays a normal float (callers pass d <= 0).
  const float x = underflow || nan ? -87.0f : (d > 88.0f ? 88.0f : d);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float k = fmaf(x, 1.44269504088896341f, magic) - magic;
  const float r = fmaf(-k, 1.428606765330187e-06f, fmaf(-k, 0.693145751953125f, x));
  float p = 1.0f / 5040.0f;
  p = fmaf(p, r, 1.0f / 720.0f);
  p = fmaf(p, r, 1.0f / 120.0f);
  p = fmaf(p, r, 1.0f / 24.0f);
  p = fmaf(p, r, 1.0f / 6.0f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  const int32_t e = static_cast<int32_t>(k) + 127;  // k in [-126, 0]: a normal power of two
  const float scale = bits_to_float(static_cast<uint32_t>(e > 0 ? e : 1) << 23);
  return nan ? d : (underflow ? 0.0f : p * scale);
}

// Overloads that keep float math in float on both sides (an unqualified sqrt(float) would be
// the double one on the host and the float one on the device).
CLDFAST_HD float math_sqrt(float v) { return sqrtf(v); }
CLDFAST_HD double math_sqrt(double v) { return sqrt(v); }
CLDFAST_HD float math_exp_nonpos(float v) { return exp_nonpos(v); }
CLDFAST_HD double math_exp_nonpos(double v) { return exp(v); }
CLDFAST_HD float math_log1p(float v) { return log1pf(v); }
CLDFAST_HD double math_log1p(double v) { return log1p(v); }

template <typename F>
CLDFAST_HD bool is_finite(F v) { return v - v == F(0); }
template <typename F>
CLDFAST_HD bool is_nan(F v) { return v != v; }

// ------------------------------------------------------------------------------ record()
// `Ops` is the backend's way to bump shared memory: serial on the CPU, atomic on CUDA.
//   static int64_t increment(int64_t* p);  // returns the old value
//   static void add(float* p, float v);

CLDFAST_HD_TEMPLATE template <class Ops>
CLDFAST_HD void flag_bad(int64_t* flags, int count_slot, int first_slot,
                                             int64_t value) {
  if (Ops::increment(flags + count_slot) == 0) flags[first_slot] = value;
}

// Adds one observation to the open epoch. The loss is narrowed to float32 (the epoch
// buffer's type) before the finiteness test: a float64 loss beyond float range is counted as
// non-finite rather than added as inf.
CLDFAST_HD_TEMPLATE template <class Ops, typename F>
CLDFAST_HD void fold_observation(float* epoch, int64_t chunk, int64_t n, int64_t* flags,
                                 int64_t idx, F loss) {
  float v = static_cast<float>(loss);
  // CUDA's float atomicAdd flushes subnormal results to zero; flushing subnormal inputs on
  // both sides keeps single observations bit-identical (a loss below 1.2e-38 is 0 anyway).
  if (v != 0.0f && v > -CLDFAST_FLT_MIN && v < CLDFAST_FLT_MIN) v = 0.0f;
  if (idx < 0 || idx >= n) {
    flag_bad<Ops>(flags, kBadIndexCount, kFirstBadIndex, idx);
  } else if (!is_finite(v)) {
    Ops::increment(flags + kNonFinite);
  } else {
    const int64_t at = epoch_sum_offset(idx, chunk);
    Ops::add(epoch + at, v);
    Ops::add(epoch + at + chunk, 1.0f);
  }
}

// --------------------------------------------------------------------- cross-entropy
// loss = logsumexp(x) - x_t in two passes over the row, in Acc (double for float64 logits,
// float otherwise):
//   pass 1: m = max of the row (NaN entries set a flag instead);
//   pass 2: r = sum of exp(x_j - m) over x_j < m, c = number of x_j == m;
//   loss = (m - x_t) + log1p((c - 1) + r).
// Separating the max's own term keeps the loss of a confident sample (x_t = m, loss =
// log1p(r) with r tiny) to full relative precision; m + log(s) - x_t would cancel. A row
// that a CUDA warp splits between lanes merges the lanes' partial states (max and or, then
// sums); the CPU's vectorised loops do the same across SIMD lanes. Results follow torch: NaN when the row has a
// NaN or a +inf, or is all -inf; +inf when only the target is -inf.
// Pass 1, one element: running maximum m (NaN entries are skipped and set `nan`).
template <typename Acc>
CLDFAST_HD void ce_max_step(Acc& m, int& nan, Acc x) {
  nan |= is_nan(x) ? 1 : 0;
  m = x > m ? x : m;
}
// Pass 2, one element: r += exp(x - m) for x below the maximum, c counts the maxima. Written
// without branches so that the CPU loop vectorises.
template <typename Acc>
CLDFAST_HD void ce_sum_step(Acc& r, int& c, Acc x, Acc m) {
  const Acc e = math_exp_nonpos(x < m ? x - m : -static_cast<Acc>(INFINITY));
  r += e;
  c += x == m ? 1 : 0;
}
// log(sum_j exp(x_j - m)) from both passes: log1p((c - 1) + r). NaN when the loss is
// undefined (see above). Then lse = m + tail and loss = (m - x_t) + tail.
template <typename Acc>
CLDFAST_HD Acc ce_tail(Acc m, int nan, Acc r, int c) {
  if (nan || !is_finite(m)) return static_cast<Acc>(NAN);
  return math_log1p(static_cast<Acc>(c - 1) + r);
}
// d loss / d x_j times the upstream gradient g: (softmax_j - [j == t]) * g, from the row's
// log-sum-exp saved by the forward pass (x - lse <= 0). Rows with an invalid target get 0
// (their loss was NaN and end_epoch reports them).
template <typename Acc>
CLDFAST_HD Acc ce_grad(Acc x, Acc lse, bool is_target, Acc g) {
  return (math_exp_nonpos(x - lse) - (is_target ? Acc(1) : Acc(0))) * g;
}

// ------------------------------------------------------------------------- end_epoch
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

// Pointers of one end_epoch call, resolved once (n samples owned here).
template <typename Acc>
struct EpochState {
  float* esum;
  float* ecount;
  float* last;
  int32_t* tlast;
  int32_t* ndiff;
  Acc* acc;
  int64_t n;
  const double* val_history;
  int64_t val_stride;
  int32_t history_base;
  int32_t checkpoint;
};

// Closes checkpoint `checkpoint` for sample i: folds the difference between this epoch's mean
// loss and the one at its last observed checkpoint, paired with the class's validation
// difference over the same span. Adds 1 to `observed` when the sample was seen this epoch and
// lowers `oldest` to the oldest checkpoint the sample still refers to. With `clear`, the
// sample's slots of the epoch buffer are zeroed once read (the buffer is then ready for the
// next epoch without a separate pass over it).
template <typename Acc, typename L>
CLDFAST_HD void end_epoch_element(const EpochState<Acc>& s, const void* labels, int64_t i,
                                  bool clear, int64_t& observed, int32_t& oldest) {
  const int64_t n = s.n;
  // Every load is issued before the branch: one round of memory latency instead of two (on
  // the GPU, 59-60 % of copy bandwidth instead of 54 % with the same registers). The values
  // an unobserved sample does not need are read for nothing, which costs nothing in the usual
  // epoch where every sample was observed.
  const float c = s.ecount[i];
  const int32_t t0 = s.tlast[i];
  const float sum = s.esum[i];
  const float prev = s.last[i];
  const int32_t nd = s.ndiff[i];
  const int64_t col = load_int<L>(labels, i);
  Acc mx = s.acc[kMeanX * n + i], my = s.acc[kMeanY * n + i];
  Acc m2x = s.acc[kM2X * n + i], m2y = s.acc[kM2Y * n + i], cxy = s.acc[kCXY * n + i];
  if (c == 0.0f) {
    if (t0 >= 0 && t0 < oldest) oldest = t0;
    return;
  }
  const float mean = sum / c;
  if (clear) {
    s.esum[i] = 0.0f;
    s.ecount[i] = 0.0f;
  }
  if (t0 >= 0) {
    const double* vnow = s.val_history + static_cast<int64_t>(s.checkpoint - s.history_base) * s.val_stride;
    const double* vthen = s.val_history + static_cast<int64_t>(t0 - s.history_base) * s.val_stride;
    const Acc dx = static_cast<Acc>(mean) - static_cast<Acc>(prev);
    const Acc dy = static_cast<Acc>(vnow[col] - vthen[col]);
    const int32_t k = nd + 1;
    welford_pair<Acc>(dx, dy, k, mx, my, m2x, m2y, cxy);
    s.acc[kMeanX * n + i] = mx;
    s.acc[kMeanY * n + i] = my;
    s.acc[kM2X * n + i] = m2x;
    s.acc[kM2Y * n + i] = m2y;
    s.acc[kCXY * n + i] = cxy;
    s.ndiff[i] = k;
  }
  s.last[i] = mean;
  s.tlast[i] = s.checkpoint;
  ++observed;
  if (s.checkpoint < oldest) oldest = s.checkpoint;
}

// Pearson correlation from the co-moments. Fewer than two pairs: NaN (no score).
// A zero-variance series: 0. The division by the count cancels, so population and sample
// statistics give the same ratio.
template <typename Acc>
CLDFAST_HD Acc pearson_from_moments(int32_t n, Acc m2x, Acc m2y, Acc cxy) {
  if (n < 2) return static_cast<Acc>(NAN);
  if (!(m2x > Acc(0)) || !(m2y > Acc(0))) return Acc(0);
  Acc r = cxy / (math_sqrt(m2x) * math_sqrt(m2y));
  if (r > Acc(1)) r = Acc(1);
  if (r < Acc(-1)) r = Acc(-1);
  return r;
}

template <typename Acc>
CLDFAST_HD Acc scores_element(const int32_t* ndiff, const Acc* acc, int64_t n, int64_t i) {
  return pearson_from_moments<Acc>(ndiff[i], acc[kM2X * n + i], acc[kM2Y * n + i],
                                   acc[kCXY * n + i]);
}

// --------------------------------------------------------------- host-side type dispatch
// Both backends pick the template instance for a dtype code once per call, on the host, and
// throw for a code they do not know (never a silent reinterpretation). Host code only.
[[noreturn]] inline void bad_dtype(const char* what, int code) {
  throw std::invalid_argument(std::string("cldfast: unsupported ") + what + " dtype code " +
                              std::to_string(code));
}

template <typename Fn>
void dispatch_float(int code, const char* what, Fn&& fn) {
  switch (code) {
    case kFloat32: fn(float{}); break;
    case kFloat64: fn(double{}); break;
    case kFloat16: fn(f16_t{}); break;
    case kBFloat16: fn(bf16_t{}); break;
    default: bad_dtype(what, code);
  }
}

template <typename Fn>
void dispatch_index(int code, const char* what, Fn&& fn) {
  switch (code) {
    case kInt64: fn(int64_t{}); break;
    case kInt32: fn(int32_t{}); break;
    default: bad_dtype(what, code);
  }
}

template <typename Fn>
void dispatch_label(int code, Fn&& fn) {
  switch (code) {
    case kInt16: fn(int16_t{}); break;
    case kInt32: fn(int32_t{}); break;
    default: bad_dtype("label", code);
  }
}

template <typename Fn>
void dispatch_acc(int code, Fn&& fn) {
  switch (code) {
    case kFloat64: fn(double{}); break;
    case kFloat32: fn(float{}); break;
    default: bad_dtype("accumulator", code);
  }
}

}  // namespace cldfast
