// The reuse cache behind empty_output (see output_cache.h for why it exists).
//
// Blocks are rounded up to whole 2 MiB pages and keyed by that rounded size. An allocation takes the most
// recently freed idle block of its size, or maps a new one; a freed block joins the idle list, and the
// least recently freed idle blocks are unmapped while the idle bytes exceed the limit. Blocks in use are
// not counted or capped: they belong to live tensors. The cache is never destroyed (a tensor may die
// after static destructors have run); the OS takes its memory back at exit.
//
// fork: a process forked while another thread is inside the cache's critical section would get a copy of
// the locked mutex and no thread to unlock it, so its first large output would wait forever (a DataLoader
// worker forked while the main process runs native ops on another thread). And the child would inherit
// the idle blocks copy-on-write: the child keeps up to the limit of memory it never asked for, and the
// parent pays a copy fault on each block's next use while the child still maps it. So the cache registers
// pthread_atfork handlers when it is made: before fork the forking thread takes the lock (fork waits for
// any critical section in flight, which never blocks on anything else), the parent then releases it, and
// the child empties its idle list, unmaps its copies of those blocks (the parent's pages are untouched)
// and releases the lock. Blocks in use stay: the child's copies of the parent's live tensors need them.

#include "cpu/output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <torch/library.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if !defined(_WIN32)
#include <pthread.h>
#endif

namespace scstn_vcn {
namespace cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr int64_t kDefaultLimitMiB = 256;

size_t round_up_huge(size_t n) { return (n + kHugePage - 1) / kHugePage * kHugePage; }

// The idle-bytes limit from SCSTN_VCN_CPU_OUTPUT_CACHE_MB (default kDefaultLimitMiB).
size_t limit_from_env() {
  const char* text = std::getenv(kOutputCacheEnv);
  if (text == nullptr || *text == '\0') return size_t(kDefaultLimitMiB) << 20;
  errno = 0;
  char* end = nullptr;
  const long long mib = std::strtoll(text, &end, 10);
  TORCH_CHECK(errno == 0 && end != text && *end == '\0' && mib >= 0 && mib <= (int64_t(1) << 30), kOutputCacheEnv,
              " must be a whole number of MiB >= 0 (0 turns the output cache off), got '", text, "'");
  return size_t(mib) << 20;
}

#if defined(__linux__)
// size bytes (a multiple of kHugePage) of fresh anonymous memory starting on a 2 MiB boundary, advised
// for transparent huge pages; nullptr if the OS refuses.
void* map_block(size_t size) {
  const size_t span = size + kHugePage;  // room to slide to a 2 MiB boundary
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  if (aligned > begin) munmap(raw, aligned - begin);
  const uintptr_t tail = aligned + size, end = begin + span;
  if (end > tail) munmap(reinterpret_cast<void*>(tail), end - tail);
#if defined(MADV_HUGEPAGE)
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // advice only: where THP is off, 4 KiB pages
#endif
  return reinterpret_cast<void*>(aligned);
}

void unmap_block(void* ptr, size_t size) { munmap(ptr, size); }
#else
void* map_block(size_t size) { return std::aligned_alloc(kHugePage, size); }
void unmap_block(void* ptr, size_t) { std::free(ptr); }
#endif

struct Block {
  void* ptr;
  size_t size;  // bytes mapped, a multiple of kHugePage
};

class OutputCache final : public c10::Allocator {
 public:
  explicit OutputCache(size_t limit) : limit_(limit) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kCachedMinBytes) return c10::GetCPUAllocator()->allocate(n);  // a resize may ask for little
    const size_t size = round_up_huge(n);
    Block* block = take_idle(size);
    if (block == nullptr) {
      void* ptr = map_block(size);
      TORCH_CHECK(ptr != nullptr, "scstn_vcn: could not map ", size,
                  " bytes for a CPU kernel's output: ", std::strerror(errno));
      block = new Block{ptr, size};
    }
    return {block->ptr, block, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  // {idle blocks, idle bytes, idle-bytes limit}: what the cache holds beyond live tensors.
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {int64_t(idle_.size()), int64_t(idle_bytes_), int64_t(limit_)};
  }

