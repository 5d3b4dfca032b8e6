"""The Triton kernels against the BPTT reference, on the CPU through Triton's interpreter (a GPU runs them for real).

The interpreter must be switched on before Triton is imported, so the check runs in a fresh process.
"""
import importlib.util, subprocess, sys, textwrap, os
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

def test_triton_kernels_exact_under_interpreter():
    code = textwrap.dedent("""
        import torch
        from pttfs.dynamics import compare_with_reference as _compare
        from pttfs.backends import amos_lif_parallel
        from functools import partial
        compare_with_reference = lambda *a, backend, **k: _compare(partial(amos_lif_parallel, backend=backend), *a, **k)
        from pttfs.surrogate import ATan, Sigmoid
        cases = [(1, 2.0, False, False, Sigmoid()), (1, 2.0, True, False, Sigmoid()), (9, 1.01, False, True, Sigmoid()),
                 (9, 3.0, True, True, ATan()), (33, 2.0, False, False, Sigmoid()), (33, 1000.0, True, True, Sigmoid())]
        for T, tau, force_last, per_neuron, surrogate in cases:
            r = compare_with_reference(T, tau, force_last, trailing=(2, 5), tau_per_neuron=per_neuron,
                                       surrogate=surrogate, backend='triton')
            assert r['spikes_equal'], (T, tau, force_last)
            assert max(r['membrane'], r['grad_x'], r['grad_tau']) < 1e-10, (T, tau, force_last, r)
        r = compare_with_reference(17, 2.0, False, trailing=(40,), dtype=torch.float32, backend='triton')
        assert r['spikes_equal'] and r['membrane'] < 1e-5
        for dtype, huge in [(torch.float32, 1e30), (torch.float64, 1e300)]:      # any finite input
            r = compare_with_reference(140, 2.0, False, trailing=(6,), dtype=dtype, huge=huge, backend='triton')
            assert r['spikes_equal'] and r['finite_alike'], (dtype, huge)
        print('ok')
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-4000:]
