# %% [markdown]
# # Appendix D: the `pttfs-bench` command
#
# > Chapter 14's benchmarks from the command line: the flags, checked before any work, one JSON file with the machine and every measurement, and the figures beside it.

# %% [markdown]
# After this appendix you can run the speed benchmark on your machine and know what it writes.

# %%
#| default_exp bench_cli

# %%
#| export
import argparse
import json
import os
import re
import sys
from pttfs.bench import (NEURONS, TRAIN_PROTOCOL, memory_rates, isolated_neuron_benchmark, network_benchmark,
                         add_peak_memory, ratios, plot_ratios, plot_isolated)
from pttfs.runs import (OneLineParser, HelpFormatter, atomic_write, check_device, default_device, check_out_file,
                        describe_machine, check_figure_files, save_figure)

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
import torch


# %% [markdown]
# ## The command line
#
# `pttfs-bench` runs both benchmarks and writes one JSON file (the machine, the settings, every measurement and
# the ratios) and the figures next to it. With `--quick`, a small sweep for a smoke test.

# %%
#| export
def _int_list(text: str) -> list:
    "'4,16,2^8' -> [4, 16, 256]: positive integers, each written out or as 2^k."
    values = []
    for part in text.split(','):
        match = re.fullmatch(r'\s*(?:(\d+)|2\^(\d+))\s*', part)
        if not match: raise argparse.ArgumentTypeError(f"expected positive integers or 2^k (k = 0, 1, ...), separated by commas; got {part.strip()!r}")
        values.append(int(match[1]) if match[1] is not None else 2 ** int(match[2]))
    if any(v <= 0 for v in values): raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


# %%
#| export
_BENCH_EXAMPLES = """examples:
  pttfs-bench --quick --out quick.json                      a small sweep (about a minute), figures beside quick.json
  pttfs-bench --N 2^14 --T 4,64 --modes train --out b.json  one neuron count, two T, training only
  pttfs-bench --neurons amos --no-network --out ours.json   our neuron alone (no SpikingJelly needed)"""
QUICK = dict(N=[2**10, 2**12], T=[4, 16], repeats=3, warmup=1, network_C=8, network_B=[2])   # what --quick sets
_SIZE_DEFAULTS = dict(N=[2**10, 2**14, 2**18], T=[4, 16, 64, 256], repeats=15, warmup=3, network_C=32, network_B=[16])
MAX_NETWORK_ELEMENTS = 2**32      # T·B·C·32·32 of one layer's activations: far beyond any machine's patience


def _bench_parser() -> OneLineParser:
    p = OneLineParser(prog='pttfs-bench', formatter_class=HelpFormatter, epilog=_BENCH_EXAMPLES,
                      description="Time the AMOS LIF neuron against SpikingJelly's LIF and PSN (Figs. 3-4).")
    p.add_argument('--device', default=default_device(), help="cpu, cuda or cuda:N")
    p.add_argument('--N', type=_int_list, default=None, help="neuron counts, e.g. 2^10,2^14,2^18 (default: 2^10,2^14,2^18)")
    p.add_argument('--T', type=_int_list, default=None, help="time steps, e.g. 4,16,64,256 (default: 4,16,64,256)")
    p.add_argument('--modes', default='train,inference', help="train (forward and backward of a loss) and/or inference (forward "
                   "without gradients)")
    p.add_argument('--neurons', default='amos,sj-lif,sj-psn', help=f"comma-separated, from {','.join(NEURONS)}; the sj- ones "
                   "need SpikingJelly")
    p.add_argument('--network-T', type=_int_list, default=[4], help="time steps of the full-network benchmark")
    p.add_argument('--network-B', type=_int_list, default=None, help="batch sizes of the full-network benchmark (default: 16)")
    p.add_argument('--network-C', type=int, default=None, help="channels C of the CIFAR net (default: 32; the paper: 256)")
    p.add_argument('--no-network', action='store_true', help="skip the full-network benchmark")
    p.add_argument('--repeats', type=int, default=None, help="timed repetitions per point, after the warm-up (default: 15)")
    p.add_argument('--warmup', type=int, default=None, help="untimed calls per point first (default: 3)")
    p.add_argument('--rounds', type=int, default=1, help="measure each point's neurons in turn this many times (median)")
    p.add_argument('--max-elements', type=int, default=2**26, help="skip isolated points with T*N above this")
    p.add_argument('--peak-memory', action='store_true', help="after the timings, record each isolated step's peak memory (CPU: a process per measurement, ~3 s each)")
    p.add_argument('--quick', action='store_true', help="a small sweep: N=2^10,2^12; T=4,16; 3 repeats (with none of those flags)")
    p.add_argument('--out', default='bench.json', help="the JSON file to write (figures go next to it); never replaced "
                   "unless --overwrite")
    p.add_argument('--overwrite', action='store_true', help="replace --out if it is an earlier pttfs-bench output")
    return p


