// Schemas of the fused split-attention ops (defined once here; kernels are registered per backend in
// ops/cpu and ops/cuda; fake kernels and autograd are registered from Python, resnest_fast/ops/registrations.py).
//
// splat_pool:    gap[b, c] = mean_{h,w} sum_r act(x[b, r*C + c, h, w])                         -> (B, C)
// splat_combine: out[b, c, h, w] = sum_r a[b, r, c] * act(x[b, r*C + c, h, w]),
//                a = softmax over r of the logits read as [groups][radix][C/groups] (sigmoid if radix == 1)
// act(v) = relu(v*scale + shift) with scale/shift optional (None: identity) and relu optional.
// splat_bn_stats: per-channel biased variance and mean of x (B, K, H, W) over (B, H, W), accumulated in double and
//                returned in float32 (float64 for float64 x): bn0's batch statistics in one read of x.
// The module's fused backward (SplitAttentionConv2d in training) uses two more passes instead of the two backward
// ops, so that the gradient of x is written once, with the contributions of combine, pool and bn0's statistics:
// splat_backward_reduce: from grad_out and x: grad_logits, the combine's grad_scale/grad_shift, and per
//                (sample, split channel) the sums over positions of act'(pre)*x and act'(pre) (for the pool's
//                scale/shift gradients once grad_gap is known);
// splat_backward_input:  grad_x = scale*act'(pre)*(grad_out*a + grad_gap/(H*W)) + coef_a*x + coef_b (coef_*: the
//                statistics' gradient, per channel of x; a: the attention weights of the logits).
// The backward ops return gradients for x, (logits,) scale and shift; scale/shift gradients are empty tensors
// when scale/shift are None.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import resnest_fast._C` only has to run the static registrations below: the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(resnest_fast, m) {
  m.def("splat_pool(Tensor x, Tensor? scale, Tensor? shift, int radix, bool relu) -> Tensor");
  m.def(
      "splat_pool_backward(Tensor grad_gap, Tensor x, Tensor? scale, Tensor? shift, int radix, bool relu) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "splat_combine(Tensor x, Tensor logits, Tensor? scale, Tensor? shift, int radix, int groups, bool relu) "
      "-> Tensor");
  m.def(
      "splat_combine_backward(Tensor grad_out, Tensor x, Tensor logits, Tensor? scale, Tensor? shift, "
      "int radix, int groups, bool relu) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("splat_bn_stats(Tensor x) -> (Tensor, Tensor)");
  m.def(
      "splat_backward_reduce(Tensor grad_out, Tensor x, Tensor logits, Tensor scale, Tensor shift, int radix, "
      "int groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "splat_backward_input(Tensor grad_out, Tensor grad_gap, Tensor x, Tensor logits, Tensor scale, "
      "Tensor shift, Tensor coef_a, Tensor coef_b, int radix, int groups) -> Tensor");
}
