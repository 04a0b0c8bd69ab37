// vertical_proj on the CPU: the VCN's per-channel vertical projection (Eq. 7).
//
// Forward, F (B, C, H), delta (C, K, H):
//   f[b, c, k] = sum_h F[b, c, h] delta[c, k, h]
// Backward, g = dL/df (B, C, K):
//   dF[b, c, h]     = sum_k g[b, c, k] delta[c, k, h]
//   ddelta[c, k, h] = sum_b g[b, c, k] F[b, c, h]      (b summed in increasing order: deterministic)
//
// The forward's items are (b, tile of channels), each a set of length-H dot products. The backward's items
// are tiles of channels: a channel's ddelta is summed over b inside one item, in order, so there are no
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
  TORCH_CHECK(delta.size(0) == F.size(1) && delta.size(2) == F.size(2), "delta must have shape (C, K, H) with C = ",
              F.size(1), " and H = ", F.size(2), " to match F, got ", delta.sizes());
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
    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(H);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        for (int64_t c = c0; c < c1; ++c) {
          const scalar_t* src = Fp + (b * C + c) * H;
          for (int64_t h = 0; h < H; ++h) row[h] = static_cast<acc_t>(src[h]);
          const acc_t* d = dp + c * K * H;
          scalar_t* out = fp + (b * C + c) * K;
          for (int64_t k = 0; k < K; ++k) out[k] = static_cast<scalar_t>(dot(row.data(), d + k * H, H));
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
            backward_row(r, gp + (b * C + c) * K, d, dd, drow.data(), H, K);
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
