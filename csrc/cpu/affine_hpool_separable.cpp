// affine_hpool_separable on the CPU: affine_hpool for a theta without rotation or shear. theta[0][1] and
// theta[1][0] are not read (taken as 0); their gradient is 0.
//
// With t01 = t10 = 0 the bilinear sampling factorises. Per batch element, output column w samples the
// source column ix_w = ((t00 u_w + t02 + 1) W - 1) / 2 and output row h the source row
// iy_h = ((t11 v_h + t12 + 1) H - 1) / 2 (u_w = (2w + 1) / W - 1, v_h = (2h + 1) / H - 1), and per channel
//   r = A_y X A_x^T,
// A_y (H x H) and A_x (W x W) holding in row h / w the two bilinear weights of floor(iy_h) + {0, 1} /
// floor(ix_w) + {0, 1} (a neighbour outside the map gets weight 0).
// Forward:  out[h] = (1/W) sum_w r[h, w] + max_w r[h, w];  argmax[h] = the w of the FIRST max of the row.
//           Computed as T = A_y X (a blend of two rows), then two taps of T per output column.
// Backward, g = dL/dout, a = argmax, dR[h, w] = g[h] (1/W + [w == a[h]]):
//   dX = A_y^T dR A_x = (q / W) colsum^T + the max term's four bilinear weights at (h, a[h]), with
//        q = A_y^T g (H) and colsum = A_x^T 1 (W): the mean term is an outer product.
//   dL/dix_w = sum_{c,h} dR[h, w] (v1 T[h, x1_w] - v0 T[h, x0_w])      (v = 1 inside the map, 0 outside)
//   dL/diy_h = sum_{c,w} dR[h, w] (v1 S[y1_h, w] - v0 S[y0_h, w]),   S = X A_x^T
//   dtheta00 = (W/2) sum_w u_w dL/dix_w,  dtheta02 = (W/2) sum_w dL/dix_w,
//   dtheta11 = (H/2) sum_h v_h dL/diy_h,  dtheta12 = (H/2) sum_h dL/diy_h.
//   The mean term's share of these sums needs, per channel, only three weighted row sums of X (W wide):
//   sum_h g T[h, :] = q^T X, and p^T X for p = D_y^T (g v) and D_y^T g (D_y: row h holds -v0 at y0_h and
//   v1 at y1_h), since sum_w S[y, w] = (X colsum)[y]. They are summed over the item's channels and the
//   column taps / colsum applied once per item. The max term adds four gathered values per (c, h).
// Vectorisation: every channel of an image shares the taps, so the forward and the backward's row-side
// vectors (q, p) process kLanes channels side by side, one per vector lane; the rest of the backward
// runs along the W columns of one channel (in registers for W = 8, 16 with AVX2). The outputs come from
// empty_output (output_cache.h): memory reused from call to call, so no call pays fresh page faults.
// Work items are (b, tile of kChannelTile channels), as in the other CPU kernels: each item writes its own
// dx planes and four partial sums of dtheta, added in tile order afterwards -- deterministic whatever the
// thread count.

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/bilinear_taps.h"
#include "cpu/cpu_utils.h"
#include "cpu/output_cache.h"

#include <torch/library.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace scstn_vcn {
namespace cpu {
namespace {

// The factors A_y (rows) and A_x (cols) of one batch element with theta t (row-major 2 x 3).
template <typename acc_t>
struct Factors {
  std::vector<Taps<acc_t>> rows, cols;
  std::vector<acc_t> colsum;  // colsum[x] = sum_w A_x[w, x]
  std::vector<acc_t> u, v;    // the output pixels' normalised coordinates u_w, v_h (no division per use)
  int64_t of = -1;            // the batch element they were built for