  // Holds the lock for `duration`, as a thread in the middle of an allocation would (for the fork tests).
  void hold_lock(std::chrono::milliseconds duration) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::this_thread::sleep_for(duration);
  }

  // The pthread_atfork handlers (see the top of this file).
  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  void after_fork_in_child() {
    // Only the forking thread exists here, and it holds the lock (taken in before_fork): nothing can
    // change the list under us. POSIX's intended pattern for atfork is exactly this lock/unlock pair.
    std::list<Block*> inherited;
    inherited.swap(idle_);
    idle_bytes_ = 0;
    mutex_.unlock();
    for (Block* block : inherited) {  // this process's copies only; glibc's malloc is usable again here
      unmap_block(block->ptr, block->size);
      delete block;
    }
  }

 private:
  static void release(void* context);

  Block* take_idle(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {  // front: most recently freed
      if ((*it)->size == size) {
        Block* block = *it;
        idle_.erase(it);
        idle_bytes_ -= size;
        return block;
      }
    }
    return nullptr;
  }

  void give_back(Block* block) {
    std::list<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle_.push_front(block);
      idle_bytes_ += block->size;
      while (idle_bytes_ > limit_) {
        Block* oldest = idle_.back();
        idle_.pop_back();
        idle_bytes_ -= oldest->size;
        evicted.push_back(oldest);
      }
    }
    for (Block* old : evicted) {  // unmapped outside the lock: munmap may take a while
      unmap_block(old->ptr, old->size);
      delete old;
    }
  }

  const size_t limit_;
  std::mutex mutex_;
  std::list<Block*> idle_;
  size_t idle_bytes_ = 0;
};

// The process's cache, made on first use from SCSTN_VCN_CPU_OUTPUT_CACHE_MB: cache is nullptr when the
// variable is 0; error holds the message when its value is bad (or the fork handlers could not be
// registered), raised on every use so that it is never skipped.
struct CacheState {
  OutputCache* cache = nullptr;
  std::string error;
};

OutputCache* fork_cache = nullptr;  // the cache the fork handlers act on, set before they are registered

#if !defined(_WIN32)
void output_cache_before_fork() { fork_cache->before_fork(); }
void output_cache_after_fork_in_parent() { fork_cache->after_fork_in_parent(); }
void output_cache_after_fork_in_child() { fork_cache->after_fork_in_child(); }
#endif

CacheState make_cache_state() {
  CacheState made;
  try {
    const size_t limit = limit_from_env();
    if (limit == 0) return made;
    made.cache = new OutputCache(limit);
#if !defined(_WIN32)
    fork_cache = made.cache;
    const int failed = pthread_atfork(&output_cache_before_fork, &output_cache_after_fork_in_parent,
                                      &output_cache_after_fork_in_child);
    TORCH_CHECK(failed == 0,
                "scstn_vcn: could not register the CPU output cache's fork handlers: ", std::strerror(failed));
#endif
  } catch (const c10::Error& e) {
    made.cache = nullptr;  // a cache without its fork handlers is never used (and never freed: it is tiny)
    made.error = e.what_without_backtrace();
  }
  return made;
}

const CacheState& cache_state() {
  // Allocated once and never destroyed, like the cache: a tensor that dies after static destructors have
  // run still finds it in release().
  static const CacheState* const state = new CacheState(make_cache_state());
  return *state;
}

OutputCache* the_cache() {
  const CacheState& state = cache_state();
  TORCH_CHECK(state.error.empty(), state.error);
  return state.cache;
}

void OutputCache::release(void* context) {
  // a block exists only when the cache does; cache_state() no longer reads the environment here
  cache_state().cache->give_back(static_cast<Block*>(context));
}

std::vector<int64_t> output_cache_stats() {
  OutputCache* cache = the_cache();
  return cache == nullptr ? std::vector<int64_t>{0, 0, 0} : cache->stats();
}

void output_cache_hold_lock(int64_t milliseconds) {
  TORCH_CHECK(milliseconds >= 0, "milliseconds must be >= 0, got ", milliseconds);
  OutputCache* cache = the_cache();
  if (cache != nullptr) cache->hold_lock(std::chrono::milliseconds(milliseconds));
}

}  // namespace

// Introspection of the cache, in a namespace of its own (not one of the op schemas): torch.ops.scstn_vcn_cache.
TORCH_LIBRARY(scstn_vcn_cache, m) {
  // [idle blocks, idle bytes, idle-bytes limit]; zeros when SCSTN_VCN_CPU_OUTPUT_CACHE_MB=0.
  m.def("cpu_output_cache_stats() -> int[]", &output_cache_stats);
  // Holds the cache's lock for that long, as an allocating thread would: lets a test fork at that moment.
  m.def("cpu_output_cache_hold_lock(int milliseconds) -> ()", &output_cache_hold_lock);
}

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "empty_output: a CPU tensor was expected, got ", options.device());
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  const size_t nbytes = at::detail::computeStorageNbytesContiguous(sizes, c10::elementSize(dtype));
  OutputCache* cache = nbytes >= kCachedMinBytes ? the_cache() : nullptr;
  if (cache == nullptr) return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
  return at::Tensor(at::detail::empty_generic(sizes, cache, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                              at::MemoryFormat::Contiguous));
}

}  // namespace cpu
}  // namespace scstn_vcn
