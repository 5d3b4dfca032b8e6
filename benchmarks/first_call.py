"""The README's quick start as a newcomer meets it: `pttfs-train --out DIR` on digits from a fresh install, i.e. with
an empty torch extensions folder, so that the fused kernel is compiled first. Stores the wall time of the whole
command, the compile (`compile_seconds` in the run's summary) and the training run without it, with the machine.

    python benchmarks/first_call.py --out benchmarks/first-call.json [--repeats 1]
"""
import argparse, json, os, subprocess, sys, tempfile, time

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('--out', required=True)
p.add_argument('--repeats', type=int, default=1, help="fresh installs timed, one after the other")
args = p.parse_args()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pttfs.runs import describe_machine, atomic_write

rows = []
for _ in range(args.repeats):
    with tempfile.TemporaryDirectory() as extensions, tempfile.TemporaryDirectory() as runs:
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=extensions)
        start = time.perf_counter()
        done = subprocess.run(['pttfs-train', '--out', os.path.join(runs, 'digits')], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode: sys.exit(done.stderr[-2000:])
        summary = json.load(open(os.path.join(runs, 'digits', 'summary.json')))
        rows.append(dict(wall_seconds=wall, compile_seconds=summary['compile_seconds'], run_wall_seconds=summary['wall_seconds'],
                         test_accuracy=summary['test_accuracy']))
        print(rows[-1], flush=True)
result = dict(command='python benchmarks/first_call.py ' + ' '.join(sys.argv[1:]), quick_start='pttfs-train --out runs/digits',
              machine=describe_machine('cpu'), rows=rows)
def write(tmp):
    with open(tmp, 'w') as f: json.dump(result, f, indent=1)
atomic_write(os.path.abspath(args.out), write)