  void build(int64_t b, const acc_t* t, int64_t H, int64_t W) {
    if (of == b) return;
    of = b;
    rows.resize(H);
    cols.resize(W);
    colsum.assign(W, acc_t(0));
    u.resize(W);
    v.resize(H);
    for (int64_t w = 0; w < W; ++w) {
      u[w] = base_coord<acc_t>(w, W);
      cols[w] = make_taps(unnormalise(t[0] * u[w] + t[2], W), W);
      colsum[cols[w].i0] += cols[w].w0;
      colsum[cols[w].i1] += cols[w].w1;
    }
    for (int64_t h = 0; h < H; ++h) {
      v[h] = base_coord<acc_t>(h, H);
      rows[h] = make_taps(unnormalise(t[4] * v[h] + t[5], H), H);
    }
  }
};

#if defined(__AVX2__)
// dst[s * 8 + l] = src[l * sc + s] for 8 float32 planes of S = 8 m dense values each: 8 x 8 blocks
// transposed in registers, where the generic load_group moves one value at a time.
inline void load_group8_dense_avx2(const float* src, int64_t sc, int64_t S, float* dst) {
  for (int64_t s = 0; s < S; s += 8) {
    __m256 r[8], t[8], u[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src + l * sc + s);
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {
      u[4 * k + 0] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(3, 2, 3, 2));
      u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(dst + (s + k) * 8, _mm256_permute2f128_ps(u[k], u[4 + k], 0x20));
      _mm256_storeu_ps(dst + (s + 4 + k) * 8, _mm256_permute2f128_ps(u[k], u[4 + k], 0x31));
    }
  }
}
constexpr bool kHaveAvx2 = true;
#else
inline void load_group8_dense_avx2(const float*, int64_t, int64_t, float*) {}
constexpr bool kHaveAvx2 = false;
#endif

// n <= kLanes channel planes starting at src (channel stride sc, strides sh, sw) interleaved into XI.
template <typename scalar_t, typename acc_t>
void load_channels(const scalar_t* src, int64_t sc, int64_t sh, int64_t sw, int64_t n, int64_t H, int64_t W,
                   acc_t* XI) {
  if constexpr (std::is_same_v<scalar_t, float> && kHaveAvx2) {
    if (n == kLanes && sw == 1 && sh == W && (H * W) % 8 == 0) {
      load_group8_dense_avx2(src, sc, H * W, XI);
      return;
    }
  }
  load_group(src, sc, sh, sw, n, H, W, XI);
}

// Forward of one group of channels interleaved in XI (H W kLanes): per row h, T = the blend of two
// source rows (W kLanes), then per output column two taps of T, summed and max-scanned. res / idx
// (H kLanes) receive out and argmax per lane.
template <typename acc_t>
void forward_group(const Factors<acc_t>& f, const acc_t* XI, int64_t H, int64_t W, acc_t inv_w, acc_t* T, acc_t* res,
                   acc_t* idx) {
  constexpr int64_t L = kLanes;
  using V = typename LaneVec<acc_t>::type;
  for (int64_t h = 0; h < H; ++h) {
    const Taps<acc_t>& ry = f.rows[h];
    const acc_t* r0 = XI + ry.i0 * W * L;
    const acc_t* r1 = XI + ry.i1 * W * L;
    for (int64_t j = 0; j < W * L; j += L) store_lanes(T + j, ry.w0 * load_lanes(r0 + j) + ry.w1 * load_lanes(r1 + j));
    const Taps<acc_t>& c0 = f.cols[0];
    V sum = c0.w0 * load_lanes(T + c0.i0 * L) + c0.w1 * load_lanes(T + c0.i1 * L);
    V best = sum;
    V at = splat(acc_t(0));  // w is exact in acc_t; keeps the select one vector width
    for (int64_t w = 1; w < W; ++w) {
      const Taps<acc_t>& cx = f.cols[w];
      const V v = cx.w0 * load_lanes(T + cx.i0 * L) + cx.w1 * load_lanes(T + cx.i1 * L);
      sum += v;
      const auto gt = v > best;  // strict: an equal later value leaves the first maximum in place
      best = gt ? v : best;
      at = gt ? splat(static_cast<acc_t>(w)) : at;
    }
    store_lanes(res + h * L, sum * inv_w + best);
    store_lanes(idx + h * L, at);
  }
}

// The row-side vectors of the backward for a group of n <= kLanes channels side by side (lane l =
// channel l of the group): q = A_y^T g, p11 = D_y^T (g v), p12 = D_y^T g (see the header), each H kLanes,
// lane-interleaved in QP (3 H kLanes). g_rows: channel 0's H gradients, channel l's at + l H. Every row h
// updates all lanes with one vector operation; GS (H kLanes) and the six partial arrays PS (6 H kLanes)
// are scratch. The lower-tap (y0_h) and upper-tap (y0_h + 1) parts are gathered apart, so that
// consecutive rows do not update the same entry one after the other.
template <typename acc_t>
void backward_rows(const Factors<acc_t>& f, const acc_t* g_rows, int64_t n, int64_t H, acc_t* GS, acc_t* PS,
                   acc_t* QP) {
  constexpr int64_t L = kLanes;
  using V = typename LaneVec<acc_t>::type;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t l = 0; l < L; ++l) GS[h * L + l] = l < n ? g_rows[l * H + h] : acc_t(0);
  }
  std::fill(PS, PS + 6 * H * L, acc_t(0));
  acc_t* q0 = PS;
  acc_t* q1 = PS + H * L;
  acc_t* a0 = PS + 2 * H * L;
  acc_t* a1 = PS + 3 * H * L;
  acc_t* b0 = PS + 4 * H * L;
  acc_t* b1 = PS + 5 * H * L;
  for (int64_t h = 0; h < H; ++h) {
    const Taps<acc_t>& r = f.rows[h];
    const V g = load_lanes(GS + h * L);
    const V gv = g * f.v[h];
    const int64_t i0 = r.i0 * L, i1 = r.i1 * L;
    store_lanes(q0 + i0, load_lanes(q0 + i0) + r.w0 * g);
    store_lanes(q1 + i1, load_lanes(q1 + i1) + r.w1 * g);
    store_lanes(a0 + i0, load_lanes(a0 + i0) - r.valid0 * gv);
    store_lanes(a1 + i1, load_lanes(a1 + i1) + r.valid1 * gv);
    store_lanes(b0 + i0, load_lanes(b0 + i0) - r.valid0 * g);
    store_lanes(b1 + i1, load_lanes(b1 + i1) + r.valid1 * g);
  }
  for (int64_t i = 0; i < H * L; i += L) {
    store_lanes(QP + i, load_lanes(q0 + i) + load_lanes(q1 + i));
    store_lanes(QP + H * L + i, load_lanes(a0 + i) + load_lanes(a1 + i));
    store_lanes(QP + 2 * H * L + i, load_lanes(b0 + i) + load_lanes(b1 + i));
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// The mean term's row loop of backward_channel (below) for float32 and W = 8 NV: the three W-wide sums
// stay in registers over all H rows, each row is NV loads, 3 NV FMAs and NV stores.
template <int NV>
void mean_term_rows_avx2(const float* X, const float* qp, int64_t H, float inv_w, const float* colsum, float* Aq,
                         float* A11, float* A12, float* D) {
  constexpr int64_t L = kLanes, W = 8 * NV;
  __m256 aq[NV], a11[NV], a12[NV], cs[NV];
  for (int v = 0; v < NV; ++v) {
    aq[v] = _mm256_loadu_ps(Aq + 8 * v);
    a11[v] = _mm256_loadu_ps(A11 + 8 * v);
    a12[v] = _mm256_loadu_ps(A12 + 8 * v);
    cs[v] = _mm256_loadu_ps(colsum + 8 * v);
  }
  for (int64_t y = 0; y < H; ++y) {
    const __m256 qy = _mm256_set1_ps(qp[y * L]), ay = _mm256_set1_ps(qp[(H + y) * L]);
    const __m256 by = _mm256_set1_ps(qp[(2 * H + y) * L]), sy = _mm256_set1_ps(qp[y * L] * inv_w);
    for (int v = 0; v < NV; ++v) {
      const __m256 r = _mm256_loadu_ps(X + y * W + 8 * v);
      aq[v] = _mm256_fmadd_ps(qy, r, aq[v]);
      a11[v] = _mm256_fmadd_ps(ay, r, a11[v]);
      a12[v] = _mm256_fmadd_ps(by, r, a12[v]);
      _mm256_storeu_ps(D + y * W + 8 * v, _mm256_mul_ps(sy, cs[v]));
    }
  }
  for (int v = 0; v < NV; ++v) {
    _mm256_storeu_ps(Aq + 8 * v, aq[v]);
    _mm256_storeu_ps(A11 + 8 * v, a11[v]);
    _mm256_storeu_ps(A12 + 8 * v, a12[v]);
  }
}
#endif

// mean_term_rows_avx2 where it applies (float32 compute, W = 8 or 16, an AVX2 + FMA build); false when
// the caller has to run the generic loop.
template <typename acc_t>
bool mean_term_rows_fast(const acc_t* X, const acc_t* qp, int64_t H, int64_t W, acc_t inv_w, const acc_t* colsum,
                         acc_t* Aq, acc_t* A11, acc_t* A12, acc_t* D) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (W == 8) {
      mean_term_rows_avx2<1>(X, qp, H, inv_w, colsum, Aq, A11, A12, D);
      return true;
    }
    if (W == 16) {
      mean_term_rows_avx2<2>(X, qp, H, inv_w, colsum, Aq, A11, A12, D);
      return true;
    }
  }
