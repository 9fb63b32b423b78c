// Maths of the fused split-attention ops, shared by the CPU and CUDA kernels so the CPU tests exercise the very
// formulas the GPU runs.
//
// Notation: x is the grouped conv's output, (B, R*C, H, W); split r of channel c is channel r*C + c (the
// features are split [radix][C]). The attention logits (B, R*C) are read as mmseg's rSoftMax reads them,
// [groups][radix][C/groups]: the logit of (r, c) with c = g*(C/G) + i sits at (g*R + r)*(C/G) + i. With G == 1
// both readings agree, which is why groups > 1 is part of every test.
//
// The activation applied on the fly is act(v) = relu(v*scale + shift) (bn0 folded or with batch statistics,
// then mmseg's ReLU); each part is optional. relu keeps NaN (like torch.relu) and its derivative mask follows
// torch's threshold_backward (0 where the result is <= 0, so NaN passes gradient). Like threshold_backward, a
// gradient goes through the mask by selection (splat_times_act_grad), never by multiplication: 0 * inf and 0 * NaN
// would turn a masked-out non-finite upstream gradient into NaN where torch gives 0.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RF_HOST_DEVICE inline
#endif

namespace resnest_fast {

// The attention weights of one channel live in registers / on the stack. resnest_fast/op_rules.py: MAX_RADIX is the
// Python side of this bound (tests/ops check that both agree).
constexpr int kMaxRadix = 8;

template <typename acc_t, bool kAffine>
RF_HOST_DEVICE acc_t splat_pre(acc_t v, acc_t scale, acc_t shift) {
  return kAffine ? v * scale + shift : v;
}

template <typename acc_t, bool kRelu>
RF_HOST_DEVICE acc_t splat_act(acc_t pre) {
  return (kRelu && pre < acc_t(0)) ? acc_t(0) : pre;
}

// d act / d pre
template <typename acc_t, bool kRelu>
RF_HOST_DEVICE acc_t splat_act_grad(acc_t pre) {
  return (kRelu && pre <= acc_t(0)) ? acc_t(0) : acc_t(1);
}

// d * (d act / d pre), by selection: d where the mask passes, exactly 0 elsewhere, whatever d is.
template <typename acc_t, bool kRelu>
RF_HOST_DEVICE acc_t splat_times_act_grad(acc_t d, acc_t pre) {
  return (kRelu && pre <= acc_t(0)) ? acc_t(0) : d;
}

// Position of the logit of split r, channel c in the [groups][radix][C/groups] layout.
RF_HOST_DEVICE int64_t splat_logit_index(int64_t r, int64_t c, int64_t radix, int64_t channels_per_group) {
  const int64_t g = c / channels_per_group;
  const int64_t i = c - g * channels_per_group;
  return (g * radix + r) * channels_per_group + i;
}

// Attention weights of one (sample, channel): softmax over the radix splits, sigmoid when radix == 1.
// `logits` is the sample's logit row; writes a[0..radix).
template <typename acc_t, typename logit_t>
RF_HOST_DEVICE void splat_attention(const logit_t* logits, int64_t c, int64_t radix, int64_t channels_per_group,
                                    acc_t* a) {
  if (radix == 1) {
    const acc_t l = static_cast<acc_t>(logits[splat_logit_index(0, c, 1, channels_per_group)]);
    a[0] = acc_t(1) / (acc_t(1) + exp(-l));
    return;
  }
  acc_t m = static_cast<acc_t>(logits[splat_logit_index(0, c, radix, channels_per_group)]);
  for (int64_t r = 1; r < radix; ++r) {
    const acc_t l = static_cast<acc_t>(logits[splat_logit_index(r, c, radix, channels_per_group)]);
    m = l > m ? l : m;
  }
  acc_t sum = 0;
  for (int64_t r = 0; r < radix; ++r) {
    a[r] = exp(static_cast<acc_t>(logits[splat_logit_index(r, c, radix, channels_per_group)]) - m);
    sum += a[r];
  }
  for (int64_t r = 0; r < radix; ++r) a[r] /= sum;
}

// Gradient of the logits of one (sample, channel) from the gradient of its attention weights.
// softmax: dl_r = a_r * (da_r - sum_s a_s da_s); sigmoid: dl = da * a * (1 - a).
template <typename acc_t>
RF_HOST_DEVICE void splat_attention_backward(const acc_t* a, const acc_t* da, int64_t radix, acc_t* dlogit) {
  if (radix == 1) {
    dlogit[0] = da[0] * a[0] * (acc_t(1) - a[0]);
    return;
  }
  acc_t dot = 0;
  for (int64_t r = 0; r < radix; ++r) dot += a[r] * da[r];
  for (int64_t r = 0; r < radix; ++r) dlogit[r] = a[r] * (da[r] - dot);
}

// The fused module backward at one element of x (bn0 and ReLU always on), shared by every backend.
// Pass 1 (splat_backward_reduce): with pre = v*scale + shift and mk = act'(pre), an element of value v whose
// combine-output gradient is g and attention weight a adds g*act(pre) to d a, g*a*mk*v to d scale, g*a*mk to
// d shift (the combine's own sums) and mk*v, mk to the pool's per-(sample, split channel) sums mx, m.
template <typename acc_t>
struct SplatReduceTerms {
  acc_t da, dscale, dshift, mx, m;
};

template <typename acc_t>
RF_HOST_DEVICE SplatReduceTerms<acc_t> splat_backward_reduce_terms(acc_t v, acc_t g, acc_t a, acc_t scale,
                                                                   acc_t shift) {
  const acc_t pre = splat_pre<acc_t, true>(v, scale, shift);
  const acc_t mk = splat_act_grad<acc_t, true>(pre);
  const acc_t d = splat_times_act_grad<acc_t, true>(g * a, pre);
  return {g * splat_act<acc_t, true>(pre), d * v, d, mk * v, mk};
}

// Pass 2 (splat_backward_input): grad x = scale*act'(pre)*(g*a + gg) + ca*v + cb, gg the pool's gradient per
// position of that (sample, channel), ca and cb the per-channel terms of bn0's batch statistics.
template <typename acc_t>
RF_HOST_DEVICE acc_t splat_backward_input_value(acc_t v, acc_t g, acc_t a, acc_t gg, acc_t scale, acc_t shift,
                                                acc_t ca, acc_t cb) {
  const acc_t pre = splat_pre<acc_t, true>(v, scale, shift);
  return scale * splat_times_act_grad<acc_t, true>(g * a + gg, pre) + ca * v + cb;
}

}  // namespace resnest_fast
