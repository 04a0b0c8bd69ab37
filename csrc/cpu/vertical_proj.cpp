// vertical_proj on the CPU: the VCN's per-channel vertical projection (Eq. 7).
//
// Forward, F (B, C, H), delta (C, K, H):
//   f[b, c, k] = sum_h F[b, c, h] delta[c, k, h]
// Backward, g = dL/df (B, C, K):
//   dF[b, c, h]     = sum_k g[b, c, k] delta[c, k, h]
//   ddelta[c, k, h] = sum_b g[b, c, k] F[b, c, h]      (b summed in increasing order: deterministic)
//
// Both passes' work items are tiles of channels looping over b (a tile's kernels stay in cache). In the
// backward, a channel's ddelta is summed over b inside one item, in order, so there are no
// cross-thread partials at all; dF is written in the same pass from the same delta rows.
// Low precision F is computed in float32; delta (and so ddelta) is in the compute dtype.

#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/cpu_utils.h"

#include <torch/library.h>

namespace scstn_vcn {
namespace cpu {
namespace {

// sum_h a[h] b[h] with four interleaved partial sums (a fixed order the compiler can vectorise).
template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  acc_t lanes[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int l = 0; l < 4; ++l) lanes[l] += a[i + l] * b[i + l];
  }
  for (int64_t l = 0; i < n; ++i, ++l) lanes[l] += a[i] * b[i];
  return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
constexpr bool kHaveAvx2 = true;
// float32, K <= 8: out[k] = sum_h row[h] dT[h, k] with dT (H, 8) zero beyond K. The K sums live in one
// 8-lane register, updated h by h in order (a broadcast and an FMA each): no horizontal sums.
inline void project_row_avx2(const float* __restrict row, const float* __restrict dT, int64_t H, float* out) {
  // four independent accumulators (h mod 4) so consecutive FMAs do not wait on each other's latency;
  // combined in a fixed order at the end
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t h = 0;
  for (; h + 4 <= H; h += 4) {
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(row[h + j]), _mm256_loadu_ps(dT + (h + j) * 8), acc[j]);
  }
  for (int j = 0; h < H; ++h, ++j)
    acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(row[h]), _mm256_loadu_ps(dT + h * 8), acc[j]);
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

// float32, H = 8 V: one (b, c) row of the backward with the row and its gradient held in V registers each:
// drow = sum_k g[k] d[k, :] (k in order), dd[k, :] += g[k] row.
template <int V>
inline void backward_row_avx2(const float* __restrict row, const float* __restrict g, const float* __restrict d,
                              float* __restrict dd, float* __restrict drow, int64_t K) {
  __m256 r[V], acc[V];
  for (int v = 0; v < V; ++v) {
    r[v] = _mm256_loadu_ps(row + 8 * v);
    acc[v] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m256 gk = _mm256_set1_ps(g[k]);
    const float* dk = d + k * 8 * V;
    float* ddk = dd + k * 8 * V;
    for (int v = 0; v < V; ++v) {
      acc[v] = _mm256_fmadd_ps(gk, _mm256_loadu_ps(dk + 8 * v), acc[v]);
      _mm256_storeu_ps(ddk + 8 * v, _mm256_fmadd_ps(gk, r[v], _mm256_loadu_ps(ddk + 8 * v)));
    }
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(drow + 8 * v, acc[v]);
}

// backward_row_avx2 for H = 8, 16, ..., 64; false when H is not one of these (the caller falls back).
inline bool backward_row_avx2_any(const float* row, const float* g, const float* d, float* dd, float* drow, int64_t H,
                                  int64_t K) {
  switch (H) {
    case 8:
      backward_row_avx2<1>(row, g, d, dd, drow, K);
      return true;
    case 16:
      backward_row_avx2<2>(row, g, d, dd, drow, K);
      return true;
    case 24:
      backward_row_avx2<3>(row, g, d, dd, drow, K);
      return true;
    case 32:
      backward_row_avx2<4>(row, g, d, dd, drow, K);
      return true;
    case 40:
      backward_row_avx2<5>(row, g, d, dd, drow, K);
      return true;
    case 48:
      backward_row_avx2<6>(row, g, d, dd, drow, K);
      return true;
    case 56:
      backward_row_avx2<7>(row, g, d, dd, drow, K);
      return true;
    case 64:
      backward_row_avx2<8>(row, g, d, dd, drow, K);
      return true;
    default:
      return false;
  }
}
#else
constexpr bool kHaveAvx2 = false;
inline void project_row_avx2(const float*, const float*, int64_t, float*) {}
inline bool backward_row_avx2_any(const float*, const float*, const float*, float*, float*, int64_t, int64_t) {
  return false;
}
#endif

// One (b, c) row of the backward: drow[h] = sum_k g[k] d[k, h], and dd[k, h] += g[k] row[h]. The restrict
// qualifiers tell the compiler the rows do not overlap, so it vectorises without runtime alias checks.
template <typename acc_t>
inline void backward_row(const acc_t* __restrict row, const acc_t* __restrict g, const acc_t* __restrict d,
                         acc_t* __restrict dd, acc_t* __restrict drow, int64_t H, int64_t K) {
  for (int64_t h = 0; h < H; ++h) drow[h] = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t gk = g[k];
    const acc_t* dk = d + k * H;
    acc_t* ddk = dd + k * H;
    for (int64_t h = 0; h < H; ++h) {
      drow[h] += gk * dk[h];
      ddk[h] += gk * row[h];
    }
  }
}

void check_F_delta(const at::Tensor& F, const at::Tensor& delta) {
  check_float(F, "F");
  check_dim(F, 3, "F", "(B, C, H)");
  check_dim(delta, 3, "delta", "(C, K, H)");
  TORCH_CHECK(delta.size(0) == F.size(1) && delta.size(2) == F.size(2),
              "delta must have shape (C, K, H) with C = ", F.size(1), " and H = ", F.size(2), " to match F, got ",
              delta.sizes());
  check_dtype(delta, compute_type(F.scalar_type()), "delta",
              "the compute dtype of F: float64 for float64 F, float32 otherwise");
  check_same_device(F, "F", delta, "delta");
}

at::Tensor vertical_proj_cpu(const at::Tensor& F_in, const at::Tensor& delta_in) {
  check_F_delta(F_in, delta_in);
  auto F = F_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = F.size(0), C = F.size(1), H = F.size(2), K = delta.size(1);
  auto f = at::empty({B, C, K}, F.options());
  const int64_t tiles = num_tiles(C);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, F.scalar_type(), "vertical_proj_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* Fp = F.const_data_ptr<scalar_t>();
    const acc_t* dp = delta.const_data_ptr<acc_t>();
    scalar_t* fp = f.data_ptr<scalar_t>();
    // float32 with K <= 8 on an AVX2 build: delta transposed once to (C, H, 8) for project_row_avx2.
    const bool fast = kHaveAvx2 && std::is_same_v<acc_t, float> && K <= 8;
    at::Tensor dT;
    if (fast) {
      dT = at::empty({C, H, 8}, delta.options());
      acc_t* tp = dT.data_ptr<acc_t>();
      at::parallel_for(0, C, 64, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t k = 0; k < 8; ++k) tp[(c * H + h) * 8 + k] = k < K ? dp[(c * K + k) * H + h] : acc_t(0);
      });
    }
    const acc_t* tp = fast ? dT.const_data_ptr<acc_t>() : nullptr;
    // Items are channel tiles looping over b, so a tile's kernels stay in cache for all B rows.
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(H), out(8);
      for (int64_t item = begin * B; item < end * B; ++item) {
        const int64_t tile = item / B, b = item % B;
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        for (int64_t c = c0; c < c1; ++c) {
          const scalar_t* src = Fp + (b * C + c) * H;
          for (int64_t h = 0; h < H; ++h) row[h] = static_cast<acc_t>(src[h]);
          const acc_t* d = dp + c * K * H;
          scalar_t* dst = fp + (b * C + c) * K;
          if (fast) {
            project_row_avx2(reinterpret_cast<const float*>(row.data()), reinterpret_cast<const float*>(tp + c * H * 8),
                             H, reinterpret_cast<float*>(out.data()));
            for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<scalar_t>(out[k]);
          } else {
            for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<scalar_t>(dot(row.data(), d + k * H, H));
          }
        }
      }
    });
  });
  return f;
}