#else
  (void)X, (void)qp, (void)H, (void)W, (void)inv_w, (void)colsum, (void)Aq, (void)A11, (void)A12, (void)D;
#endif
  return false;
}

// Backward of one channel. X: its dense (H, W) plane; g, a: its H upstream gradients and argmax columns;
// qp: its q, p11, p12 (from backward_rows: entry y of q at qp[y kLanes], of p11 and p12 H kLanes and
// 2 H kLanes further); D: its dense dx plane (written). Adds q^T X, p11^T X, p12^T X into Aq, A11, A12
// (W each; the mean term, see the header) and the max term's sums for dtheta00, 02, 11, 12 (without the
// W/2, H/2 factors) into th. Returns false if an argmax value is outside [0, W) (that row is skipped).
template <typename acc_t>
bool backward_channel(const Factors<acc_t>& f, const acc_t* __restrict X, const acc_t* __restrict g,
                      const int32_t* __restrict a, const acc_t* __restrict qp, int64_t H, int64_t W, acc_t inv_w,
                      acc_t* __restrict Aq, acc_t* __restrict A11, acc_t* __restrict A12, acc_t* __restrict th,
                      acc_t* __restrict D) {
  constexpr int64_t L = kLanes;
  const acc_t* __restrict colsum = f.colsum.data();
  if (!mean_term_rows_fast(X, qp, H, W, inv_w, colsum, Aq, A11, A12, D)) {
    for (int64_t y = 0; y < H; ++y) {
      const acc_t* __restrict row = X + y * W;
      acc_t* __restrict drow = D + y * W;
      const acc_t qy = qp[y * L], ay = qp[(H + y) * L], by = qp[(2 * H + y) * L], sy = qy * inv_w;
      for (int64_t x = 0; x < W; ++x) {
        Aq[x] += qy * row[x];
        A11[x] += ay * row[x];
        A12[x] += by * row[x];
        drow[x] = sy * colsum[x];
      }
    }
  }
  bool ok = true;
  acc_t t00 = 0, t02 = 0, t11 = 0, t12 = 0;  // kept in registers; added into th once per channel
  for (int64_t h = 0; h < H; ++h) {
    const int64_t at = a[h];
    if (at < 0 || at >= W) {
      ok = false;
      continue;
    }
    const Taps<acc_t>& r = f.rows[h];
    const Taps<acc_t>& c = f.cols[at];
    const int64_t o00 = r.i0 * W + c.i0, o01 = r.i0 * W + c.i1, o10 = r.i1 * W + c.i0, o11 = r.i1 * W + c.i1;
    const acc_t m00 = r.valid0 * c.valid0 * X[o00], m01 = r.valid0 * c.valid1 * X[o01];
    const acc_t m10 = r.valid1 * c.valid0 * X[o10], m11 = r.valid1 * c.valid1 * X[o11];
    const acc_t gh = g[h];
    const acc_t gdix = gh * (r.raw0 * (m01 - m00) + r.raw1 * (m11 - m10));
    const acc_t gdiy = gh * (c.raw0 * (m10 - m00) + c.raw1 * (m11 - m01));
    t00 += gdix * f.u[at];
    t02 += gdix;
    t11 += gdiy * f.v[h];
    t12 += gdiy;
    const acc_t g0 = gh * r.w0, g1 = gh * r.w1;
    D[o00] += g0 * c.w0;
    D[o01] += g0 * c.w1;
    D[o10] += g1 * c.w0;
    D[o11] += g1 * c.w1;
  }
  th[0] += t00;
  th[1] += t02;
  th[2] += t11;
  th[3] += t12;
  return ok;
}

