// CPU kernel of the Winograd F(2x2, 3x3) convolution (schema: ops/winograd.cpp; tiling: ops/winograd_geometry.h).
//
// The tiles are processed in blocks sized so that a block's transformed input V (16 values per tile and input
// channel) and GEMM result M (16 per tile and output channel) stay in cache and are reused from block to block:
// for the full image they are 4x the input and output (tens of MB for a 2560-channel map), and a fresh buffer of
// that size costs more in page faults than the transforms themselves. Per block: the input transform reads
// every 4x4 tile straight from the channels_last input (padding, dilation phases and the ragged border read as
// zeros, never materialised) into V; at::bmm_out does the 16*groups GEMMs M = V U (MKL); the output transform
// reads M, applies A^T m A, bias, residual and ReLU and writes the 2x2 outputs of each tile in place in the
// channels_last output. Transform loops run over contiguous channels (`omp simd`), tiles are split over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/cpu/cpu_utils.h"
#include "ops/winograd_geometry.h"

namespace resnest_fast {
namespace {

// Tiles per block: V and M of a block within kBlockBytes each, so they stay in cache, but at least kMinBlock tiles,
// because every block runs the 16 GEMMs again and MKL re-reads (and repacks) the whole transformed weight U each
// time, which is tens of MB for the wide convs (84 MB for the ASPP bottleneck's 2560 -> 512 channels).
constexpr int64_t kBlockBytes = int64_t(4) << 20;
constexpr int64_t kMinBlock = 256;

int64_t tiles_per_block(int64_t tiles, int64_t channels) {
  const int64_t block = kBlockBytes / (16 * int64_t(sizeof(float)) * std::max<int64_t>(1, channels));
  return std::min(tiles, std::max(kMinBlock, block));
}

// V[grp][k][i][c] for the tiles first .. first + n - 1 (i = tile - first); V is (groups, 16, n, Cg).
void input_transform(const WinogradGeometry& g, const float* x, int64_t C, int64_t groups, int64_t first, int64_t n,
                     const float* zeros, float* v) {
  const int64_t Cg = C / groups, H = g.H, W = g.W;
  parallel_items(0, n, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    const float* src[4][4];
    for (int64_t i = begin; i < end; ++i) {
      const WinogradTile t = g.tile(first + i);
      for (int r = 0; r < 4; ++r) {
        const int64_t h = t.in_row(r);
        for (int s = 0; s < 4; ++s) {
          const int64_t w = t.in_col(s);
          src[r][s] = (h >= 0 && h < H && w >= 0 && w < W) ? x + ((t.b * H + h) * W + w) * C : zeros;
        }
      }
      for (int64_t grp = 0; grp < groups; ++grp) {
        const int64_t c0 = grp * Cg;
        float* out = v + (grp * 16 * n + i) * Cg;
#pragma omp simd
        for (int64_t c = 0; c < Cg; ++c) {
          float d[4][4], e[4][4];
          for (int r = 0; r < 4; ++r)
            for (int s = 0; s < 4; ++s) d[r][s] = src[r][s][c0 + c];
          for (int s = 0; s < 4; ++s)
            winograd_bt_column(d[0][s], d[1][s], d[2][s], d[3][s], e[0][s], e[1][s], e[2][s], e[3][s]);
          for (int r = 0; r < 4; ++r) {
            float o[4];
            winograd_bt_column(e[r][0], e[r][1], e[r][2], e[r][3], o[0], o[1], o[2], o[3]);
            for (int s = 0; s < 4; ++s) out[(r * 4 + s) * n * Cg + c] = o[s];
          }
        }
      }
    }
  });
}

// The outputs of tiles first .. first + n - 1 from M (groups, 16, n, Kg).
void output_transform(const WinogradGeometry& g, const float* m, int64_t K, int64_t groups, int64_t first, int64_t n,
                      const float* bias, const float* other, bool relu, const float* zeros, float* y) {
  const int64_t Kg = K / groups, H = g.H, W = g.W;
  parallel_items(0, n, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    std::vector<float> scratch(K);  // where the outputs of a ragged tile that fall outside the image go
    float* dst[2][2];
    const float* res[2][2];
    for (int64_t i = begin; i < end; ++i) {
      const WinogradTile t = g.tile(first + i);
      for (int u = 0; u < 2; ++u) {
        const int64_t h = t.out_row(u);
        for (int v = 0; v < 2; ++v) {
          const int64_t w = t.out_col(v);
          const bool inside = h < H && w < W;
          const int64_t offset = ((t.b * H + h) * W + w) * K;
          dst[u][v] = inside ? y + offset : scratch.data();
          res[u][v] = inside && other != nullptr ? other + offset : zeros;
        }
      }
      for (int64_t grp = 0; grp < groups; ++grp) {
        const int64_t c0 = grp * Kg;
        const float* in = m + (grp * 16 * n + i) * Kg;
#pragma omp simd
        for (int64_t c = 0; c < Kg; ++c) {
          float s[2][4];
          for (int j = 0; j < 4; ++j)
            winograd_at_column(in[(0 * 4 + j) * n * Kg + c], in[(1 * 4 + j) * n * Kg + c],
                               in[(2 * 4 + j) * n * Kg + c], in[(3 * 4 + j) * n * Kg + c], s[0][j], s[1][j]);
          for (int u = 0; u < 2; ++u) {
            float o[2];
            winograd_at_column(s[u][0], s[u][1], s[u][2], s[u][3], o[0], o[1]);
            for (int v = 0; v < 2; ++v) {
              float val = o[v] + bias[c0 + c] + res[u][v][c0 + c];
              if (relu) val = val < 0.0f ? 0.0f : val;  // NaN stays NaN, as in torch.relu
              dst[u][v][c0 + c] = val;
            }
          }
        }
      }
    }
  });
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& u_in, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& other, int64_t dilation, int64_t groups, bool relu) {
  check_winograd_conv3x3(x_in, u_in, bias, other, dilation, groups);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t Cg = C / groups, Kg = u_in.size(2), K = groups * Kg;
  at::Tensor y = at::empty({B, K, H, W}, x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  prefer_huge_pages(y);
  const WinogradGeometry g = winograd_geometry(B, H, W, dilation);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor u = u_in.contiguous();
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::zeros({K}, x.options());
  const at::Tensor other_c = other.has_value() ? other->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const std::vector<float> zeros(std::max(C, K), 0.0f);
  const int64_t P = g.tiles(), block = tiles_per_block(P, std::max(C, K));
  at::Tensor v = at::empty({groups * 16, block, Cg}, x.options());
  at::Tensor m = at::empty({groups * 16, block, Kg}, x.options());
  prefer_huge_pages(v);
  prefer_huge_pages(m);
  for (int64_t first = 0; first < P; first += block) {
    const int64_t n = std::min(block, P - first);
    if (n != block) {  // the last, shorter block: buffers of its own size keep every GEMM operand dense
      v = at::empty({groups * 16, n, Cg}, x.options());
      m = at::empty({groups * 16, n, Kg}, x.options());
    }
    input_transform(g, x.data_ptr<float>(), C, groups, first, n, zeros.data(), v.data_ptr<float>());
    at::bmm_out(m, v, u);
    output_transform(g, m.data_ptr<float>(), K, groups, first, n, bias_c.data_ptr<float>(),
                     other_c.defined() ? other_c.data_ptr<float>() : nullptr, relu, zeros.data(),
                     y.data_ptr<float>());
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnest_fast, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}

}  // namespace resnest_fast
