"""The fused kernel's build: every C++ source ships with the package, and the Python side refuses tensors of a type
the kernels would misread (the entry points pass untyped pointers to the kernels' file)."""
import ast, fnmatch, pathlib
import pytest, torch
from pttfs.fused import BUILD_FILES, load_fused_extension, fused_error

ROOT = pathlib.Path(__file__).resolve().parents[1]


def package_data() -> list:
    "The globs setup.py ships under pttfs/."
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'package_data':
            return ast.literal_eval(node.value)['pttfs']
    raise AssertionError('setup.py has no package_data')


def test_every_kernel_source_is_package_data():
    globs = package_data()
    sources = sorted(p.relative_to(ROOT / 'pttfs').as_posix() for p in (ROOT / 'pttfs' / 'csrc').iterdir() if p.is_file())
    assert {f.name for f in BUILD_FILES} <= {pathlib.Path(s).name for s in sources}
    missing = [s for s in sources if not any(fnmatch.fnmatch(s, g) for g in globs)]
    assert not missing, f"not shipped by setup.py's package_data {globs}: {missing}"


@pytest.fixture(scope='module')
def extension():
    ext = load_fused_extension()
    if ext is None: pytest.skip(f"fused kernel unavailable: {fused_error()}")
    return ext


def test_tau_of_another_type_is_refused(extension):
    x, tau = torch.randn(4, 8), torch.full((8,), 2.0, dtype=torch.float64)
    with pytest.raises(RuntimeError, match='tau'):
        extension.amos_forward(x, tau, 2.0, 1.0, False, True, True)
    spikes = extension.amos_forward(x, tau.float(), 2.0, 1.0, False, True, True)[0]     # the right type runs
    assert torch.equal(spikes, extension.amos_forward(x, torch.empty(0), 2.0, 1.0, False, True, True)[0])


def test_unsupported_types_are_refused(extension):
    with pytest.raises(RuntimeError, match='float32, float64 or bfloat16'):
        extension.amos_forward(torch.ones(2, 3, dtype=torch.float16), torch.empty(0), 2.0, 1.0, False, False, False)
    _, membrane, first, second = extension.amos_forward(torch.randn(3, 5), torch.empty(0), 2.0, 1.0, False, True, True)
    with pytest.raises(RuntimeError, match='one dtype'):
        extension.amos_backward(torch.ones(3, 5, dtype=torch.float64), torch.empty(0), membrane, torch.empty(0), 2.0,
                                first, second, 1.0, False, 0, 4.0, False)
    with pytest.raises(RuntimeError, match='uint8 or both int32'):
        extension.amos_backward_recompute(torch.ones(3, 5), torch.randn(3, 5), torch.empty(0), 2.0, first.long(),
                                          second.long(), 1.0, False, 0, 4.0)
