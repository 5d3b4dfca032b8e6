// The Python side of the fused AMOS LIF kernels (chapter 7 of the pttfs book, nbs/07_fused.ipynb): tensors in and
// out, the C++ autograd node of the recomputing path, and the module Python imports. The kernels themselves are in
// amos_lif.cpp (their interface: amos_lif.h); both are compiled on first use by torch.utils.cpp_extension.load (pttfs/fused.py:
// load_fused_extension), side by side.
//
// The headers are the few this file needs, not <torch/extension.h>: parsing all of PyTorch's C++ API is most of a
// first build's time.

#include "amos_lif.h"
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

using at::Tensor;

// A fresh output of many MiB costs one page fault per 4 KiB on first touch, which on some machines takes longer
// than the kernel itself. Asking Linux for transparent huge pages on the (2 MiB-aligned) inside of a large output,
// before anything touches it, makes that 512 times fewer faults. A hint only: without THP nothing changes.
static void advise_huge_pages(const Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(2) << 20, begin = (uintptr_t)t.data_ptr(), bytes = t.numel() * t.element_size();
  if (bytes < 4 * huge) return;
  const uintptr_t start = (begin + huge - 1) & ~(huge - 1), end = (begin + bytes) & ~(huge - 1);
  if (end > start) madvise((void*)start, end - start, MADV_HUGEPAGE);
#endif
}

// The kernels' element type for a tensor's; anything else is refused with one line.
static pttfs::Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return pttfs::Dtype::f32;
    case at::kDouble: return pttfs::Dtype::f64;
    case at::kBFloat16: return pttfs::Dtype::bf16;
    default: TORCH_CHECK(false, "the fused AMOS LIF kernel takes float32, float64 or bfloat16, got ", t.scalar_type());
  }
}
// The type the kernels compute in: τ, the stored membrane and its gradients are of it.
static at::ScalarType compute_type(pttfs::Dtype io) { return io == pttfs::Dtype::f64 ? at::kDouble : at::kFloat; }
// A tensor the kernels read if it is given: its pointer, checked to be of `type`; nullptr for "not given".
static const void* or_null(const Tensor& t, at::ScalarType type, const char* name) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  TORCH_CHECK(t.scalar_type() == type, "the fused AMOS LIF kernel reads ", name, " as ", type, ", got ", t.scalar_type());
  return t.data_ptr();
}

// t_f and t_sf in 8 bits when every step and "none" (T) fit: a quarter of int32's memory traffic.
static bool narrow_indices(int64_t T) { return T <= 255; }

// Python-facing entry points. x, spikes, membrane, grads: [T, N] contiguous; tau: a [N] tensor, or an empty tensor
// and the number tau_scalar; first/second: int32 [N] (uint8 inside the recomputing node when T <= 255).
// An undefined tensor stands for "not wanted" (membrane, t_f/t_sf) or "one τ" (tau); Python sees it as None.
static std::vector<Tensor> forward_impl(Tensor x, Tensor tau, double tau_scalar, double v_threshold,
                                        bool force_last, bool store_membrane, bool record_indices, bool narrow) {
  const int64_t T = x.size(0), N = x.numel() / T;
  const auto io = dtype_of(x);
  TORCH_CHECK(!store_membrane || io != pttfs::Dtype::bf16, "the membrane is stored in float32 or float64 only");
  auto spikes = at::empty_like(x);
  auto membrane = store_membrane ? at::empty_like(x) : Tensor();
  advise_huge_pages(spikes);
  if (store_membrane) advise_huge_pages(membrane);
  auto opts = x.options().dtype(narrow ? at::kByte : at::kInt);
  auto first = record_indices ? at::empty({N}, opts) : Tensor();
  auto second = record_indices ? at::empty({N}, opts) : Tensor();
  pttfs::forward(io, x.data_ptr(), or_null(tau, compute_type(io), "tau"), tau_scalar, spikes.data_ptr(),
                 store_membrane ? membrane.data_ptr() : nullptr, record_indices ? first.data_ptr() : nullptr,
                 record_indices ? second.data_ptr() : nullptr, narrow, T, N, v_threshold, force_last);
  return {spikes, membrane, first, second};
}

std::vector<Tensor> amos_forward(Tensor x, Tensor tau, double tau_scalar, double v_threshold,
                                 bool force_last, bool store_membrane, bool record_indices) {
  return forward_impl(x, tau, tau_scalar, v_threshold, force_last, store_membrane, record_indices, false);
}

