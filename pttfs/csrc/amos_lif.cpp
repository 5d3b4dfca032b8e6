// The fused CPU kernels of the AMOS LIF neuron (chapter 7 of the pttfs book, nbs/07_fused.ipynb).
//
// The same closed forms as the textbook backend (chapters 2-4), computed with one lane per neuron and a sequential
// loop over time: the forward (Eq. 4, then Eqs. 2 and 7-9: the first crossing is the spike) records t_f and the
// second fake spike t_sf on the way; the backward (Eq. 15's spike gradient from the two gathered values, Eq. 17's
// masked spatial term, and Eq. 18's recursion backwards in time) gives dL/dX and dL/dtau in one pass.
// Only ATen's parallel_for and c10's bfloat16 come from PyTorch: the tensors, the autograd node and the Python module are in amos_lif_python.cpp.
//
// Adding a surrogate: a new `kind` in theta_prime below, and its number in _SURROGATE_KIND (pttfs/fused.py).

#include "amos_lif.h"
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace pttfs {
namespace {
// One AMOS LIF neuron per SIMD lane, time in the outer loop: every element of every [T, N] tensor is
// touched once per pass, and a block of neurons keeps its state in cache while the loop walks down time.
constexpr int64_t BLOCK = 2048;

// exp(z) for z <= 0, branch-free so that the compiler vectorises the loops that call it.
// Range reduction z = k ln2 + r with k = round(z / ln2), |r| <= ln2/2; Taylor polynomial of r; scale by 2^k through the
// exponent bits. (std::floor would block GCC's vectoriser.)
inline float exp_nonpositive(float z) {
  z = z < -87.0f ? -87.0f : z;
  const float k = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   // round to nearest (1.5·2^23 trick)
  const float r = (z - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.0f / 5040; p = p * r + 1.0f / 720; p = p * r + 1.0f / 120; p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6; p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
  int32_t bits = (int32_t)(k + 127.0f) << 23;
  return p * __builtin_bit_cast(float, bits);
}
inline double exp_nonpositive(double z) {
  z = z < -708.0 ? -708.0 : z;
  const double k = (z * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;   // round to nearest (1.5·2^52)
  const double r = (z - k * 0.693145751953125) - k * 1.4286068203094173e-06;
  double p = 1.0 / 6227020800.0;                                    // Taylor to r^13: error < 1e-17 for |r| <= ln2/2
  const double c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
                      1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
  for (int j = 0; j < 13; ++j) p = p * r + c[j];
  int64_t bits = (int64_t)(k + 1023.0) << 52;
  return p * __builtin_bit_cast(double, bits);
}

// bfloat16 to and from float32, branch-free so that the loops vectorise: the upper 16 bits of a float32; rounding
// to the nearest even, NaN kept NaN, exactly as PyTorch's conversions (c10::BFloat16) do it.
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(at::BFloat16 v) { return __builtin_bit_cast(float, uint32_t(v.x) << 16); }
template <typename io_t, typename scalar_t> inline io_t narrow(scalar_t v) { return v; }
template <> inline at::BFloat16 narrow<at::BFloat16, float>(float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  const uint16_t rounded = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return at::BFloat16(v != v ? uint16_t(0x7FC0) : rounded, at::BFloat16::from_bits());
}

// Θ'(u): kind 0 is Sigmoid(alpha), α·σ(αu)(1−σ(αu)) = α·e/(1+e)² with e = exp(−|αu|); kind 1 is ATan(alpha).
template <typename scalar_t>
inline scalar_t theta_prime(scalar_t u, int kind, scalar_t alpha) {
  if (kind == 0) {
    const scalar_t e = exp_nonpositive(-std::fabs(alpha * u));
    const scalar_t one_plus = scalar_t(1) + e;
    return alpha * e / (one_plus * one_plus);
  }
  const scalar_t z = scalar_t(M_PI / 2) * alpha * u;
  return (alpha / 2) / (scalar_t(1) + z * z);
}

// Forward, one time step for a block of neurons: Eq. 4, then the first crossing is the spike (Eqs. 2, 7-9)
// and the first crossing after it the second fake spike (Eq. 15). Branch-free, so that it vectorises.
template <typename scalar_t, typename io_t, bool PER_NEURON_TAU, bool STORE>
static inline void forward_step(int64_t len, const io_t* __restrict__ xt, io_t* __restrict__ st, scalar_t* __restrict__ mt,
                                scalar_t* __restrict__ h, int32_t* __restrict__ f, int32_t* __restrict__ s,
                                const scalar_t* __restrict__ tau_b, scalar_t tau_scalar,
                                scalar_t v_threshold, bool forced, int32_t ti, int32_t none) {
  for (int64_t i = 0; i < len; ++i) {
    const scalar_t tau = PER_NEURON_TAU ? tau_b[i] : tau_scalar;
    const scalar_t hv = (scalar_t(1) - scalar_t(1) / tau) * h[i] + widen(xt[i]) / tau;   // Eq. 4, as the loop computes it
    h[i] = hv;
    if (STORE) mt[i] = hv;
    const bool cross = forced | (hv >= v_threshold);                       // Eq. 8 (forced at T-1: Eq. 9)
    const bool fire = cross & (f[i] == none);                              // Eq. 2: the first crossing
    st[i] = narrow<io_t>(fire ? scalar_t(1) : scalar_t(0));
    s[i] = (cross & (f[i] < ti) & (s[i] == none)) ? ti : s[i];             // the second fake spike t_sf
    f[i] = fire ? ti : f[i];
  }
}

template <typename scalar_t, typename io_t, typename idx_t, bool PER_NEURON_TAU>
void forward_kernel(const io_t* x, const scalar_t* tau, scalar_t tau_scalar, io_t* spikes, scalar_t* membrane,
                    idx_t* first, idx_t* second, int64_t T, int64_t N, scalar_t v_threshold, bool force_last) {
  at::parallel_for(0, (N + BLOCK - 1) / BLOCK, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> h(BLOCK);
    std::vector<int32_t> f(BLOCK), s(BLOCK);
    const int32_t none = (int32_t)T;                                       // "no such time step"
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * BLOCK, len = std::min(BLOCK, N - n0);
      const scalar_t* tau_b = PER_NEURON_TAU ? tau + n0 : nullptr;
      for (int64_t i = 0; i < len; ++i) { h[i] = 0; f[i] = none; s[i] = none; }
      for (int64_t t = 0; t < T; ++t) {
        const bool forced = force_last && t == T - 1;
        if (membrane) forward_step<scalar_t, io_t, PER_NEURON_TAU, true>(len, x + t * N + n0, spikes + t * N + n0, membrane + t * N + n0,
                                                                   h.data(), f.data(), s.data(), tau_b, tau_scalar, v_threshold, forced, (int32_t)t, none);
        else forward_step<scalar_t, io_t, PER_NEURON_TAU, false>(len, x + t * N + n0, spikes + t * N + n0, nullptr,
                                                             h.data(), f.data(), s.data(), tau_b, tau_scalar, v_threshold, forced, (int32_t)t, none);
      }
      if (first) {                                                          // not in inference
        // restrict-qualified: a store through an 8-bit pointer could otherwise alias anything, the vectors' own pointers too
        idx_t* __restrict__ first_b = first + n0; idx_t* __restrict__ second_b = second + n0;
        const int32_t* __restrict__ f_b = f.data(); const int32_t* __restrict__ s_b = s.data();
        for (int64_t i = 0; i < len; ++i) { first_b[i] = (idx_t)f_b[i]; second_b[i] = (idx_t)s_b[i]; }
      }
    }
  });
}

// Backward, one time step (t descending) for a block of neurons: Eq. 15's spike gradient from the two gathered
// values, the masked spatial term of Eq. 17, the recursion of Eq. 18, dL/dX = delta/tau, and the tau gradient.
// GS_SCALAR: dL/dS is one number broadcast over [T, N] (the gradient of a sum), read without materialising it.
template <typename scalar_t, bool PER_NEURON_TAU, bool HAS_GH, bool WANT_TAU, bool GS_SCALAR>
static inline void backward_step(int64_t len, const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gh,
                                 const scalar_t* __restrict__ mt, const scalar_t* __restrict__ mprev, scalar_t* __restrict__ gx,
                                 scalar_t* __restrict__ delta, scalar_t* __restrict__ acc,
                                 const scalar_t* __restrict__ g_first, const scalar_t* __restrict__ g_second,
                                 const int32_t* __restrict__ f, const scalar_t* __restrict__ tau_b, scalar_t tau_scalar,
                                 scalar_t v_threshold, bool forced, int32_t ti, int kind, scalar_t alpha) {
  for (int64_t i = 0; i < len; ++i) {
    const scalar_t inv_tau = scalar_t(1) / (PER_NEURON_TAU ? tau_b[i] : tau_scalar);  // hoisted out of the loop for one τ
    const scalar_t g = GS_SCALAR ? gs[0] : gs[i];
    const scalar_t d_spike = g - (ti < f[i] ? g_first[i] : g_second[i]);                         // Eq. 15
    const scalar_t spatial = d_spike * theta_prime(mt[i] - v_threshold, kind, alpha);            // Eq. 17
    scalar_t d = (scalar_t(1) - inv_tau) * delta[i] + (HAS_GH ? gh[i] : scalar_t(0));            // Eq. 18
    d += ((ti <= f[i]) & !forced) ? spatial : scalar_t(0);                                       // (1 - F[t-1])
    delta[i] = d;
    gx[i] = d * inv_tau;                                                 // a product, not a quotient: divisions cost
    if (WANT_TAU) acc[i] += d * ((mprev ? mprev[i] : scalar_t(0)) - mt[i]);                     // dH[t]/dtau * tau
  }
}

template <typename scalar_t, bool PER_NEURON_TAU, bool HAS_GH, bool WANT_TAU, bool GS_SCALAR>
void backward_kernel(const scalar_t* grad_spikes, const scalar_t* grad_membrane, const scalar_t* membrane,
                     const scalar_t* tau, scalar_t tau_scalar, const int32_t* first, const int32_t* second,
                     scalar_t* grad_x, scalar_t* grad_tau, int64_t T, int64_t N, scalar_t v_threshold, bool force_last,
                     int kind, scalar_t alpha) {
  at::parallel_for(0, (N + BLOCK - 1) / BLOCK, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> delta(BLOCK), acc(BLOCK), g_first(BLOCK), g_second(BLOCK);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * BLOCK, len = std::min(BLOCK, N - n0);
      const scalar_t* tau_b = PER_NEURON_TAU ? tau + n0 : nullptr;
      const int32_t* f = first + n0;
      for (int64_t i = 0; i < len; ++i) {
        const int32_t s = second[n0 + i];
        const int64_t at_first = GS_SCALAR ? 0 : f[i] * N + n0 + i, at_second = GS_SCALAR ? 0 : s * N + n0 + i;
        g_first[i] = f[i] < T ? grad_spikes[at_first] : scalar_t(0);     // dL/dS[t_f]
        g_second[i] = s < T ? grad_spikes[at_second] : scalar_t(0);      // dL/dS[t_sf]
        delta[i] = 0; acc[i] = 0;
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        backward_step<scalar_t, PER_NEURON_TAU, HAS_GH, WANT_TAU, GS_SCALAR>(
            len, GS_SCALAR ? grad_spikes : grad_spikes + t * N + n0, HAS_GH ? grad_membrane + t * N + n0 : nullptr,
            membrane + t * N + n0, t > 0 ? membrane + (t - 1) * N + n0 : nullptr, grad_x + t * N + n0,
            delta.data(), acc.data(), g_first.data(), g_second.data(), f, tau_b, tau_scalar,
            v_threshold, force_last && t == T - 1, (int32_t)t, kind, alpha);
      }
      if (WANT_TAU) for (int64_t i = 0; i < len; ++i) grad_tau[n0 + i] = acc[i] / (PER_NEURON_TAU ? tau_b[i] : tau_scalar);
    }
  });
}

