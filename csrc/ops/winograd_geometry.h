// Tiling of the Winograd F(2x2, 3x3) convolution (ops/winograd.cpp), shared by the CPU kernels; the same
// numbering is spelled out in Python in resnest_fast/ops/winograd.py (the reference).
//
// A 3x3 convolution with dilation d, stride 1 and zero padding d is d*d independent undilated 3x3 convolutions,
// one per phase (p, q) = (h mod d, w mod d) of the output. Each phase's output grid is cut into 2x2 tiles; a tile
// reads a 4x4 patch of its phase's input (rows 2t-1 .. 2t+2 of the phase, i.e. image rows (2t-1+r)*d + p).
// Rows per phase are rounded up to an even count, Hs = 2*ceil(H / 2d), so every phase has th = Hs/2 tile rows;
// tiles that reach past the image read zeros and drop the outputs that fall outside.
// Tile numbering (the P axis of the transforms): ((b*d + p)*d + q)*th*tw + t*tw + s.
// Maths: V = B^T d B (4x4 per channel), M = sum_c V U (U = G g G^T, the weight transform, done in Python), and
// Y = A^T M A (2x2), with
//   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],  A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace resnest_fast {

struct WinogradTile {
  int64_t b, p, q, t, s, d;
  int64_t in_row(int r) const { return (2 * t + r - 1) * d + p; }
  int64_t in_col(int c) const { return (2 * s + c - 1) * d + q; }
  int64_t out_row(int u) const { return (2 * t + u) * d + p; }
  int64_t out_col(int v) const { return (2 * s + v) * d + q; }
};

struct WinogradGeometry {
  int64_t B, H, W, d, th, tw;
  int64_t tiles() const { return B * d * d * th * tw; }
  WinogradTile tile(int64_t i) const {
    const int64_t s = i % tw, t = (i / tw) % th, q = (i / (tw * th)) % d, p = (i / (tw * th * d)) % d,
                  b = i / (tw * th * d * d);
    return {b, p, q, t, s, d};
  }
};

inline WinogradGeometry winograd_geometry(int64_t B, int64_t H, int64_t W, int64_t d) {
  return {B, H, W, d, (H + 2 * d - 1) / (2 * d), (W + 2 * d - 1) / (2 * d)};
}

// One column of B^T d: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
inline void winograd_bt_column(float d0, float d1, float d2, float d3, float& o0, float& o1, float& o2, float& o3) {
  o0 = d0 - d2;
  o1 = d1 + d2;
  o2 = d2 - d1;
  o3 = d1 - d3;
}

// One column of A^T m: (m0 + m1 + m2, m1 - m2 - m3).
inline void winograd_at_column(float m0, float m1, float m2, float m3, float& o0, float& o1) {
  o0 = m0 + m1 + m2;
  o1 = m1 - m2 - m3;
}

inline void check_winograd_conv3x3(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& other, int64_t dilation, int64_t groups) {
  const char* op = "resnest_fast: winograd_conv3x3: ";
  TORCH_CHECK(x.dim() == 4, op, "x must be 4-D (B, C, H, W), got ", x.dim(), "-D of shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, "x must be float32, got ", x.scalar_type());
  TORCH_CHECK(dilation >= 1, op, "dilation must be >= 1, got ", dilation);
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0, op, "groups (", groups, ") must be >= 1 and divide x.shape[1] (",
              x.size(1), ")");
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16 * groups && u.size(1) == x.size(1) / groups &&
                  u.scalar_type() == at::kFloat && u.device() == x.device(),
              op, "u must be the float32 weight transform of shape (16*groups, C/groups, K/groups) = (", 16 * groups,
              ", ", x.size(1) / groups, ", K/groups) on ", x.device(), ", got ", u.scalar_type(), " ", u.sizes(),
              " on ", u.device());
  const int64_t K = groups * u.size(2);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == K && bias->scalar_type() == at::kFloat &&
                    bias->device() == x.device(),
                op, "bias must be a float32 tensor of shape (", K, ",) on ", x.device(), ", got ",
                bias->scalar_type(), " ", bias->sizes(), " on ", bias->device());
  }
  if (other.has_value()) {
    TORCH_CHECK(other->dim() == 4 && other->size(0) == x.size(0) && other->size(1) == K &&
                    other->size(2) == x.size(2) && other->size(3) == x.size(3) &&
                    other->scalar_type() == at::kFloat && other->device() == x.device(),
                op, "other must be a float32 tensor of shape (", x.size(0), ", ", K, ", ", x.size(2), ", ", x.size(3),
                ") on ", x.device(), ", got ", other->scalar_type(), " ", other->sizes(), " on ", other->device());
  }
}

}  // namespace resnest_fast
