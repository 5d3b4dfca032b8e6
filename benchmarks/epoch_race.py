"""A training epoch of the Fashion-MNIST recipe network, before and after a change, raced side by side (issue: a faster epoch).

Checks out `--before` (a git revision) into a temporary worktree and alternates, round by round, the two checkouts
on the same work, each in a fresh process with its own kernel build folder:

* `steps`: the median time of a training step of the recipe network (`--convs-per-block 2`, T = 1, batch 128,
  Adam) on random images, in float32 and under bfloat16 autocast;
* `epoch`: `pttfs-train --dataset fashion-mnist --augment --convs-per-block 2 --bf16 --schedule 1:1` on the real
  data, the recipe's T = 1 stage for one epoch, timed from the command's start to its summary (loading the data,
  one training pass, one evaluation of the 10,000 test images, the checkpoint and figures).

Then profiles three bfloat16 steps of the current checkout. Writes one JSON with the machine, the commands, every
round's times and the medians.

    python benchmarks/epoch_race.py --before c0c3c14 --data-dir ../shared/data --rounds 3 --step-rounds 4 --out benchmarks/epoch-race.json
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

STEP_SNIPPET = r'''
import json, time, torch
from torch import nn
from pttfs.runs import model_for; from pttfs.train_cli import parse_args; from pttfs.train import autocast_for
out = {}
for bf16 in (False, True):
    torch.manual_seed(0)
    model = model_for(vars(parse_args(['--dataset', 'fashion-mnist', '--convs-per-block', '2', '--schedule', '1:1', '--out', 'unused'])))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    def step():
        with autocast_for('cpu', bf16):
            logits, _ = model(images, 1)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
    for _ in range(3): step()
    times = []
    for _ in range(20):
        start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
    out['bf16' if bf16 else 'float32'] = 1e3 * sorted(times)[len(times) // 2]
print(json.dumps(out))
'''

PROFILE_SNIPPET = r'''
import json, torch
from torch import nn
from torch.profiler import profile, ProfilerActivity
from pttfs.runs import model_for; from pttfs.train_cli import parse_args; from pttfs.train import autocast_for
torch.manual_seed(0)
model = model_for(vars(parse_args(['--dataset', 'fashion-mnist', '--convs-per-block', '2', '--schedule', '1:1', '--out', 'unused'])))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
images, labels = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step():
    with autocast_for('cpu', True):
        logits, _ = model(images, 1)
        loss = nn.functional.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
for _ in range(3): step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3): step()
rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
total = sum(e.self_cpu_time_total for e in rows)
print(json.dumps([dict(name=e.key, self_ms_per_step=e.self_cpu_time_total / 3e3, calls_per_step=e.count / 3,
                       share=e.self_cpu_time_total / total) for e in rows[:12]]))
'''


def run_python(checkout: str, code: str, ext_dir: str, args=()) -> str:
    "Run `code` with `checkout`'s pttfs first on the path; its stdout."
    env = dict(os.environ, PYTHONPATH=checkout, TORCH_EXTENSIONS_DIR=ext_dir)
    done = subprocess.run([sys.executable, '-c', code, *args], env=env, cwd=checkout, capture_output=True, text=True)
    if done.returncode: raise SystemExit(f"failed in {checkout}:\n{done.stderr[-3000:]}")
    return done.stdout


def epoch_seconds(checkout: str, data_dir: str, ext_dir: str, out: str) -> float:
    argv = ['pttfs-train', '--dataset', 'fashion-mnist', '--data-dir', data_dir, '--augment', '--convs-per-block', '2',
            '--bf16', '--schedule', '1:1', '--out', out]
    code = 'import sys; from pttfs.train_cli import main; sys.argv = sys.argv[1:]; main()'
    start = time.perf_counter()
    run_python(checkout, code, ext_dir, argv)
    return time.perf_counter() - start


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--before', required=True, help="the git revision to race against the working tree")
    p.add_argument('--data-dir', default='../shared/data')
    p.add_argument('--rounds', type=int, default=2, help="rounds of steps and a one-epoch run in each checkout")
    p.add_argument('--step-rounds', type=int, default=0, help="further rounds of steps only (the steps vary more than epochs)")
    p.add_argument('--out', required=True)
    args = p.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_dir = os.path.abspath(args.data_dir)
    sys.path.insert(0, here)
    from pttfs.runs import describe_machine
    from pttfs.runs import atomic_write
    scratch = tempfile.mkdtemp(prefix='pttfs-race-')
    before = os.path.join(scratch, 'before')
    subprocess.run(['git', '-C', here, 'worktree', 'add', '--detach', before, args.before], check=True, capture_output=True)
    commit = subprocess.run(['git', '-C', before, 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    checkouts = {'before': before, 'after': here}
    result = dict(command='python benchmarks/epoch_race.py ' + ' '.join(sys.argv[1:]), machine=describe_machine('cpu'),
                  before=dict(revision=args.before, commit=commit), after='the working tree', rounds=[])
    try:
        for name, checkout in checkouts.items():                  # build each kernel once, outside the timings
            where = run_python(checkout, 'import torch, pttfs; from pttfs.neuron import AMOSLIF; '
                               'AMOSLIF(step_mode="m")(torch.randn(1, 4)); print(pttfs.__file__)', os.path.join(scratch, f'ext-{name}'))
            if not where.strip().splitlines()[-1].startswith(checkout): raise SystemExit(f"{name}: imported {where!r}, not {checkout}")
        for r in range(args.rounds + args.step_rounds):
            row = {}
            for name, checkout in (checkouts.items() if r % 2 == 0 else reversed(checkouts.items())):
                ext = os.path.join(scratch, f'ext-{name}')
                steps = json.loads(run_python(checkout, STEP_SNIPPET, ext).strip().splitlines()[-1])
                row[name] = dict(step_ms=steps)
                if r < args.rounds:
                    row[name]['epoch_seconds'] = epoch_seconds(checkout, data_dir, ext, os.path.join(scratch, f'run-{name}-{r}'))
                print(f"round {r + 1} {name:6}: step float32 {steps['float32']:.1f} ms, bf16 {steps['bf16']:.1f} ms"
                      + (f"; one-epoch run {row[name]['epoch_seconds']:.1f} s" if r < args.rounds else ''), flush=True)
            result['rounds'].append(row)
        summary = {}
        for name in checkouts:
            summary[name] = dict(step_ms_float32=statistics.median(r[name]['step_ms']['float32'] for r in result['rounds']),
                                 step_ms_bf16=statistics.median(r[name]['step_ms']['bf16'] for r in result['rounds']),
                                 epoch_seconds=statistics.median(r[name]['epoch_seconds'] for r in result['rounds'] if 'epoch_seconds' in r[name]))
        summary['epoch_speedup'] = summary['before']['epoch_seconds'] / summary['after']['epoch_seconds']
        summary['step_speedup_bf16'] = summary['before']['step_ms_bf16'] / summary['after']['step_ms_bf16']
        result['median'] = summary
        result['profile_after_bf16'] = json.loads(run_python(here, PROFILE_SNIPPET, os.path.join(scratch, 'ext-after')).strip().splitlines()[-1])
        print(json.dumps(summary, indent=1))
    finally:
        subprocess.run(['git', '-C', here, 'worktree', 'remove', '--force', before], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(result, f, indent=1)
    atomic_write(os.path.abspath(args.out), write)
