"""A backend that cannot be built: 'auto' falls back to the next one and says so once, as a warning; asked for by name, it is an error."""
import subprocess, sys, textwrap

def run(code, env_extra):
    import os
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)

def test_disabled_fused_kernel_asked_for_by_name_is_an_error():
    result = run("""
        import torch
        from pttfs import amos_lif_parallel, amos_lif_sequential
        from pttfs.backends import choose_backend
        x = 1 + torch.randn(20, 30, dtype=torch.float64)
        assert choose_backend(x, 2.0, __import__('pttfs').Sigmoid()) == 'torch'
        try: amos_lif_parallel(x, 2.0, backend='cpu-fused')
        except RuntimeError as e: assert 'PTTFS_DISABLE_FUSED' in str(e) and "backend='auto'" in str(e), e
        else: raise AssertionError('ran without the kernel')
        s, h = amos_lif_parallel(x, 2.0)
        assert torch.equal(s, amos_lif_sequential(x, 2.0)[0])
        print('ok')
    """, {"PTTFS_DISABLE_FUSED": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_a_failed_build_says_so_once_and_names_the_switch(tmp_path):
    "No working compiler: no promise of a compile, one warning naming PTTFS_DISABLE_FUSED, exact results; by name, an error."
    result = run("""
        import warnings, torch
        from pttfs import amos_lif_parallel, amos_lif_sequential
        x = 1 + torch.randn(20, 30, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for _ in range(3): s, h = amos_lif_parallel(x, 2.0)
        messages = [str(w.message) for w in caught if 'pttfs' in str(w.message)]
        assert len(messages) == 1 and 'cannot be built' in messages[0] and 'PTTFS_DISABLE_FUSED' in messages[0], messages
        assert torch.equal(s, amos_lif_sequential(x, 2.0)[0])
        try: amos_lif_parallel(x, 2.0, backend='cpu-fused')
        except RuntimeError as e: assert 'asked for by name' in str(e), e
        else: raise AssertionError('ran without the kernel')
        print('ok')
    """, {"CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert "pttfs: compiling the fused CPU kernel" not in result.stderr, result.stderr[-3000:]     # it cannot start: no promise