// Backward without a stored membrane (fixed tau, membrane not an output): sweep 1 recomputes H forward from x and
// writes Eq. 17's spatial term into grad_x; sweep 2 runs Eq. 18 backwards over the same block, still in cache.
// Nothing of size [T, N] is saved for the backward except the input itself.
template <typename scalar_t, typename io_t, typename idx_t, bool PER_NEURON_TAU, bool GS_SCALAR>
static inline void recompute_step(int64_t len, const io_t* __restrict__ xt, const io_t* __restrict__ gs,
                                  scalar_t* __restrict__ gx, scalar_t* __restrict__ h,
                                  const scalar_t* __restrict__ g_first, const scalar_t* __restrict__ g_second,
                                  const idx_t* __restrict__ f, const scalar_t* __restrict__ tau_b, scalar_t tau_scalar,
                                  scalar_t v_threshold, bool forced, int32_t ti, int kind, scalar_t alpha) {
  for (int64_t i = 0; i < len; ++i) {
    const scalar_t inv_tau = scalar_t(1) / (PER_NEURON_TAU ? tau_b[i] : tau_scalar);
    // Eq. 4 again, with x·(1/τ) for x/τ: it may differ from the forward's H in the last bit, which moves Θ'(H − V_th)
    // by a relative ~1e-7 (float32); the spike mask, the part that must be exact, comes from the forward's t_f.
    const scalar_t hv = (scalar_t(1) - inv_tau) * h[i] + widen(xt[i]) * inv_tau;
    h[i] = hv;
    const scalar_t g = widen(GS_SCALAR ? gs[0] : gs[i]);
    const int32_t fi = f[i];
    const scalar_t d_spike = g - (ti < fi ? g_first[i] : g_second[i]);                           // Eq. 15
    const scalar_t spatial = d_spike * theta_prime(hv - v_threshold, kind, alpha);               // Eq. 17
    gx[i] = ((ti <= fi) & !forced) ? spatial : scalar_t(0);
  }
}

