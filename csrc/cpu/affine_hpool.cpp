// affine_hpool on the CPU: affine bilinear resampling of x and horizontal mean + max, fused; the
// resampled map is never written.
//
// Sampling (exactly F.affine_grid(theta, x.shape, align_corners=False) + F.grid_sample(bilinear, zeros,
// align_corners=False)): output pixel (h, w) has u_w = (2w + 1) / W - 1, v_h = (2h + 1) / H - 1 and
//   gx = t00 u_w + t01 v_h + t02,   gy = t10 u_w + t11 v_h + t12
//   ix = ((gx + 1) W - 1) / 2,      iy = ((gy + 1) H - 1) / 2
//   x0 = floor(ix), x1 = x0 + 1, wx1 = ix - x0, wx0 = 1 - wx1 (likewise y0, y1, wy0, wy1)
//   r(h, w) = sum over the neighbours (yi, xj) inside the map of wy_i wx_j x[yi, xj]   (outside = 0)
// Forward:  out[b,c,h] = (1/W) sum_w r + max_w r;  argmax[b,c,h] = w of the FIRST max of the row.
// Backward: dr(h, w) = g[b,c,h] (1/W + [w == argmax]);
//   dx[yi, xj]  += wy_i wx_j dr                           (the bilinear scatter)
//   dL/dix      = dr (wy0 (X(y0,x1) - X(y0,x0)) + wy1 (X(y1,x1) - X(y1,x0)))   X = 0 outside
//   dL/diy      = dr (wx0 (X(y1,x0) - X(y0,x0)) + wx1 (X(y1,x1) - X(y0,x1)))
//   (the one-sided derivative at integer ix/iy, from the floor convention, matches torch's backward)
//   dtheta[0]   = sum_{c,h,w} dL/dix (W/2) (u_w, v_h, 1),  dtheta[1] = sum dL/diy (H/2) (u_w, v_h, 1).
//
// Two paths per batch element, chosen by theta:
//  * rotation-free (t01 == t10 == 0, SC-STN's case): ix depends on w only and iy on h only, so
//    r(h, :) = column-interpolation of t(h, :) = wy0 X(y0, :) + wy1 X(y1, :) -- a contiguous blend of two
//    rows that vectorises, then two taps per output column. In the backward the sums over channels of
//    the mean's gradient are linear in t and in d(h, :) = X(y1, :) - X(y0, :), so per channel only
//    g t and g d are accumulated (W wide) and the column taps are applied once per tile.
//  * general: per-sample tables of the four clamped neighbour offsets and masked weights, gathered.
// Work items are (b, tile of kChannelTile channels); each item writes its planes of dx and six partial
// sums of dtheta, which are added in tile order afterwards: deterministic whatever the thread count.

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/bilinear_taps.h"
#include "cpu/cpu_utils.h"
#include "cpu/output_cache.h"

#include <torch/library.h>

