// Bilinear sampling along one axis, as F.affine_grid + F.grid_sample(bilinear, zeros, align_corners=False)
// see it: shared by the CPU affine_hpool kernels (general and separable), which must sample identically.
#pragma once

#include <cmath>
#include <cstdint>

namespace scstn_vcn {
namespace cpu {

// The two neighbours of one sample along one axis and their bilinear weights.
template <typename acc_t>
struct Taps {
  int64_t i0, i1;        // floor(coord) + {0, 1}, clamped into the map so that reads stay in bounds
  acc_t w0, w1;          // weights, 0 for a neighbour outside the map (it contributes value 0)
  acc_t raw0, raw1;      // the weights unmasked: the derivative along the other axis uses them
  acc_t valid0, valid1;  // 1 inside the map, 0 outside (the derivative's X = 0 outside)
};

template <typename acc_t>
inline Taps<acc_t> make_taps(acc_t coord, int64_t size) {
  const acc_t fl = std::floor(coord);
  const acc_t w1 = coord - fl, w0 = acc_t(1) - w1;
  // Far-outside coordinates: clamp before converting so the integer conversion is defined.
  const acc_t lim = static_cast<acc_t>(size + 2);
  const int64_t n0 = static_cast<int64_t>(fl < -lim ? -lim : (fl > lim ? lim : fl));
  const int64_t n1 = n0 + 1;
  const bool in0 = n0 >= 0 && n0 < size, in1 = n1 >= 0 && n1 < size;
  Taps<acc_t> t;
  t.i0 = in0 ? n0 : 0;
  t.i1 = in1 ? n1 : 0;
  t.valid0 = in0 ? acc_t(1) : acc_t(0);
  t.valid1 = in1 ? acc_t(1) : acc_t(0);
  t.raw0 = w0;
  t.raw1 = w1;
  t.w0 = in0 ? w0 : acc_t(0);
  t.w1 = in1 ? w1 : acc_t(0);
  return t;
}

// Normalised output coordinate of pixel i along an axis of `size` pixels (affine_grid, align_corners=False).
template <typename acc_t>
inline acc_t base_coord(int64_t i, int64_t size) {
  return static_cast<acc_t>(2 * i + 1) / static_cast<acc_t>(size) - acc_t(1);
}

// Pixel coordinate sampled for a normalised grid coordinate (grid_sample's unnormalise, align_corners=False).
template <typename acc_t>
inline acc_t unnormalise(acc_t g, int64_t size) {
  return ((g + acc_t(1)) * static_cast<acc_t>(size) - acc_t(1)) / acc_t(2);
}

}  // namespace cpu
}  // namespace scstn_vcn