// The item's four dtheta partials (00, 02, 11, 12) from its mean-term vectors and max-term sums.
template <typename acc_t>
void item_partials(const Factors<acc_t>& f, const acc_t* Aq, const acc_t* A11, const acc_t* A12, const acc_t* th,
                   int64_t H, int64_t W, double* out) {
  double s00 = 0, s02 = 0, s11 = 0, s12 = 0;
  for (int64_t w = 0; w < W; ++w) {
    const Taps<acc_t>& c = f.cols[w];
    const double d = static_cast<double>(c.valid1 * Aq[c.i1]) - static_cast<double>(c.valid0 * Aq[c.i0]);
    s00 += d * base_coord<double>(w, W);
    s02 += d;
  }
  for (int64_t x = 0; x < W; ++x) {
    s11 += static_cast<double>(f.colsum[x]) * static_cast<double>(A11[x]);
    s12 += static_cast<double>(f.colsum[x]) * static_cast<double>(A12[x]);
  }
  const double hw = 0.5 * static_cast<double>(W), hh = 0.5 * static_cast<double>(H);
  const double inv_w = 1.0 / static_cast<double>(W);
  // mean term: dR = g / W, so its sums carry 1/W; (W/2) (1/W) = 1/2 for the x factors
  out[0] = hw * static_cast<double>(th[0]) + 0.5 * s00;
  out[1] = hw * static_cast<double>(th[1]) + 0.5 * s02;
  out[2] = hh * static_cast<double>(th[2]) + hh * inv_w * s11;
  out[3] = hh * static_cast<double>(th[3]) + hh * inv_w * s12;
}