namespace scstn_vcn {
namespace cpu {
namespace {

template <typename acc_t>
inline bool rotation_free(const acc_t* t) {
  return t[1] == acc_t(0) && t[3] == acc_t(0);
}

// Sampling tables of one batch element on the rotation-free path: row taps per h, column taps per w.
template <typename acc_t>
struct SeparableTables {
  std::vector<Taps<acc_t>> rows, cols;
  void build(const acc_t* t, int64_t H, int64_t W) {
    rows.resize(H);
    cols.resize(W);
    for (int64_t w = 0; w < W; ++w) cols[w] = make_taps(unnormalise(t[0] * base_coord<acc_t>(w, W) + t[2], W), W);
    for (int64_t h = 0; h < H; ++h) rows[h] = make_taps(unnormalise(t[4] * base_coord<acc_t>(h, H) + t[5], H), H);
  }
};

// Sampling tables of one batch element on the general path: per output pixel s = h W + w, the four
// neighbours' plane offsets (00 = (y0, x0), 01 = (y0, x1), 10 = (y1, x0), 11 = (y1, x1)) and masked weights.
template <typename acc_t>
struct GeneralTables {
  std::vector<int64_t> off;      // 4 per sample
  std::vector<acc_t> wgt, mask;  // 4 per sample
  std::vector<acc_t> wx, wy;     // 2 per sample: unmasked (w0, w1) along x and y
  void build(const acc_t* t, int64_t H, int64_t W) {
    const int64_t S = H * W;
    off.resize(4 * S);
    wgt.resize(4 * S);
    mask.resize(4 * S);
    wx.resize(2 * S);
    wy.resize(2 * S);
    for (int64_t h = 0; h < H; ++h) {
      const acc_t v = base_coord<acc_t>(h, H);
      for (int64_t w = 0; w < W; ++w) {
        const acc_t u = base_coord<acc_t>(w, W);
        const auto cx = make_taps(unnormalise(t[0] * u + t[1] * v + t[2], W), W);
        const auto cy = make_taps(unnormalise(t[3] * u + t[4] * v + t[5], H), H);
        const int64_t s = h * W + w;
        const int64_t o[4] = {cy.i0 * W + cx.i0, cy.i0 * W + cx.i1, cy.i1 * W + cx.i0, cy.i1 * W + cx.i1};
        const acc_t m[4] = {cy.valid0 * cx.valid0, cy.valid0 * cx.valid1, cy.valid1 * cx.valid0, cy.valid1 * cx.valid1};
        const acc_t ww[4] = {cy.raw0 * cx.raw0, cy.raw0 * cx.raw1, cy.raw1 * cx.raw0, cy.raw1 * cx.raw1};
        for (int k = 0; k < 4; ++k) {
          off[4 * s + k] = o[k];
          mask[4 * s + k] = m[k];
          wgt[4 * s + k] = m[k] * ww[k];
        }
        wx[2 * s] = cx.raw0;
        wx[2 * s + 1] = cx.raw1;
        wy[2 * s] = cy.raw0;
        wy[2 * s + 1] = cy.raw1;
      }
    }
  }
};

// The sampling tables of the batch element being processed: separable ones for a rotation-free theta,
// general ones otherwise, rebuilt only when the work items move to another batch element.
template <typename acc_t>
struct BatchTables {
  SeparableTables<acc_t> sep;
  GeneralTables<acc_t> gen;
  int64_t of = -1;
  bool separable = false;

