// The gradient pool of the fused CPU operators: gradient buffers reused across calls (gradient_pool.cpp).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dice_fused {

// An uninitialised tensor of the logits' shape and dtype for a gradient, from the pool where it pays.
at::Tensor gradient_buffer(const at::Tensor& logits);
// Buffers the pool holds now (tests, measurements).
int64_t pooled_buffers();

}  // namespace dice_fused
