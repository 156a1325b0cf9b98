// What fused_ops.cpp hands the kernels of fused_kernels.h: plain data, the same for every
// instruction set the kernels are compiled for.
#pragma once
#include <cstdint>

enum LogitsType { LOGITS_F32 = 0, LOGITS_F64 = 1, LOGITS_BF16 = 2, LOGITS_F16 = 3 };
enum LabelType { LABEL_U8 = 0, LABEL_I8 = 1, LABEL_I16 = 2, LABEL_I32 = 3, LABEL_I64 = 4, LABEL_CODES = 5 };

// Label codes: what the statistics pass knows of a pixel, one byte, for the gradient pass to read
// instead of the labels (8 bytes each as int64): 0 ignored, 1 no class (out of range), 2 + class.
constexpr int64_t MAX_CODED_CLASSES = 253;

struct KernelArgs {
  const void* logits;  // (N, C, V) contiguous
  const void* labels;  // (N, V) contiguous
  int logits_type, label_type;
  int64_t N, C, V;
  int activation;  // 0 softmax, 1 sigmoid, 2 identity
  bool squared;
  bool has_ignore;
  int64_t ignore_index;
  int64_t label_low, label_high;  // labels in [low, high) mark class (label - low); 1 channel: {1}
  int64_t valid_high;             // valid labels: [0, valid_high)
  bool validate;                  // probe the logits, count invalid labels (when check_labels)
  uint8_t* codes_out;             // (N, V) label codes written by the statistics pass, or null
  bool check_labels;
  // The per-pixel term (softmax cross-entropy / focal), when `pixel`.
  bool pixel;
  double gamma, smoothing, pixel_weight_sum;
  const double* pixel_weight;  // C numerator weights (class weights or focal alpha)
  const double* norm_weight;   // C normaliser weights (class weights, or ones)
  // The fixed work split.
  int64_t block, task_len, tasks_per_image;
};

// Doubles per task in the statistics kernel's partial sums: tp, ps, gs and the pixel term's sums
// by class of the label (C each), then the label-smoothing sum.
static constexpr int64_t statistics_width(int64_t C) { return 4 * C + 1; }

#define FUSED_DECLARE_KERNELS(ISA)                                                                               \
  namespace ISA {                                                                                                \
  void statistics_tasks(const KernelArgs& P, int64_t begin, int64_t end, double* partial, double* probe,        \
                        int64_t* bad);                                                                           \
  void gradient_tasks(const KernelArgs& P, int64_t begin, int64_t end, const double* a, const double* b,         \
                      double pixel_scale, void* grad);                                                           \
  }
