// channel_pool on the CPU: channel mean (SC-STN input) and GAP + GMP (global branch) from one read of x.
//
// Forward, x (B, C, H, W), any strides:
//   cmean[b, h, w] = (1 / C)   * sum_c x[b, c, h, w]
//   gpool[b, c]    = (1 / HW)  * sum_{h,w} x[b, c, h, w] + max_{h,w} x[b, c, h, w]
//   argmax[b, c]   = h * W + w of the FIRST maximum (row-major), int32
// Backward, g_m = dL/dcmean (B, H, W), g_p = dL/dgpool (B, C):
//   dx[b, c, h, w] = g_m[b, h, w] / C + g_p[b, c] / HW + g_p[b, c] * [h W + w == argmax[b, c]]
//
// Work items are (b, tile of kChannelTile channels). The forward reads each plane once: its sum/max go
// to gpool and the plane is added into the item's own cmean partial; partials are summed over tiles in
// tile order afterwards, so cmean is deterministic. Low precision is accumulated in float32.

#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/output_cache.h"

#include <torch/library.h>

namespace scstn_vcn {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_pool_cpu(const at::Tensor& x) {
  check_float(x, "x");
  check_dim(x, 4, "x", "(B, C, H, W)");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  TORCH_CHECK(HW <= INT32_MAX, "x: H * W = ", HW, " does not fit the int32 argmax");

  auto cmean = at::empty({B, H, W}, x.options());
  auto gpool = at::empty({B, C}, x.options());
  auto argmax = at::empty({B, C}, x.options().dtype(at::kInt));
  const int64_t tiles = num_tiles(C);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto partial = at::empty({B, tiles, HW}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* part = partial.data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gp = gpool.data_ptr<scalar_t>();
    int32_t* ap = argmax.data_ptr<int32_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(HW);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        acc_t* sum_plane = part + item * HW;
        for (int64_t i = 0; i < HW; ++i) sum_plane[i] = acc_t(0);
        for (int64_t c = c0; c < c1; ++c) {
          const scalar_t* src = xp + b * sb + c * sc;
          const acc_t* v;
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            if (sw == 1 && sh == W) {
              v = reinterpret_cast<const acc_t*>(src);  // a dense plane in the compute dtype: read in place
            } else {
              load_plane(src, sh, sw, H, W, plane.data());
              v = plane.data();
            }
          } else {
            load_plane(src, sh, sw, H, W, plane.data());
            v = plane.data();
          }
          for (int64_t i = 0; i < HW; ++i) sum_plane[i] += v[i];
          int64_t at;
          const acc_t best = row_max_first(v, HW, &at);
          gp[b * C + c] = static_cast<scalar_t>(row_sum(v, HW) * inv_hw + best);
          ap[b * C + c] = static_cast<int32_t>(at);
        }
      }
    });

    // cmean: tile partials in tile order (fixed), one batch element per item.
    scalar_t* mp = cmean.data_ptr<scalar_t>();
    const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> total(HW);
      for (int64_t b = begin; b < end; ++b) {
        const acc_t* first = part + b * tiles * HW;
        for (int64_t i = 0; i < HW; ++i) total[i] = first[i];
        for (int64_t t = 1; t < tiles; ++t) {
          const acc_t* p = first + t * HW;
          for (int64_t i = 0; i < HW; ++i) total[i] += p[i];
        }
        for (int64_t i = 0; i < HW; ++i) mp[b * HW + i] = static_cast<scalar_t>(total[i] * inv_c);
      }
    });
  });
  return {cmean, gpool, argmax};
}

at::Tensor channel_pool_backward_cpu(const at::Tensor& grad_cmean, const at::Tensor& grad_gpool,
                                     const at::Tensor& argmax, const at::Tensor& x) {
  check_float(x, "x");
  check_dim(x, 4, "x", "(B, C, H, W)");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  check_float(grad_cmean, "grad_cmean");
  check_shape(grad_cmean, {B, H, W}, "grad_cmean");
  check_float(grad_gpool, "grad_gpool");
  check_shape(grad_gpool, {B, C}, "grad_gpool");
  check_dtype(argmax, at::kInt, "argmax", "the int32 index output of channel_pool");
  check_shape(argmax, {B, C}, "argmax");
  check_same_device(x, "x", grad_cmean, "grad_cmean");
  check_same_device(x, "x", grad_gpool, "grad_gpool");
  check_same_device(x, "x", argmax, "argmax");

  // Every element is written below; the memory is reused from call to call (no fresh page faults).
  auto grad_x = empty_output({B, C, H, W}, x.options());
  auto am = argmax.contiguous();
  bool bad_index = false;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    // The incoming gradients are small (B*H*W, B*C); widen them once.
    auto gm = grad_cmean.to(acc_type).contiguous();
    auto gpl = grad_gpool.to(acc_type).contiguous();
    const acc_t* gmp = gm.const_data_ptr<acc_t>();
    const acc_t* gpp = gpl.const_data_ptr<acc_t>();
    const int32_t* ap = am.const_data_ptr<int32_t>();
    scalar_t* dx = grad_x.data_ptr<scalar_t>();
    const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C), inv_hw = acc_t(1) / static_cast<acc_t>(HW);
    std::vector<char> bad(B * num_tiles(C), 0);
    const int64_t tiles = num_tiles(C);

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> mean_part(HW);
      int64_t cached_b = -1;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        if (b != cached_b) {  // g_m / C is shared by every channel of batch element b
          for (int64_t i = 0; i < HW; ++i) mean_part[i] = gmp[b * HW + i] * inv_c;
          cached_b = b;
        }
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        for (int64_t c = c0; c < c1; ++c) {
          const acc_t g = gpp[b * C + c];
          const acc_t g_avg = g * inv_hw;
          scalar_t* out = dx + (b * C + c) * HW;
          for (int64_t i = 0; i < HW; ++i) out[i] = static_cast<scalar_t>(mean_part[i] + g_avg);
          const int64_t at = ap[b * C + c];
          if (at < 0 || at >= HW) {
            bad[item] = 1;
            continue;
          }
          out[at] = static_cast<scalar_t>(mean_part[at] + g_avg + g);
        }
      }
    });
    for (char flag : bad) bad_index = bad_index || flag;
  });
  TORCH_CHECK(!bad_index, "argmax must hold flat indices h * W + w in [0, ", HW, ") from channel_pool");
  return grad_x;
}

}  // namespace
}  // namespace cpu
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CPU, m) {
  m.impl("channel_pool", &scstn_vcn::cpu::channel_pool_cpu);
  m.impl("channel_pool_backward", &scstn_vcn::cpu::channel_pool_backward_cpu);
}