void check_x_theta(const at::Tensor& x, const at::Tensor& theta) {
  check_float(x, "x");
  check_dim(x, 4, "x", "(B, C, H, W)");
  check_dim(theta, 3, "theta", "(B, 2, 3)");
  check_shape(theta, {x.size(0), 2, 3}, "theta");
  check_dtype(theta, compute_type(x.scalar_type()), "theta",
              "the compute dtype of x: float64 for float64 x, float32 otherwise");
  check_same_device(x, "x", theta, "theta");
  TORCH_CHECK(x.size(3) <= INT32_MAX, "x: W = ", x.size(3), " does not fit the int32 argmax");
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_separable_cpu(const at::Tensor& x, const at::Tensor& theta_in) {
  check_x_theta(x, theta_in);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto theta = theta_in.contiguous();
  auto out = empty_output({B, C, H}, x.options());
  auto argmax = empty_output({B, C, H}, x.options().dtype(at::kInt));
  const int64_t tiles = num_tiles(C);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_hpool_separable_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* tp = theta.const_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int32_t* ap = argmax.data_ptr<int32_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    const acc_t inv_w = acc_t(1) / static_cast<acc_t>(W);

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> group(H * W * kLanes), blend(W * kLanes), res(H * kLanes), idx(H * kLanes);
      Factors<acc_t> f;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        f.build(b, tp + 6 * b, H, W);
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        for (int64_t g0 = c0; g0 < c1; g0 += kLanes) {
          const int64_t n = std::min(kLanes, c1 - g0);
          load_channels(xp + b * sb + g0 * sc, sc, sh, sw, n, H, W, group.data());
          forward_group(f, group.data(), H, W, inv_w, blend.data(), res.data(), idx.data());
          for (int64_t l = 0; l < n; ++l) {
            scalar_t* o = op + (b * C + g0 + l) * H;
            int32_t* am = ap + (b * C + g0 + l) * H;
            for (int64_t h = 0; h < H; ++h) {
              o[h] = static_cast<scalar_t>(res[h * kLanes + l]);
              am[h] = static_cast<int32_t>(idx[h * kLanes + l]);
            }
          }
        }
      }
    });
  });
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> affine_hpool_separable_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                       const at::Tensor& theta_in,
                                                                       const at::Tensor& argmax) {
  check_x_theta(x, theta_in);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), S = H * W;
  check_float(grad_out, "grad_out");
  check_shape(grad_out, {B, C, H}, "grad_out");
  check_dtype(argmax, at::kInt, "argmax", "the int32 index output of affine_hpool_separable");
  check_shape(argmax, {B, C, H}, "argmax");
  check_same_device(x, "x", grad_out, "grad_out");
  check_same_device(x, "x", argmax, "argmax");

  auto theta = theta_in.contiguous();
  auto am = argmax.contiguous();
  auto grad_x = empty_output({B, C, H, W}, x.options());
  auto grad_theta = at::zeros({B, 2, 3}, theta.options());
  const int64_t tiles = num_tiles(C);
  std::vector<double> partial(B * tiles * 4);
  std::vector<char> bad(B * tiles, 0);

  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "affine_hpool_separable_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto g_acc = grad_out.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* gp = g_acc.const_data_ptr<acc_t>();
    const acc_t* tp = theta.const_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int32_t* ap = am.const_data_ptr<int32_t>();
    scalar_t* dxp = grad_x.data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    const acc_t inv_w = acc_t(1) / static_cast<acc_t>(W);
    // float32/float64: x's planes are read and dx's written in place when dense; else via buffers
    constexpr bool same_type = std::is_same_v<scalar_t, acc_t>;
    const bool read_in_place = same_type && sw == 1 && sh == W;

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(S), dplane(S), vecs(3 * W);
      std::vector<acc_t> gs(H * kLanes), ps(6 * H * kLanes), qp(3 * H * kLanes);
      Factors<acc_t> f;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles;
        f.build(b, tp + 6 * b, H, W);
        std::fill(vecs.begin(), vecs.end(), acc_t(0));
        acc_t th[4] = {0, 0, 0, 0};
        const int64_t c0 = tile * kChannelTile, c1 = std::min(C, c0 + kChannelTile);
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t lane = (c - c0) % kLanes;
          if (lane == 0) {  // the next group of up to kLanes channels: its q, p11, p12 side by side
            backward_rows(f, gp + (b * C + c) * H, std::min(kLanes, c1 - c), H, gs.data(), ps.data(), qp.data());
          }
          const scalar_t* src = xp + b * sb + c * sc;
          const acc_t* X;
          if (read_in_place) {
            X = reinterpret_cast<const acc_t*>(src);
          } else {
            load_plane(src, sh, sw, H, W, plane.data());
            X = plane.data();
          }
          scalar_t* dst = dxp + (b * C + c) * S;
          acc_t* D = same_type ? reinterpret_cast<acc_t*>(dst) : dplane.data();
          if (!backward_channel(f, X, gp + (b * C + c) * H, ap + (b * C + c) * H, qp.data() + lane, H, W, inv_w,
                                vecs.data(), vecs.data() + W, vecs.data() + 2 * W, th, D)) {
            bad[item] = 1;
          }
          if (!same_type) store_row(D, S, dst);
        }
        item_partials(f, vecs.data(), vecs.data() + W, vecs.data() + 2 * W, th, H, W, partial.data() + item * 4);
      }
    });

    constexpr int kSlot[4] = {0, 2, 4, 5};  // of [00, 01, 02, 10, 11, 12]; 01 and 10 stay 0
    theta_from_partials(partial, B, tiles, kSlot, grad_theta.data_ptr<acc_t>());
  });
  check_argmax_flags(bad, W, "affine_hpool_separable");
  return {grad_x, grad_theta};
}

}  // namespace
}  // namespace cpu
}  // namespace scstn_vcn

TORCH_LIBRARY_IMPL(scstn_vcn, CPU, m) {
  m.impl("affine_hpool_separable", &scstn_vcn::cpu::affine_hpool_separable_cpu);
  m.impl("affine_hpool_separable_backward", &scstn_vcn::cpu::affine_hpool_separable_backward_cpu);
}