template <typename scalar_t, typename io_t, bool PER_NEURON_TAU>
static inline void reverse_step(int64_t len, const scalar_t* spatial, io_t* gx, scalar_t* __restrict__ delta,
                                const scalar_t* __restrict__ tau_b, scalar_t tau_scalar) {   // spatial may be gx itself
  for (int64_t i = 0; i < len; ++i) {
    const scalar_t inv_tau = scalar_t(1) / (PER_NEURON_TAU ? tau_b[i] : tau_scalar);
    const scalar_t d = (scalar_t(1) - inv_tau) * delta[i] + spatial[i];                          // Eq. 18
    delta[i] = d;
    gx[i] = narrow<io_t>(d * inv_tau);
  }
}

template <typename scalar_t, typename io_t, typename idx_t, bool PER_NEURON_TAU, bool GS_SCALAR>
void backward_recompute_kernel(const io_t* grad_spikes, const io_t* x, const scalar_t* tau, scalar_t tau_scalar,
                               const idx_t* first, const idx_t* second, io_t* grad_x, int64_t T, int64_t N,
                               scalar_t v_threshold, bool force_last, int kind, scalar_t alpha) {
  constexpr int64_t RBLOCK = 512;                         // a block's [T, RBLOCK] rows of grad_x stay in L2 between sweeps
  constexpr bool NARROW = !std::is_same_v<io_t, scalar_t>;  // bfloat16 I/O: sweep 1's spatial terms go to a float scratch
  at::parallel_for(0, (N + RBLOCK - 1) / RBLOCK, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> h(RBLOCK), delta(RBLOCK), g_first(RBLOCK), g_second(RBLOCK), scratch(NARROW ? T * RBLOCK : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * RBLOCK, len = std::min(RBLOCK, N - n0);
      const scalar_t* tau_b = PER_NEURON_TAU ? tau + n0 : nullptr;
      const idx_t* f = first + n0;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t fi = f[i], s = second[n0 + i];
        g_first[i] = fi < T ? widen(grad_spikes[GS_SCALAR ? 0 : fi * N + n0 + i]) : scalar_t(0);
        g_second[i] = s < T ? widen(grad_spikes[GS_SCALAR ? 0 : s * N + n0 + i]) : scalar_t(0);
        h[i] = 0; delta[i] = 0;
      }
      auto spatial_row = [&](int64_t t) -> scalar_t* {
        if constexpr (NARROW) return scratch.data() + t * RBLOCK; else return grad_x + t * N + n0;
      };
      for (int64_t t = 0; t < T; ++t)
        recompute_step<scalar_t, io_t, idx_t, PER_NEURON_TAU, GS_SCALAR>(len, x + t * N + n0,
            GS_SCALAR ? grad_spikes : grad_spikes + t * N + n0, spatial_row(t), h.data(), g_first.data(), g_second.data(),
            f, tau_b, tau_scalar, v_threshold, force_last && t == T - 1, (int32_t)t, kind, alpha);
      for (int64_t t = T - 1; t >= 0; --t)
        reverse_step<scalar_t, io_t, PER_NEURON_TAU>(len, spatial_row(t), grad_x + t * N + n0, delta.data(), tau_b, tau_scalar);
    }
  });
}