std::tuple<at::Tensor, at::Tensor> vertical_proj_backward_cpu(const at::Tensor& grad_f, const at::Tensor& F_in,
                                                              const at::Tensor& delta_in) {
  check_F_delta(F_in, delta_in);
  auto F = F_in.contiguous();
  auto delta = delta_in.contiguous();
  const int64_t B = F.size(0), C = F.size(1), H = F.size(2), K = delta.size(1);
  check_float(grad_f, "grad_f");
  check_shape(grad_f, {B, C, K}, "grad_f");
  check_same_device(F, "F", grad_f, "grad_f");
  auto grad_F = at::empty({B, C, H}, F.options());
  auto grad_delta = at::empty({C, K, H}, delta.options());
  const int64_t tiles = num_tiles(C);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, F.scalar_type(), "vertical_proj_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto g_acc = grad_f.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* gp = g_acc.const_data_ptr<acc_t>();
    const scalar_t* Fp = F.const_data_ptr<scalar_t>();
    const acc_t* dp = delta.const_data_ptr<acc_t>();
    scalar_t* dFp = grad_F.data_ptr<scalar_t>();
    acc_t* ddp = grad_delta.data_ptr<acc_t>();
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(H), drow(H);
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        for (int64_t i = c0 * K * H; i < c1 * K * H; ++i) ddp[i] = acc_t(0);
        // b outermost: each step reads one contiguous block F[b, c0:c1, :] (no page-sized jumps per channel)
        // while the tile's ddelta stays in cache; each channel still sums over b in increasing order.
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t c = c0; c < c1; ++c) {
            const acc_t* d = dp + c * K * H;
            acc_t* dd = ddp + c * K * H;
            const scalar_t* src = Fp + (b * C + c) * H;
            const acc_t* r = nullptr;
            if constexpr (std::is_same_v<scalar_t, acc_t>) {
              r = reinterpret_cast<const acc_t*>(src);
            } else {
              for (int64_t h = 0; h < H; ++h) row[h] = static_cast<acc_t>(src[h]);
              r = row.data();
            }
            bool done = false;
            if constexpr (kHaveAvx2 && std::is_same_v<acc_t, float>) {
              done = backward_row_avx2_any(reinterpret_cast<const float*>(r),
                                           reinterpret_cast<const float*>(gp + (b * C + c) * K),
                                           reinterpret_cast<const float*>(d), reinterpret_cast<float*>(dd),
                                           reinterpret_cast<float*>(drow.data()), H, K);
            }
            if (!done) backward_row(r, gp + (b * C + c) * K, d, dd, drow.data(), H, K);
            store_row(drow.data(), H, dFp + (b * C + c) * H);
          }
        }
      }
    });
  });
  return {grad_F, grad_delta};
}

}  // namespace
}  // namespace cpu
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CPU, m) {
  m.impl("vertical_proj", &scstn_vcn::cpu::vertical_proj_cpu);
  m.impl("vertical_proj_backward", &scstn_vcn::cpu::vertical_proj_backward_cpu);
}
