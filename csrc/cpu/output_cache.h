// Memory for the CPU kernels' large outputs, kept mapped and reused from one call to the next.
//
// Why: an output of many megabytes from the ordinary allocator is a fresh mmap on every call (glibc
// maps anything over 32 MiB, and often smaller blocks after a trim), so every call pays a first-touch
// page fault per page and the kernel zeroes every page before the op overwrites it. What those faults
// cost depends on the process's and the machine's memory history, not on the op: 4 KiB faults cost about
// 2 us each on a 2-core VM (50 MB: about 25 ms, more than the kernel), and huge-page faults, cheap on
// recently used memory, cost 40-170 ms per 50 MB when the guest has handed its free huge blocks back to
// the hypervisor (free page reporting), which it does to exactly the 2 MiB blocks a freed huge-page
// output leaves behind. Reusing the memory makes a call's cost that of its work alone.
//
// How: empty_output() serves outputs of at least kCachedMinBytes from blocks of whole 2 MiB pages
// (mmap'd 2 MiB-aligned, advised MADV_HUGEPAGE). A block whose tensor dies goes back to an idle list,
// and the next request of the same rounded size takes the most recently freed one (its pages are still
// mapped, and warmest in cache). Idle blocks are capped at SCSTN_VCN_CPU_OUTPUT_CACHE_MB MiB (default
// 256; the least recently freed are unmapped first); 0 turns the reuse off (plain at::empty). A forked
// child starts with no idle blocks and a free lock (pthread_atfork; see output_cache.cpp), and
// torch.ops.scstn_vcn_cache.cpu_output_cache_stats() says what the cache holds idle.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace scstn_vcn {
namespace cpu {

// Outputs smaller than one huge page come from torch's allocator: glibc's heap recycles them without
// fresh page faults, and a block of its own would not get a huge page.
constexpr size_t kCachedMinBytes = size_t(2) << 20;

// The environment variable that caps the idle cached bytes, in MiB (a whole number >= 0).
constexpr const char* kOutputCacheEnv = "SCSTN_VCN_CPU_OUTPUT_CACHE_MB";

// An uninitialised contiguous CPU tensor like at::empty(sizes, options), its memory reused from earlier
// outputs when it is large (see the header). The caller must write every element.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace scstn_vcn
