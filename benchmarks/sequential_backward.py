"""Time the sequential reference's BPTT backward against T, for three ways of slicing the input X[t].

`x[t]` (one autograd node per step, each backward writing a zero tensor of the whole input), `x.unbind(0)` (one node
with T outputs) and the two-level slicing `amos_lif_sequential` uses (blocks of 256 steps, then steps). The loop is
otherwise amos_lif_sequential's. Run: python benchmarks/sequential_backward.py > benchmarks/sequential-backward.json
"""
import datetime, json, platform, sys, time
import torch
from pttfs.surrogate import Sigmoid

def slices(x, how):
    if how == 'index': return [x[t] for t in range(x.shape[0])]
    if how == 'unbind': return x.unbind(0)
    return [s for block in x.split(256) for s in block.unbind(0)]

def backward_seconds(T, N, how):
    x = torch.randn(T, N, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    decay, surrogate = 1 - 1 / tau, Sigmoid()
    h, fired, spikes, membrane = torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64), [], []
    for x_t in slices(x, how):
        h = decay * h + x_t / tau
        s = (1 - fired) * surrogate(h - 1.0)
        fired = fired + s
        spikes.append(s); membrane.append(h)
    loss = torch.stack(spikes).sum() + torch.stack(membrane).sum()
    start = time.perf_counter(); loss.backward(); return time.perf_counter() - start

def cpu_model():
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor()

torch.manual_seed(0)
rows = []
for T in (10_000, 14_000, 30_000):
    for how in ('index', 'unbind', 'two-level'):
        rows.append(dict(T=T, N=64, slicing=how, backward_seconds=round(backward_seconds(T, 64, how), 2)))
        print(rows[-1], file=sys.stderr, flush=True)
print(json.dumps(dict(command='python benchmarks/sequential_backward.py', date=datetime.date.today().isoformat(),
                      machine=dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                                   python=platform.python_version()), rows=rows), indent=1))
