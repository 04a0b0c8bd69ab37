// Helpers shared by the CPU kernels in csrc/cpu/.
//
// Threading and determinism: every kernel splits its work into items whose boundaries are fixed by the
// problem size alone (a batch element times a tile of kChannelTile channels), never by the thread count.
// Each item writes its own outputs or its own slot of partial sums; partials are then added in item
// order by one thread. So the bits of every result are the same whatever torch.get_num_threads() is and
// however at::parallel_for hands items to threads.
#pragma once

// The lane vectors are passed by value between inline helpers only; GCC warns that their ABI depends on
// -mavx, which does not matter for calls that never cross a compiled-function boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <type_traits>
#include <cstring>
#include <vector>

namespace scstn_vcn {
namespace cpu {

// Channels per work item. Large enough that per-item overhead (precomputed sampling tables, partial
// slots) is small next to the item's work, small enough that C = 2048 gives enough items for any core
// count. Part of the reduction order: changing it changes low-order bits (but not determinism).
constexpr int64_t kChannelTile = 32;

inline int64_t num_tiles(int64_t channels) { return (channels + kChannelTile - 1) / kChannelTile; }

// Copy one (H, W) plane with element strides (sh, sw) into a dense row-major buffer in the accumulation
// type. This is the only place a kernel reads x, so any stride pattern works (contiguous, channels_last,
// sliced, transposed) without a full .contiguous() copy of x, and float16/bfloat16 are widened once.
template <typename scalar_t, typename acc_t>
inline void load_plane(const scalar_t* src, int64_t sh, int64_t sw, int64_t height, int64_t width, acc_t* dst) {
  if (sw == 1) {
    for (int64_t h = 0; h < height; ++h) {
      const scalar_t* row = src + h * sh;
      acc_t* out = dst + h * width;
      for (int64_t w = 0; w < width; ++w) out[w] = static_cast<acc_t>(row[w]);
    }
  } else {
    for (int64_t h = 0; h < height; ++h) {
      const scalar_t* row = src + h * sh;
      acc_t* out = dst + h * width;
      for (int64_t w = 0; w < width; ++w) out[w] = static_cast<acc_t>(row[w * sw]);
    }
  }
}

// Copy n contiguous accumulation-type values out to the storage dtype.
template <typename scalar_t, typename acc_t>
inline void store_row(const acc_t* src, int64_t n, scalar_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Plain sum over a dense row with eight interleaved accumulators: a fixed association (so deterministic)
// that the compiler can keep in vector registers, where a single running sum would be a serial chain.
template <typename acc_t>
inline acc_t row_sum(const acc_t* v, int64_t n) {
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += v[i + l];
  }
  for (int64_t l = 0; i < n; ++i, ++l) lanes[l] += v[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// Maximum of a dense row and the index of its FIRST occurrence (the element torch.max names on the CPU).
template <typename acc_t>
inline acc_t row_max_first(const acc_t* v, int64_t n, int64_t* index) {
  acc_t best = v[0];
  for (int64_t i = 1; i < n; ++i) best = v[i] > best ? v[i] : best;
  int64_t at = 0;
  while (at < n && !(v[at] == best)) ++at;
  *index = at < n ? at : 0;  // NaN rows: best stays v[0] unless it is NaN; name element 0 then
  return best;
}

// dtheta of every batch element from the work items' partial sums partial[(b * tiles + tile) * N + k]:
// the tiles of b added in tile order (in double), partial slot k going to theta entry slot[k] of the
// six (row-major 2 x 3) at dtheta + 6 b. Entries no slot names are left as they are.
template <int N, typename acc_t>
inline void theta_from_partials(const std::vector<double>& partial, int64_t batch, int64_t tiles, const int (&slot)[N],
                                acc_t* dtheta) {
  for (int64_t b = 0; b < batch; ++b) {
    double total[N] = {};
    for (int64_t tile = 0; tile < tiles; ++tile) {
      for (int k = 0; k < N; ++k) total[k] += partial[(b * tiles + tile) * N + k];
    }
    for (int k = 0; k < N; ++k) dtheta[6 * b + slot[k]] = static_cast<acc_t>(total[k]);
  }
}

// The backward's error for an argmax outside [0, W), raised once after the parallel loop (its work
// items only set a flag: an exception must not leave a parallel region).
inline void check_argmax_flags(const std::vector<char>& bad, int64_t W, const char* op) {
  bool bad_index = false;
  for (char flag : bad) bad_index = bad_index || flag;
  TORCH_CHECK(!bad_index, "argmax must hold column indices w in [0, ", W, ") from ", op);
}

}  // namespace cpu
}  // namespace scstn_vcn

namespace scstn_vcn {
namespace cpu {

// Channels processed side by side in the vectorised kernels: their planes are interleaved so that one
// spatial position of kLanes channels is contiguous, and every per-position operation becomes a
// kLanes-wide loop the compiler turns into vector instructions (all channels share the sampling taps).
constexpr int64_t kLanes = 8;

// dst[l * sc + s] = src[s * kLanes + l] for l < n (the group's dense output planes, stride sc apart).
template <typename scalar_t, typename acc_t>
inline void store_group(const acc_t* src, int64_t n, int64_t size, scalar_t* dst, int64_t sc) {
  for (int64_t l = 0; l < n; ++l) {
    for (int64_t s = 0; s < size; ++s) dst[l * sc + s] = static_cast<scalar_t>(src[s * kLanes + l]);
  }
}

// dst[s * kLanes + l] = plane of channel l at spatial position s = h * W + w, for l < n; lanes n.. are 0.
// Channel l's plane starts at src + l * sc and is read through its strides (any layout).
template <typename scalar_t, typename acc_t>
inline void load_group(const scalar_t* src, int64_t sc, int64_t sh, int64_t sw, int64_t n, int64_t height,
                       int64_t width, acc_t* dst) {
  if (n < kLanes) {
    for (int64_t i = 0; i < height * width * kLanes; ++i) dst[i] = acc_t(0);
  }
  if (sc == 1) {  // channels_last: the lanes are already adjacent in memory
    for (int64_t h = 0; h < height; ++h) {
      for (int64_t w = 0; w < width; ++w) {
        const scalar_t* p = src + h * sh + w * sw;
        acc_t* out = dst + (h * width + w) * kLanes;
        for (int64_t l = 0; l < n; ++l) out[l] = static_cast<acc_t>(p[l]);
      }
    }
  } else {
    for (int64_t l = 0; l < n; ++l) {
      const scalar_t* p = src + l * sc;
      for (int64_t h = 0; h < height; ++h) {
        for (int64_t w = 0; w < width; ++w) dst[(h * width + w) * kLanes + l] = static_cast<acc_t>(p[h * sh + w * sw]);
      }
    }
  }
}

}  // namespace cpu
}  // namespace scstn_vcn

namespace scstn_vcn {
namespace cpu {

// kLanes values as one GCC/Clang vector (two or four SSE registers on a baseline x86-64 build): the
// auto-vectoriser leaves the lane loops scalar once they contain compare-and-select, so the vectorised
// kernels spell the vectors out. Loads and stores go through memcpy (unaligned, no aliasing issue).
template <typename acc_t>
struct LaneVec;
template <>
struct LaneVec<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct LaneVec<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};

template <typename acc_t>
inline typename LaneVec<acc_t>::type load_lanes(const acc_t* p) {
  typename LaneVec<acc_t>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename acc_t>
inline void store_lanes(acc_t* p, typename LaneVec<acc_t>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename acc_t>
inline typename LaneVec<acc_t>::type splat(acc_t s) {
  typename LaneVec<acc_t>::type v;
  for (int64_t l = 0; l < kLanes; ++l) v[l] = s;
  return v;
}

}  // namespace cpu
}  // namespace scstn_vcn