  // Makes the tables those of batch element b with theta t; true when they had to be rebuilt.
  bool prepare(int64_t b, const acc_t* t, int64_t H, int64_t W) {
    if (of == b) return false;
    separable = rotation_free(t);
    if (separable)
      sep.build(t, H, W);
    else
      gen.build(t, H, W);
    of = b;
    return true;
  }
};

// Six partial sums of dtheta from per-sample dL/dix (gx) and dL/diy (gy) of one tile.
template <typename acc_t>
inline void theta_partial(const acc_t* gx, const acc_t* gy, int64_t H, int64_t W, double* out) {
  double p[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t h = 0; h < H; ++h) {
    const double v = base_coord<double>(h, H);
    for (int64_t w = 0; w < W; ++w) {
      const double u = base_coord<double>(w, W);
      const double a = static_cast<double>(gx[h * W + w]), c = static_cast<double>(gy[h * W + w]);
      p[0] += a * u;
      p[1] += a * v;
      p[2] += a;
      p[3] += c * u;
      p[4] += c * v;
      p[5] += c;
    }
  }
  const double sx = 0.5 * static_cast<double>(W), sy = 0.5 * static_cast<double>(H);
  for (int k = 0; k < 3; ++k) {
    out[k] = p[k] * sx;
    out[3 + k] = p[3 + k] * sy;
  }
}

// Rotation-free forward of one group of n <= kLanes channels, planes interleaved in XI (S * kLanes).
// T (W * kLanes) is scratch for the blended row. out / am point at channel c0's row of H outputs.
template <typename scalar_t, typename acc_t>
void forward_group_separable(const SeparableTables<acc_t>& sep, const acc_t* XI, int64_t H, int64_t W, int64_t n,
                             acc_t inv_w, acc_t* T, scalar_t* out, int32_t* am) {
  constexpr int64_t L = kLanes;
  using V = typename LaneVec<acc_t>::type;
  for (int64_t h = 0; h < H; ++h) {
    const auto& ry = sep.rows[h];
    const acc_t* r0 = XI + ry.i0 * W * L;
    const acc_t* r1 = XI + ry.i1 * W * L;
    for (int64_t j = 0; j < W; ++j) {
      store_lanes(T + j * L, ry.w0 * load_lanes(r0 + j * L) + ry.w1 * load_lanes(r1 + j * L));
    }
    // argmax kept as acc_t so the compare-and-select stays one vector width (w is exact in it)
    const auto& first = sep.cols[0];
    V sum = first.w0 * load_lanes(T + first.i0 * L) + first.w1 * load_lanes(T + first.i1 * L);
    V best = sum;
    V idx = splat(acc_t(0));
    for (int64_t w = 1; w < W; ++w) {
      const auto& cx = sep.cols[w];
      const V v = cx.w0 * load_lanes(T + cx.i0 * L) + cx.w1 * load_lanes(T + cx.i1 * L);
      sum += v;
      const auto gt = v > best;  // strict: the first maximum keeps its place
      best = gt ? v : best;
      idx = gt ? splat(static_cast<acc_t>(w)) : idx;
    }
    const V result = sum * inv_w + best;
    for (int64_t l = 0; l < n; ++l) {
      out[l * H + h] = static_cast<scalar_t>(result[l]);
      am[l * H + h] = static_cast<int32_t>(idx[l]);
    }
  }
}

// Rotation-free backward of one group of n <= kLanes channels (planes interleaved in XI). Writes the
// group's dx planes (interleaved, DI), and adds into the item's accumulators: ST / SD (S * kLanes) the
// per-lane sums of g t and g d, gx / gy (S) the max term's dL/dix, dL/diy. g_row / a_row point at channel
// c0's row of H gradients / argmax values. Returns false if an argmax value is out of range.
template <typename acc_t>
bool backward_group_separable(const SeparableTables<acc_t>& sep, const acc_t* colsum, const acc_t* XI, acc_t* DI,
                              int64_t H, int64_t W, int64_t n, acc_t inv_w, const acc_t* g_row, const int32_t* a_row,
                              acc_t* T, acc_t* Dd, acc_t* DB, acc_t* ST, acc_t* SD, acc_t* gx, acc_t* gy) {
  constexpr int64_t L = kLanes;
  using V = typename LaneVec<acc_t>::type;
  bool ok = true;
  for (int64_t i = 0; i < H * W * L; ++i) DI[i] = acc_t(0);
  for (int64_t h = 0; h < H; ++h) {
    acc_t g_lane[L] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t a[L] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t l = 0; l < n; ++l) {
      const int64_t al = a_row[l * H + h];
      if (al < 0 || al >= W) {
        ok = false;
        continue;
      }
      g_lane[l] = g_row[l * H + h];
      a[l] = al;
    }
    const V g = load_lanes(g_lane);
    const V g_mean = g * inv_w;
    const auto& ry = sep.rows[h];
    const acc_t* r0 = XI + ry.i0 * W * L;
    const acc_t* r1 = XI + ry.i1 * W * L;
    acc_t* st = ST + h * W * L;
    acc_t* sd = SD + h * W * L;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t i = j * L;
      const V x0 = load_lanes(r0 + i), x1 = load_lanes(r1 + i);
      const V bj = ry.w0 * x0 + ry.w1 * x1;
      const V dj = ry.valid1 * x1 - ry.valid0 * x0;
      store_lanes(T + i, bj);
      store_lanes(Dd + i, dj);
      store_lanes(st + i, load_lanes(st + i) + g * bj);
      store_lanes(sd + i, load_lanes(sd + i) + g * dj);
      store_lanes(DB + i, g_mean * colsum[j]);
    }
    // the max term: the whole g of lane l lands on the sample (h, a[l])
    for (int64_t l = 0; l < n; ++l) {
      const auto& ca = sep.cols[a[l]];
      const acc_t gl = g_lane[l];
      gx[h * W + a[l]] += gl * (ca.valid1 * T[ca.i1 * L + l] - ca.valid0 * T[ca.i0 * L + l]);
      gy[h * W + a[l]] += gl * (ca.w0 * Dd[ca.i0 * L + l] + ca.w1 * Dd[ca.i1 * L + l]);
      DB[ca.i0 * L + l] += gl * ca.w0;
      DB[ca.i1 * L + l] += gl * ca.w1;
    }
    acc_t* d0 = DI + ry.i0 * W * L;
    acc_t* d1 = DI + ry.i1 * W * L;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t i = j * L;
      const V db = load_lanes(DB + i);
      store_lanes(d0 + i, load_lanes(d0 + i) + ry.w0 * db);
    }
    for (int64_t j = 0; j < W; ++j) {
      const int64_t i = j * L;
      const V db = load_lanes(DB + i);
      store_lanes(d1 + i, load_lanes(d1 + i) + ry.w1 * db);
    }
  }
  return ok;
}

