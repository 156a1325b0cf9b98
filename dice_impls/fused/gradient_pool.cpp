// The gradient pool of the fused CPU operators (gradient_pool.h).
#include "gradient_pool.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <iterator>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace dice_fused {
namespace {

// Gradient memory. A fresh buffer is faulted in page by page as the kernel first writes it
// (~100 ms per 64 MiB on a 2-core VM), and glibc serves allocations above its mmap threshold (at
// most 32 MiB), and often those above 128 KiB after the heap was trimmed, with fresh pages (a
// 1 MiB gradient: ~50 us of faults, a sixth of a 4x4x128x128 call). So gradients come from a
// small pool instead: a freed gradient (its tensor's deleter) is kept and handed to the next call
// of the same size, as a training loop's next step asks for exactly that. At most POOL_BUFFERS
// buffers of at least POOL_MIN_BYTES are kept; DICE_FUSED_POOL=0 turns it off (each gradient is
// then fresh memory). Fresh buffers of at least HUGE_PAGE are 2 MiB aligned and advised to use
// transparent huge pages (512x fewer faults where the kernel grants them).
constexpr size_t POOL_MIN_BYTES = size_t(256) << 10;
constexpr size_t POOL_BUFFERS = 2;
constexpr size_t HUGE_PAGE = size_t(2) << 20;

struct Pool {
  std::mutex lock;
  std::vector<std::pair<size_t, void*>> free;  // (bytes, buffer), newest last
};

Pool& pool() {
  static Pool* instance = new Pool();  // never destroyed: deleters may run during interpreter exit
  return *instance;
}

bool pool_enabled() {
  const char* flag = std::getenv("DICE_FUSED_POOL");
  return !(flag && flag[0] == '0');
}

void release_to_pool(void* data, size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> guard(p.lock);
  if (p.free.size() == POOL_BUFFERS) {
    std::free(p.free.front().second);
    p.free.erase(p.free.begin());
  }
  p.free.emplace_back(bytes, data);
}

void* acquire_fresh(size_t bytes) {
  void* data = nullptr;
  const bool huge = bytes >= HUGE_PAGE;
  const size_t alignment = huge ? HUGE_PAGE : 64, rounded = (bytes + alignment - 1) / alignment * alignment;
  TORCH_CHECK(posix_memalign(&data, alignment, rounded) == 0, "fused CPU kernel: out of memory for the gradient (",
              bytes, " bytes)");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(data, rounded, MADV_HUGEPAGE);  // a hint: errors ignored
#endif
  return data;
}

void* acquire(size_t bytes) {
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> guard(p.lock);
    for (auto it = p.free.rbegin(); it != p.free.rend(); ++it) {
      if (it->first == bytes) {
        void* data = it->second;
        p.free.erase(std::next(it).base());
        return data;
      }
    }
  }
  return acquire_fresh(bytes);
}

}  // namespace

at::Tensor gradient_buffer(const at::Tensor& logits) {
  const size_t bytes = static_cast<size_t>(logits.numel()) * logits.element_size();
  if (bytes < POOL_MIN_BYTES) return at::empty(logits.sizes(), logits.options());  // glibc's heap reuses these
  if (!pool_enabled()) return at::from_blob(acquire_fresh(bytes), logits.sizes(), [](void* ptr) { std::free(ptr); },
                                            logits.options());
  return at::from_blob(acquire(bytes), logits.sizes(), [bytes](void* ptr) { release_to_pool(ptr, bytes); },
                       logits.options());
}

int64_t pooled_buffers() {
  Pool& p = pool();
  std::lock_guard<std::mutex> guard(p.lock);
  return static_cast<int64_t>(p.free.size());
}

}  // namespace dice_fused