// The element type io_t and the type the kernels compute in, scalar_t; t_f and t_sf in 8 bits where they fit.
template <typename F> void dispatch_io(Dtype io, F&& body) {
  if (io == Dtype::f32) body(float(), float());
  else if (io == Dtype::f64) body(double(), double());
  else body(float(), at::BFloat16());
}
}  // namespace

void forward(Dtype io, const void* x, const void* tau, double tau_scalar, void* spikes, void* membrane,
             void* first, void* second, bool narrow_indices, int64_t T, int64_t N, double v_threshold, bool force_last) {
  dispatch_io(io, [&](auto compute, auto element) {
    using scalar_t = decltype(compute); using io_t = decltype(element);
    auto run = [&](auto index) {
      using idx_t = decltype(index);
      auto kernel = tau ? forward_kernel<scalar_t, io_t, idx_t, true> : forward_kernel<scalar_t, io_t, idx_t, false>;
      kernel((const io_t*)x, (const scalar_t*)tau, (scalar_t)tau_scalar, (io_t*)spikes, (scalar_t*)membrane,
             (idx_t*)first, (idx_t*)second, T, N, (scalar_t)v_threshold, force_last);
    };
    if (narrow_indices) run(uint8_t()); else run(int32_t());
  });
}

void backward(Dtype dt, bool gs_scalar, const void* grad_spikes, const void* grad_membrane, const void* membrane,
              const void* tau, double tau_scalar, const int32_t* first, const int32_t* second, void* grad_x,
              void* grad_tau, int64_t T, int64_t N, double v_threshold, bool force_last, int kind, double alpha) {
  auto typed = [&](auto zero) {
    using scalar_t = decltype(zero);
    auto pick = [&](auto per_neuron, auto has_gh) {
      constexpr bool P = decltype(per_neuron)::value, G = decltype(has_gh)::value;
      auto kernel = grad_tau ? (gs_scalar ? backward_kernel<scalar_t, P, G, true, true> : backward_kernel<scalar_t, P, G, true, false>)
                             : (gs_scalar ? backward_kernel<scalar_t, P, G, false, true> : backward_kernel<scalar_t, P, G, false, false>);
      kernel((const scalar_t*)grad_spikes, (const scalar_t*)grad_membrane, (const scalar_t*)membrane, (const scalar_t*)tau,
             (scalar_t)tau_scalar, first, second, (scalar_t*)grad_x, (scalar_t*)grad_tau, T, N, (scalar_t)v_threshold,
             force_last, kind, (scalar_t)alpha);
    };
    using yes = std::true_type; using no = std::false_type;
    if (tau) { if (grad_membrane) pick(yes(), yes()); else pick(yes(), no()); }
    else { if (grad_membrane) pick(no(), yes()); else pick(no(), no()); }
  };
  if (dt == Dtype::f64) typed(double()); else typed(float());
}

