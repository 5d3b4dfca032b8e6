"""A backend that cannot be built falls back to the next one and says so once, as a warning."""
import subprocess, sys, textwrap

def run(code, env_extra):
    import os
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)

def test_disabled_fused_kernel_falls_back_with_one_warning():
    result = run("""
        import warnings, torch
        from pttfs import amos_lif_parallel, amos_lif_sequential
        from pttfs.backends import choose_backend
        x = 1 + torch.randn(20, 30, dtype=torch.float64)
        assert choose_backend(x, 2.0, __import__('pttfs').Sigmoid()) == 'torch'
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for _ in range(3): s, h = amos_lif_parallel(x, 2.0, backend='cpu-fused')
        messages = [str(w.message) for w in caught if 'pttfs' in str(w.message)]
        assert len(messages) == 1, messages
        assert 'PTTFS_DISABLE_FUSED' in messages[0], messages
        assert torch.equal(s, amos_lif_sequential(x, 2.0)[0])
        print('ok')
    """, {"PTTFS_DISABLE_FUSED": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_a_failed_build_says_so_once_and_names_the_switch(tmp_path):
    "No working compiler: one line that the kernel is being compiled, one warning naming PTTFS_DISABLE_FUSED, exact results."
    result = run("""
        import warnings, torch
        from pttfs import amos_lif_parallel, amos_lif_sequential
        x = 1 + torch.randn(20, 30, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for _ in range(3): s, h = amos_lif_parallel(x, 2.0)
        messages = [str(w.message) for w in caught if 'pttfs' in str(w.message)]
        assert len(messages) == 1 and 'could not be built' in messages[0] and 'PTTFS_DISABLE_FUSED' in messages[0], messages
        assert torch.equal(s, amos_lif_sequential(x, 2.0)[0])
        print('ok')
    """, {"CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert result.stderr.count("pttfs: compiling the fused CPU kernel") == 1, result.stderr[-3000:]