void check_x_theta(const at::Tensor& x, const at::Tensor& theta) {
  check_float(x, "x");
  check_dim(x, 4, "x", "(B, C, H, W)");
  check_dim(theta, 3, "theta", "(B, 2, 3)");
  check_shape(theta, {x.size(0), 2, 3}, "theta");
  check_dtype(theta, compute_type(x.scalar_type()), "theta",
              "the compute dtype of x: float64 for float64 x, float32 otherwise");
  check_same_device(x, "x", theta, "theta");
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_cpu(const at::Tensor& x, const at::Tensor& theta_in) {
  check_x_theta(x, theta_in);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(W <= INT32_MAX, "x: W = ", W, " does not fit the int32 argmax");
  auto theta = theta_in.contiguous();
  auto out = empty_output({B, C, H}, x.options());
  auto argmax = empty_output({B, C, H}, x.options().dtype(at::kInt));
  const int64_t tiles = num_tiles(C);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_hpool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* tp = theta.const_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int32_t* ap = argmax.data_ptr<int32_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    const acc_t inv_w = acc_t(1) / static_cast<acc_t>(W);

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(H * W), row(W), group(H * W * kLanes), blend(W * kLanes);
      BatchTables<acc_t> tables;
      const auto& sep = tables.sep;
      const auto& gen = tables.gen;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        const acc_t* t = tp + 6 * b;
        tables.prepare(b, t, H, W);
        const bool separable = tables.separable;
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        if (separable) {
          for (int64_t g0 = c0; g0 < c1; g0 += kLanes) {
            const int64_t n = std::min(kLanes, c1 - g0);
            load_group(xp + b * sb + g0 * sc, sc, sh, sw, n, H, W, group.data());
            forward_group_separable(sep, group.data(), H, W, n, inv_w, blend.data(), op + (b * C + g0) * H,
                                    ap + (b * C + g0) * H);
          }
          continue;
        }
        for (int64_t c = c0; c < c1; ++c) {
          load_plane(xp + b * sb + c * sc, sh, sw, H, W, plane.data());
          const acc_t* X = plane.data();
          scalar_t* o = op + (b * C + c) * H;
          int32_t* a = ap + (b * C + c) * H;
          for (int64_t h = 0; h < H; ++h) {
            {
              const int64_t* off = gen.off.data() + 4 * h * W;
              const acc_t* wg = gen.wgt.data() + 4 * h * W;
              for (int64_t w = 0; w < W; ++w) {
                row[w] = wg[4 * w] * X[off[4 * w]] + wg[4 * w + 1] * X[off[4 * w + 1]] +
                         wg[4 * w + 2] * X[off[4 * w + 2]] + wg[4 * w + 3] * X[off[4 * w + 3]];
              }
            }
            int64_t at;
            const acc_t best = row_max_first(row.data(), W, &at);
            acc_t sum = acc_t(0);
            for (int64_t w = 0; w < W; ++w) sum += row[w];
            o[h] = static_cast<scalar_t>(sum * inv_w + best);
            a[h] = static_cast<int32_t>(at);
          }
        }
      }
    });
  });
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                             const at::Tensor& theta_in, const at::Tensor& argmax) {
  check_x_theta(x, theta_in);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), S = H * W;
  check_float(grad_out, "grad_out");
  check_shape(grad_out, {B, C, H}, "grad_out");
  check_dtype(argmax, at::kInt, "argmax", "the int32 index output of affine_hpool");
  check_shape(argmax, {B, C, H}, "argmax");
  check_same_device(x, "x", grad_out, "grad_out");
  check_same_device(x, "x", argmax, "argmax");

  auto theta = theta_in.contiguous();
  auto am = argmax.contiguous();
  auto grad_x = empty_output({B, C, H, W}, x.options());
  auto grad_theta = at::empty({B, 2, 3}, theta.options());
  const int64_t tiles = num_tiles(C);
  std::vector<double> partial(B * tiles * 6);
  std::vector<char> bad(B * tiles, 0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_hpool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto g_acc = grad_out.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* gp = g_acc.const_data_ptr<acc_t>();
    const acc_t* tp = theta.const_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int32_t* ap = am.const_data_ptr<int32_t>();
    scalar_t* dxp = grad_x.data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    const acc_t inv_w = acc_t(1) / static_cast<acc_t>(W);

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(S), dplane(S), colsum(W);
      // interleaved group planes of x and dx, and W * kLanes scratch rows
      std::vector<acc_t> group(S * kLanes), dgroup(S * kLanes), blend(W * kLanes), diff(W * kLanes), dblend(W * kLanes);
      // Per-tile sums over channels: sum_c g t(h, :) and sum_c g d(h, :) (separable path), and the
      // per-sample dL/dix, dL/diy of the max term (separable) or of everything (general).
      std::vector<acc_t> sum_t(S), sum_d(S), lane_t(S * kLanes), lane_d(S * kLanes), gx(S), gy(S);
      BatchTables<acc_t> tables;
      const auto& sep = tables.sep;
      const auto& gen = tables.gen;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        const acc_t* t = tp + 6 * b;
        const bool rebuilt = tables.prepare(b, t, H, W);
        const bool separable = tables.separable;
        if (rebuilt && separable) {
          // column weights summed per source column: the mean's share of dblend for a unit gradient
          for (int64_t j = 0; j < W; ++j) colsum[j] = acc_t(0);
          for (int64_t w = 0; w < W; ++w) {
            colsum[sep.cols[w].i0] += sep.cols[w].w0;
            colsum[sep.cols[w].i1] += sep.cols[w].w1;
          }
        }
        std::fill(lane_t.begin(), lane_t.end(), acc_t(0));
        std::fill(lane_d.begin(), lane_d.end(), acc_t(0));
        std::fill(gx.begin(), gx.end(), acc_t(0));
        std::fill(gy.begin(), gy.end(), acc_t(0));
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        if (separable) {
          for (int64_t g0 = c0; g0 < c1; g0 += kLanes) {
            const int64_t n = std::min(kLanes, c1 - g0);
            load_group(xp + b * sb + g0 * sc, sc, sh, sw, n, H, W, group.data());
            if (!backward_group_separable(sep, colsum.data(), group.data(), dgroup.data(), H, W, n, inv_w,
                                          gp + (b * C + g0) * H, ap + (b * C + g0) * H, blend.data(), diff.data(),
                                          dblend.data(), lane_t.data(), lane_d.data(), gx.data(), gy.data())) {
              bad[item] = 1;
            }
            store_group(dgroup.data(), n, S, dxp + (b * C + g0) * S, S);
          }
          // lanes summed in lane order: sum over the tile's channels of g t and g d
          for (int64_t i = 0; i < S; ++i) {
            acc_t st = acc_t(0), sd = acc_t(0);
            for (int64_t l = 0; l < kLanes; ++l) {
              st += lane_t[i * kLanes + l];
              sd += lane_d[i * kLanes + l];
            }
            sum_t[i] = st;
            sum_d[i] = sd;
          }
        } else {
          for (int64_t c = c0; c < c1; ++c) {
            load_plane(xp + b * sb + c * sc, sh, sw, H, W, plane.data());
            const acc_t* X = plane.data();
            acc_t* D = dplane.data();
            std::fill(dplane.begin(), dplane.end(), acc_t(0));
            const acc_t* g_row = gp + (b * C + c) * H;
            const int32_t* a_row = ap + (b * C + c) * H;
            for (int64_t h = 0; h < H; ++h) {
              const acc_t g = g_row[h];
              const int64_t a = a_row[h];
              if (a < 0 || a >= W) {
                bad[item] = 1;
                continue;
              }
              {
                const int64_t* off = gen.off.data() + 4 * h * W;
                const acc_t* wg = gen.wgt.data() + 4 * h * W;
                const acc_t* mk = gen.mask.data() + 4 * h * W;
                const acc_t* wxs = gen.wx.data() + 2 * h * W;
                const acc_t* wys = gen.wy.data() + 2 * h * W;
                const acc_t g_mean = g * inv_w;
                for (int64_t w = 0; w < W; ++w) {
                  const acc_t dr = w == a ? g_mean + g : g_mean;
                  const int64_t* o = off + 4 * w;
                  const acc_t* q = wg + 4 * w;
                  const acc_t* m = mk + 4 * w;
                  D[o[0]] += q[0] * dr;
                  D[o[1]] += q[1] * dr;
                  D[o[2]] += q[2] * dr;
                  D[o[3]] += q[3] * dr;
                  const acc_t v00 = m[0] * X[o[0]], v01 = m[1] * X[o[1]], v10 = m[2] * X[o[2]], v11 = m[3] * X[o[3]];
                  const acc_t dix = wys[2 * w] * (v01 - v00) + wys[2 * w + 1] * (v11 - v10);
                  const acc_t diy = wxs[2 * w] * (v10 - v00) + wxs[2 * w + 1] * (v11 - v01);
                  gx[h * W + w] += dr * dix;
                  gy[h * W + w] += dr * diy;
                }
              }
            }
            store_row(D, S, dxp + (b * C + c) * S);
          }
        }
        if (separable) {
          // the mean term of every channel at once: (1/W) times the column taps' derivative of sum_c g t
          // (for dL/dix) and the column taps of sum_c g d (for dL/diy)
          for (int64_t h = 0; h < H; ++h) {
            const acc_t* st = sum_t.data() + h * W;
            const acc_t* sd = sum_d.data() + h * W;
            for (int64_t w = 0; w < W; ++w) {
              const auto& cx = sep.cols[w];
              gx[h * W + w] += inv_w * (cx.valid1 * st[cx.i1] - cx.valid0 * st[cx.i0]);
              gy[h * W + w] += inv_w * (cx.raw0 * cx.valid0 * sd[cx.i0] + cx.raw1 * cx.valid1 * sd[cx.i1]);
            }
          }
        }
        theta_partial(gx.data(), gy.data(), H, W, partial.data() + item * 6);
      }
    });

    constexpr int kSlot[6] = {0, 1, 2, 3, 4, 5};
    theta_from_partials(partial, B, tiles, kSlot, grad_theta.data_ptr<acc_t>());
  });
  check_argmax_flags(bad, W, "affine_hpool");
  return {grad_x, grad_theta};
}

}  // namespace
}  // namespace cpu
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CPU, m) {
  m.impl("affine_hpool", &scstn_vcn::cpu::affine_hpool_cpu);
  m.impl("affine_hpool_backward", &scstn_vcn::cpu::affine_hpool_backward_cpu);
}