void backward_recompute(Dtype io, bool gs_scalar, const void* grad_spikes, const void* x, const void* tau,
                        double tau_scalar, const void* first, const void* second, bool narrow_indices, void* grad_x,
                        int64_t T, int64_t N, double v_threshold, bool force_last, int kind, double alpha) {
  dispatch_io(io, [&](auto compute, auto element) {
    using scalar_t = decltype(compute); using io_t = decltype(element);
    auto run = [&](auto index) {
      using idx_t = decltype(index);
      auto kernel = tau ? (gs_scalar ? backward_recompute_kernel<scalar_t, io_t, idx_t, true, true>
                                     : backward_recompute_kernel<scalar_t, io_t, idx_t, true, false>)
                        : (gs_scalar ? backward_recompute_kernel<scalar_t, io_t, idx_t, false, true>
                                     : backward_recompute_kernel<scalar_t, io_t, idx_t, false, false>);
      kernel((const io_t*)grad_spikes, (const io_t*)x, (const scalar_t*)tau, (scalar_t)tau_scalar, (const idx_t*)first,
             (const idx_t*)second, (io_t*)grad_x, T, N, (scalar_t)v_threshold, force_last, kind, (scalar_t)alpha);
    };
    if (narrow_indices) run(uint8_t()); else run(int32_t());
  });
}
}  // namespace pttfs
