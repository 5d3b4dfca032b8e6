// The fused kernels' interface (chapter 7 of the pttfs book): plain pointers and numbers, no torch headers, so that
// the two sources compile side by side and the kernels' compile does not parse PyTorch's C++ API.
#pragma once
#include <cstdint>

namespace pttfs {
// The tensors' element type: float32 and float64 are computed as they are, bfloat16 is computed in float32.
enum class Dtype : int { f32 = 0, f64 = 1, bf16 = 2 };

// x, spikes, membrane: [T, N]; tau: [N] or nullptr for the one number tau_scalar; membrane, first, second: nullptr
// when not wanted; first/second are uint8 when narrow_indices, else int32 (t_f and t_sf, T for "none").
void forward(Dtype io, const void* x, const void* tau, double tau_scalar, void* spikes, void* membrane,
             void* first, void* second, bool narrow_indices, int64_t T, int64_t N, double v_threshold, bool force_last);

// From the stored membrane (float32 or float64): grad_membrane may be nullptr, grad_tau nullptr when not wanted;
// gs_scalar: grad_spikes is one number for all [T, N].
void backward(Dtype dt, bool gs_scalar, const void* grad_spikes, const void* grad_membrane, const void* membrane,
              const void* tau, double tau_scalar, const int32_t* first, const int32_t* second, void* grad_x,
              void* grad_tau, int64_t T, int64_t N, double v_threshold, bool force_last, int kind, double alpha);

// Recomputing the membrane from x (float32, float64 or bfloat16).
void backward_recompute(Dtype io, bool gs_scalar, const void* grad_spikes, const void* x, const void* tau,
                        double tau_scalar, const void* first, const void* second, bool narrow_indices, void* grad_x,
                        int64_t T, int64_t N, double v_threshold, bool force_last, int kind, double alpha);
}  // namespace pttfs
