// Entry points of the CPU and CUDA kernels. All pointers are raw device (or host) addresses
// handed over by cldfast/core/kernels.py; strides are in elements. Tensor shapes are given as
// comments: N training samples, B batch rows, C classes, R rows of the validation history.
#pragma once

#include <cstdint>

namespace cldfast {

struct RecordArgs {
  const void* index;     // [B] int64 or int32, positions in the training split
  int index_dtype;
  int64_t index_stride;
  const void* loss;      // [B] float32/float16/bfloat16/float64
  int loss_dtype;
  int64_t loss_stride;
  int64_t batch;         // B
  float* epoch;          // [S, 2, chunk] open epoch: loss sums and counts (see common.h)
  int64_t chunk;
  int64_t num_samples;   // N, all samples
  int64_t* flags;        // [kNumFlags]
};

struct RecordCEArgs {
  const void* index;     // [B]
  int index_dtype;
  int64_t index_stride;
  const void* logits;    // [B, C], rows `logits_stride` elements apart, unit column stride
  int logits_dtype;
  int64_t logits_stride;
  const void* target;    // [B] int64 or int32 class ids
  int target_dtype;
  int64_t target_stride;
  int64_t batch;         // B
  int64_t num_classes;   // C
  float* loss_out;       // [B] float32 per-sample cross-entropy
  void* lse_out;         // [B] log-sum-exp per row, for the backward pass: double for
                         // float64 logits, float otherwise
  float* epoch;
  int64_t chunk;
  int64_t num_samples;
  int64_t* flags;
};

struct CEBackwardArgs {
  const void* logits;    // [B, C] as in RecordCEArgs
  int logits_dtype;
  int64_t logits_stride;
  const void* target;    // [B]
  int target_dtype;
  int64_t target_stride;
  const void* lse;       // [B] from record_ce, double for float64 logits, float otherwise
  const float* grad_loss;  // [B] upstream gradient of the float32 losses
  int64_t grad_loss_stride;  // may be 0 (a broadcast scalar, e.g. from losses.mean())
  int64_t batch;
  int64_t num_classes;
  void* grad;            // [B, C] contiguous, double for float64 logits, float otherwise
};

struct EndEpochArgs {
  int64_t num_samples;       // n: samples owned here (a shard under torch.distributed)
  const void* labels;        // [N] int16 or int32 column of each sample in the history
  int labels_dtype;
  const double* val_history; // [R, val_stride] validation loss per checkpoint and class;
  int64_t val_stride;        // row r holds checkpoint history_base + r
  int32_t history_base;
  int32_t checkpoint;        // the checkpoint being closed (its row must be filled in)
  float* epoch;              // [2, chunk] this shard's summed epoch buffer: sums, counts
  int64_t chunk;
  int clear_epoch;           // nonzero: zero the buffer's slots of the samples read
  float* last;               // [n] epoch mean at the last observed checkpoint
  int32_t* i32_state;        // [2, n]: last observed checkpoint, number of differences
  void* acc;                 // [5, n] float32 or float64 Welford state
  int acc_dtype;
  int64_t* flags;
};

struct ScoresArgs {
  int64_t num_samples;       // n
  const int32_t* i32_state;  // [2, n]
  const void* acc;
  int acc_dtype;
  void* out;                 // [N] in the accumulator dtype
};

namespace cpu {
void record(const RecordArgs& a);
void record_ce(const RecordCEArgs& a);
void end_epoch(const EndEpochArgs& a);
void scores(const ScoresArgs& a);
void ce_backward(const CEBackwardArgs& a);
int num_threads();
void set_num_threads(int n);
}  // namespace cpu

// Each CUDA entry point launches on `stream`, which belongs to device `device`; the launch is
// made with that device current (and the caller's current device restored afterwards).
namespace cuda {
void record(const RecordArgs& a, int device, uintptr_t stream);
void record_ce(const RecordCEArgs& a, int device, uintptr_t stream);
void ce_backward(const CEBackwardArgs& a, int device, uintptr_t stream);
void end_epoch(const EndEpochArgs& a, int device, uintptr_t stream);
void scores(const ScoresArgs& a, int device, uintptr_t stream);
int runtime_version();  // CUDART_VERSION the kernels were built with, e.g. 13000
int driver_version();   // the installed driver's CUDA version; 0 when there is no driver
}  // namespace cuda

}  // namespace cldfast