std::vector<Tensor> amos_backward(Tensor grad_spikes, Tensor grad_membrane, Tensor membrane, Tensor tau,
                                  double tau_scalar, Tensor first, Tensor second, double v_threshold, bool force_last,
                                  int64_t kind, double alpha, bool need_tau) {
  const int64_t T = membrane.size(0), N = membrane.numel() / T;
  const auto dt = dtype_of(membrane);
  TORCH_CHECK(dt != pttfs::Dtype::bf16, "amos_backward reads a float32 or float64 membrane");
  auto grad_x = at::empty_like(membrane);
  advise_huge_pages(grad_x);
  auto grad_tau = need_tau ? at::empty({N}, membrane.options()) : Tensor();
  TORCH_CHECK(first.scalar_type() == at::kInt, "amos_backward reads int32 t_f and t_sf (amos_forward's)");
  TORCH_CHECK(grad_spikes.scalar_type() == membrane.scalar_type(), "dL/dS and the membrane must have one dtype");
  pttfs::backward(dt, grad_spikes.numel() == 1, grad_spikes.data_ptr(), or_null(grad_membrane, membrane.scalar_type(), "dL/dH"), membrane.data_ptr(),
                  or_null(tau, membrane.scalar_type(), "tau"), tau_scalar, first.data_ptr<int32_t>(), second.data_ptr<int32_t>(), grad_x.data_ptr(),
                  need_tau ? grad_tau.data_ptr() : nullptr, T, N, v_threshold, force_last, (int)kind, alpha);
  return {grad_x, grad_tau};
}

Tensor amos_backward_recompute(Tensor grad_spikes, Tensor x, Tensor tau, double tau_scalar, Tensor first,
                               Tensor second, double v_threshold, bool force_last, int64_t kind, double alpha) {
  const int64_t T = x.size(0), N = x.numel() / T;
  TORCH_CHECK(grad_spikes.scalar_type() == x.scalar_type(), "dL/dS and x must have one dtype");
  auto grad_x = at::empty_like(x);
  advise_huge_pages(grad_x);
  const auto io = dtype_of(x);
  TORCH_CHECK(first.scalar_type() == second.scalar_type() && (first.scalar_type() == at::kByte || first.scalar_type() == at::kInt),
              "t_f and t_sf are both uint8 or both int32");
  pttfs::backward_recompute(io, grad_spikes.numel() == 1, grad_spikes.data_ptr(), x.data_ptr(), or_null(tau, compute_type(io), "tau"),
                            tau_scalar, first.data_ptr(), second.data_ptr(), first.scalar_type() == at::kByte,
                            grad_x.data_ptr(), T, N, v_threshold, force_last, (int)kind, alpha);
  return grad_x;
}

// The recomputing path (τ fixed, one or one per neuron; spikes only) as one C++ autograd node: forward saves x, t_f
// and t_sf, backward recomputes H. At 2^10-2^14 neurons the Python around the kernels (context, saved tensors, the
// Python backward and its argument handling) costs as much as the kernels, and every hidden layer of a fixed-τ
// network makes this call.
static Tensor one_number_or_contiguous(const Tensor& grad) {     // compact_grad, in C++
  bool broadcast = grad.numel() == 1;
  if (!broadcast) { broadcast = true; for (auto stride : grad.strides()) broadcast = broadcast && stride == 0; }
  return broadcast ? grad.as_strided({1}, {1}) : grad.contiguous();
}

struct AMOSLIFRecompute : public torch::autograd::Function<AMOSLIFRecompute> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor x, Tensor tau, double tau_scalar,
                               double v_threshold, bool force_last, int64_t kind, double alpha) {
    auto results = forward_impl(x, tau, tau_scalar, v_threshold, force_last, false, true, narrow_indices(x.size(0)));
    ctx->save_for_backward({x, tau, results[2], results[3]});
    ctx->saved_data["tau"] = tau_scalar; ctx->saved_data["v_threshold"] = v_threshold; ctx->saved_data["force_last"] = force_last;
    ctx->saved_data["kind"] = kind; ctx->saved_data["alpha"] = alpha;
    return results[0];
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto grad_x = amos_backward_recompute(one_number_or_contiguous(grads[0]), saved[0], saved[1],
                                          ctx->saved_data["tau"].toDouble(), saved[2], saved[3],
                                          ctx->saved_data["v_threshold"].toDouble(), ctx->saved_data["force_last"].toBool(),
                                          ctx->saved_data["kind"].toInt(), ctx->saved_data["alpha"].toDouble());
    return {grad_x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// tau: the [N] values, or an empty tensor and the number tau_scalar. τ must not need a gradient here.
Tensor amos_lif_recompute(Tensor x, Tensor tau, double tau_scalar, double v_threshold, bool force_last,
                                 int64_t kind, double alpha) {
  x = x.contiguous();
  if (!(c10::GradMode::is_enabled() && x.requires_grad()))        // inference: no graph, no t_f/t_sf to keep
    return amos_forward(x, tau, tau_scalar, v_threshold, force_last, false, false)[0];
  return AMOSLIFRecompute::apply(x, tau, tau_scalar, v_threshold, force_last, kind, alpha);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("amos_forward", &amos_forward, "forward: spikes, membrane (if stored), t_f and t_sf");
  m.def("amos_backward", &amos_backward, "backward from the stored membrane: dL/dX and dL/dtau");
  m.def("amos_backward_recompute", &amos_backward_recompute, "backward that recomputes the membrane from x: dL/dX");
  m.def("amos_lif_recompute", &amos_lif_recompute, "forward whose C++ autograd node recomputes the membrane in the backward");
}