# %%
#| export
def parse_args(argv=None):
    "`pttfs-bench`'s flags, checked before any work: a bad one is one line and exit code 2."
    p = _bench_parser()
    args = p.parse_args(argv)
    given = [k for k in QUICK if getattr(args, k) is not None]
    if args.quick and given:
        p.error(f"--quick sets {', '.join('--' + k.replace('_', '-') for k in QUICK)}; leave out "
                f"{', '.join('--' + k.replace('_', '-') for k in given)}, or drop --quick")
    for key, value in (QUICK if args.quick else _SIZE_DEFAULTS).items():
        if getattr(args, key) is None: setattr(args, key, value)
    for name in args.neurons.split(','):
        if name not in NEURONS: p.error(f"--neurons: unknown neuron {name!r}; choose from {', '.join(NEURONS)}")
    if any(name.startswith('sj-') for name in args.neurons.split(',')):
        try: import spikingjelly  # noqa: F401
        except ImportError: p.error("--neurons: sj-lif and sj-psn need SpikingJelly (pip install \"pttfs[bench]\"); "
                                    "to time our neuron alone, pass --neurons amos")
    for mode in args.modes.split(','):
        if mode not in ('train', 'inference'): p.error(f"--modes: unknown mode {mode!r}; choose from train, inference")
    if args.repeats < 1: p.error("--repeats must be at least 1")
    if args.rounds < 1: p.error("--rounds must be at least 1")
    if args.warmup < 0: p.error("--warmup must be at least 0")
    if args.network_C < 1: p.error("--network-C must be positive")
    if args.max_elements < 1: p.error("--max-elements must be positive")
    if all(T * N > args.max_elements for T in args.T for N in args.N):
        p.error(f"every --T × --N point is above --max-elements {args.max_elements}: nothing would be measured")
    if not args.no_network:
        largest = max(args.network_T) * max(args.network_B) * args.network_C * 32 * 32
        if largest > MAX_NETWORK_ELEMENTS:
            p.error(f"--network-T × --network-B × --network-C × 32 × 32 reaches {largest:.3g} values per layer, above "
                    f"{MAX_NETWORK_ELEMENTS:.3g}: choose smaller values, or --no-network")
    check_device(p, args.device)
    args.out = check_out_file(p, args.out, args.overwrite)
    stem, modes = os.path.splitext(args.out)[0], args.modes.split(',')          # the figures beside it: checked now too
    check_figure_files(p, [f"{stem}-{part}{mode}.png" for part in ('', 'network-') for mode in modes], args.overwrite)
    return args


def main(argv=None):
    "The `pttfs-bench` command: run the benchmarks, write the JSON and the figures."
    run(parse_args(argv))


def _write_json(result: dict, path: str):
    "Write atomically: a reader (or a run killed mid-write) never sees half a file."
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(result, f, indent=1)
    atomic_write(path, write)


# %%
#| export
def run(args) -> dict:
    "Run the benchmarks for parsed arguments; write and return the result."
    from tqdm import tqdm
    bar = tqdm(desc='pttfs-bench', disable=not sys.stderr.isatty(), bar_format='{desc} [{elapsed}]')
    progress = lambda text: (bar.set_description_str(text), bar.refresh())
    modes, neurons = tuple(args.modes.split(',')), tuple(args.neurons.split(','))
    result = dict(machine=describe_machine(args.device), settings={k: v for k, v in vars(args).items()}, protocol=TRAIN_PROTOCOL)
    result['machine']['memory'] = memory_rates(args.device, 16 if args.quick else 256)
    result['isolated'] = isolated_neuron_benchmark(args.N, args.T, modes, neurons, args.device, args.warmup, args.repeats,
                                                   args.max_elements, progress=progress, rounds=args.rounds)
    result['isolated_ratios'] = ratios(result['isolated'])
    out = os.path.abspath(args.out)
    _write_json(result, out)                        # a run killed during the network part keeps the isolated one
    if not args.no_network:
        result['network'] = network_benchmark(args.network_T, args.network_B, args.network_C, neurons, modes, args.device,
                                              max(1, args.warmup - 1), max(3, args.repeats // 3), progress=progress)
        result['network_ratios'] = ratios(result['network'], keys=('T', 'B', 'C', 'mode'))
        _write_json(result, out)
    if args.peak_memory:                            # last: its processes would disturb the timings
        add_peak_memory(result['isolated'], args.device, progress)
        _write_json(result, out)
    bar.close()
    stem = os.path.splitext(out)[0]
    import matplotlib.pyplot as plt
    def save(fig, path): save_figure(fig, path, dpi=120); plt.close(fig)
    for mode in modes: save(plot_isolated(result, mode), f"{stem}-{mode}.png")
    if len({(r['T'], r['B']) for r in result.get('network', [])}) > 1:            # Fig. 4 needs a sweep over T or B
        for mode in modes: save(plot_ratios(result, mode, 'network'), f"{stem}-network-{mode}.png")
    for row in result['isolated_ratios']:
        print(' '.join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    for row in result.get('network_ratios', []):
        print('network', ' '.join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"wrote {out}")
    return result


# %% [markdown]
# A smoke test of the command line (a tiny sweep, without SpikingJelly's PSN to keep it short; its output is
# timings, so it is not compared):

# %%
# NBVAL_IGNORE_OUTPUT
import tempfile
from pathlib import Path
import contextlib, io
with tempfile.TemporaryDirectory() as tmp:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(['--N', '2^10,2^12', '--T', '4,16', '--warmup', '1', '--neurons', 'amos,amos-torch', '--no-network', '--repeats', '2', '--out', f'{tmp}/quick.json'])
    print(printed.getvalue().replace(tmp, 'TMP').strip())                   # the ratios, and where it wrote (no local path)
    test_eq(sorted(os.listdir(tmp)), ['quick-inference.png', 'quick-train.png', 'quick.json'])
    result = json.loads(Path(tmp, 'quick.json').read_text())
test_eq({r['neuron'] for r in result['isolated']}, {'amos', 'amos-torch'})

# %%
test_fail(lambda: parse_args(['--neurons', 'loihi']), exc=SystemExit)
test_fail(lambda: parse_args(['--N', 'many']), exc=SystemExit)
print("bad flags exit with an error naming the flag")

# %% [markdown]
# ## Summary
# `pttfs-bench` checks every flag and every file it will write before any work, runs the isolated-neuron and network benchmarks of chapter 14, writes one JSON file (kept up to date as each part finishes, so a killed run keeps what it measured) and the Fig. 3-style figures beside it.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
