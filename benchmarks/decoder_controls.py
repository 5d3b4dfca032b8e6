"""Incremental T against equal-epoch controls on Fashion-MNIST (the decoder issue, item 1).

Every configuration trains the recipe's network (`--convs-per-block 2`, crops, bfloat16, batch 128, Adam at 3e-3)
for the same 10 epochs, with seeds 0, 1 and 2 (`--train-subset N`: on a fixed subset of N training images, for a
study that fits in a few hours of two cores; the test set is always the full 10,000 images):

    t1          --schedule 1:10                                 T = 1 only: the rate-decoded network (P1)
    inc         --schedule 1:6,2:2,4:2 --lr-schedule stage-cosine   incremental T, each stage its own cosine
    t4          --schedule 4:10                                  T = 4 only
    inc-cosine  --schedule 1:6,2:2,4:2                           incremental T, one cosine over all epochs (as the recipe)
    inc-vth     --schedule 1:6,2:2,4:2 --lr-schedule stage-cosine --stage-thresholds 1,2,4
                                                                 incremental T with the decoder's V_th raised by stage
    inc-long    --schedule 1:4,2:3,4:3 --lr-schedule stage-cosine   incremental T with longer late stages

These six change the rate once per epoch (`--lr-step epoch`, as they were run). The same with the rate stepped per
batch (the default now, every cosine ends near 0) are t1-b, inc-b, inc-cosine-b, t4-b and inc-vth-b; inc-vV and t4-vV
(V = 2, 4, 10) hold the decoder's V_th at V through training, incremental (stage-cosine) or at T = 4 only.

`--advance` trains the unfinished runs in RUNS_DIR, `--epochs-per-call` epochs per `pttfs-train ... --stop-after N
--resume` call, every configuration of `--configs` (in its order) for one seed of `--seeds` before the next, on `--workers` runs side by side
with `--threads` threads each (`--configs` picks configurations), and starts no call after `--minutes`: a stopped study loses only the calls in
flight, and `--advance` again continues it from the run folders. `--collect` evaluates every finished run at its
own T and at T = 1 (`pttfs-eval --T 1`: the same weights read at one step, which tells "more time steps" from
"more epochs"), with `--precise-bn` also at its own T with batch-norm statistics recomputed from its training
images (the running averages that training leaves move a TTFS network's accuracy by points), and writes one JSON with every run's rows and each configuration's mean and standard deviation.

    python benchmarks/decoder_controls.py --runs-dir ../runs/controls --train-subset 15000 --advance --minutes 80 --epochs-per-call 10
    python benchmarks/decoder_controls.py --runs-dir ../runs/controls --train-subset 15000 --collect benchmarks/decoder-controls-subset.json
"""
import argparse, json, os, statistics, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

COMMON = ('--dataset', 'fashion-mnist', '--augment', '--convs-per-block', '2', '--bf16', '--batch-size', '128')
OLD = ('--lr-step', 'epoch')    # the first controls changed the rate once per epoch (a 2-epoch stage ended at 0.5 of --lr)
STAGES = ('--schedule', '1:6,2:2,4:2')
CONFIGS = {
    't1': ('--schedule', '1:10') + OLD,
    'inc': STAGES + ('--lr-schedule', 'stage-cosine') + OLD,
    't4': ('--schedule', '4:10') + OLD,
    'inc-cosine': STAGES + OLD,
    'inc-vth': STAGES + ('--lr-schedule', 'stage-cosine', '--stage-thresholds', '1,2,4') + OLD,
    'inc-long': ('--schedule', '1:4,2:3,4:3', '--lr-schedule', 'stage-cosine') + OLD,
    # the rate stepped per batch (the default since --lr-step): every span's cosine ends near 0
    't1-b': ('--schedule', '1:10'),
    'inc-b': STAGES + ('--lr-schedule', 'stage-cosine'),
    'inc-cosine-b': STAGES,
    't4-b': ('--schedule', '4:10'),
    'inc-vth-b': STAGES + ('--lr-schedule', 'stage-cosine', '--stage-thresholds', '1,2,4'),
    # the decoder's V_th held through training (the trained-threshold study)
    **{f'inc-v{v}': STAGES + ('--lr-schedule', 'stage-cosine', '--decoder-threshold', str(v)) for v in (2, 4, 10)},
    **{f't4-v{v}': ('--schedule', '4:10', '--decoder-threshold', str(v)) for v in (2, 4, 10)},
    # a longer budget (the recipe's 20 epochs, 1:12,2:4,4:4) for thresholds that spread the decisions
    **{f'inc20-v{v}': ('--schedule', '1:12,2:4,4:4', '--lr-schedule', 'stage-cosine', '--decoder-threshold', str(v)) for v in (1, 3, 4)},
    # full Fashion-MNIST (run without --train-subset): the recipe's schedule with the rate stepped per batch, and
    # 22 epochs with longer T = 2 and T = 4 stages and the decoder's V_th held at 3
    'full-v1': ('--schedule', '1:20,2:1,4:1'),
    'full-v3': ('--schedule', '1:14,2:4,4:4', '--lr-schedule', 'stage-cosine', '--decoder-threshold', '3'),
}
SEEDS = (0, 1, 2)
EPOCHS = 10


def runs(configs=tuple(CONFIGS), seeds=SEEDS) -> list:
    "(name, flags) of every run, in the order they are advanced: every configuration of a seed before the next seed."
    return [(f'{config}-seed{seed}', CONFIGS[config] + ('--seed', str(seed))) for seed in seeds for config in configs]


def epochs_of(flags: tuple) -> int:
    "The epochs a run's --schedule trains."
    schedule = flags[flags.index('--schedule') + 1]
    return sum(int(stage.split(':')[1]) for stage in schedule.split(','))


def common(args) -> tuple:
    "The flags every run shares (the same on every call of a run, as --resume requires)."
    return COMMON + (('--train-subset', str(args.train_subset)) if args.train_subset else ())


def epochs_done(folder: str) -> int:
    try:
        with open(os.path.join(folder, 'metrics.jsonl')) as f: return sum(1 for line in f if line.strip())
    except OSError: return 0


def train_some_epochs(name: str, flags: tuple, args) -> str:
    folder = os.path.join(args.runs_dir, name)
    done = epochs_done(folder)
    argv = ['pttfs-train', *common(args), *flags, '--data-dir', args.data_dir, '--out', folder, '--threads', str(args.threads),
            '--stop-after', str(min(epochs_of(flags), done + args.epochs_per_call))] + (['--resume'] if os.path.exists(os.path.join(folder, 'last.pt')) else [])
    finished = subprocess.run(argv, capture_output=True, text=True)
    if finished.returncode: return f"{name}: failed ({finished.stderr.strip().splitlines()[-1:]})"
    return f"{name}: epoch {epochs_done(folder)}/{epochs_of(flags)}"


def advance(args):
    deadline = time.time() + 60 * args.minutes
    os.makedirs(args.runs_dir, exist_ok=True)
    busy, failed, choosing = set(), set(), threading.Lock()
    def next_run():
        for name, flags in runs(args.configs, args.seeds):
            if name not in busy and name not in failed and epochs_done(os.path.join(args.runs_dir, name)) < epochs_of(flags): return name, flags
        return None
    def worker():
        while time.time() < deadline:
            with choosing:                                  # two workers never take the same run
                chosen = next_run()
                if chosen is None: return
                busy.add(chosen[0])
            try:
                report = train_some_epochs(*chosen, args)
                if ': failed' in report: failed.add(chosen[0])      # not retried in this call: read the report
                print(time.strftime('%H:%M:%S'), report, flush=True)
            finally: busy.discard(chosen[0])
    with ThreadPoolExecutor(args.workers) as pool:
        for _ in range(args.workers): pool.submit(worker)


def evaluate(folder: str, T, data_dir: str, precise_bn: bool = False) -> dict:
    out = os.path.join(folder, f"eval-T{T or 'run'}{'-precise-bn' if precise_bn else ''}.json")
    if not os.path.exists(out):
        argv = ['pttfs-eval', folder, '--data-dir', data_dir, '--out', out] + (['--T', str(T)] if T else []) + \
               (['--precise-bn'] if precise_bn else [])
        subprocess.run(argv, check=True, capture_output=True)
    with open(out) as f: return json.load(f)


def history(folder: str) -> list:
    "The run's per-epoch rows: rate, accuracy and (runs made since they were logged) the decision table."
    keep = ('epoch', 'T', 'lr_first', 'lr_last', 'decoder_threshold', 'train_loss', 'test_accuracy', 'avg_timesteps', 'decisions')
    with open(os.path.join(folder, 'metrics.jsonl')) as f:
        return [{k: row[k] for k in keep if k in row} for row in map(json.loads, f)]


def collect(args):
    rows = []
    for name, flags in runs(args.configs, args.seeds):
        folder = os.path.join(args.runs_dir, name)
        if epochs_done(folder) < epochs_of(flags) or not os.path.exists(os.path.join(folder, 'summary.json')): continue
        with open(os.path.join(folder, 'summary.json')) as f: summary = json.load(f)
        own, at_one = evaluate(folder, None, args.data_dir), evaluate(folder, 1, args.data_dir)
        precise = evaluate(folder, None, args.data_dir, precise_bn=True) if args.precise_bn else {}
        rows.append(dict(run=name, config=name.rsplit('-seed', 1)[0], seed=int(name.rsplit('-seed', 1)[1]),
                         command=' '.join(['pttfs-train', *common(args), *flags]), T=summary['T'],
                         test_accuracy=own['test_accuracy'], avg_timesteps=own['avg_timesteps'],
                         decisions=own.get('decisions'), test_accuracy_at_T1=at_one['test_accuracy'],
                         wall_seconds=summary.get('wall_seconds'), history=history(folder),
                         **({} if not precise else dict(test_accuracy_precise_bn=precise['test_accuracy'],
                                                        avg_timesteps_precise_bn=precise['avg_timesteps'],
                                                        decisions_precise_bn=precise['decisions']))))
    configs = {}
    for config in args.configs:
        mine = [r for r in rows if r['config'] == config]
        if not mine: continue
        def spread(key):
            values = [r[key] for r in mine]
            return dict(mean=statistics.mean(values), sd=statistics.stdev(values) if len(values) > 1 else None, n=len(values))
        configs[config] = dict(test_accuracy=spread('test_accuracy'), test_accuracy_at_T1=spread('test_accuracy_at_T1'),
                               avg_timesteps=spread('avg_timesteps'))
        if args.precise_bn: configs[config].update(test_accuracy_precise_bn=spread('test_accuracy_precise_bn'),
                                                   avg_timesteps_precise_bn=spread('avg_timesteps_precise_bn'))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pttfs.runs import describe_machine
    from pttfs.runs import atomic_write
    result = dict(command='python benchmarks/decoder_controls.py ' + ' '.join(sys.argv[1:]), machine=describe_machine('cpu'),
                  epochs=(lambda e: e[0] if len(e) == 1 else e)(sorted({epochs_of(f) for _, f in runs(args.configs, args.seeds)})), train_subset=args.train_subset, planned=[name for name, _ in runs(args.configs, args.seeds)], runs=rows, configs=configs)
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(result, f, indent=1)
    atomic_write(os.path.abspath(args.collect), write)
    for config, row in configs.items():
        print(f"{config:11} n={row['test_accuracy']['n']} accuracy {row['test_accuracy']['mean']:.4f} "
              f"(at T=1: {row['test_accuracy_at_T1']['mean']:.4f}), avg steps {row['avg_timesteps']['mean']:.3f}")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs-dir', required=True, help="where the run folders live (outside the repository)")
    p.add_argument('--data-dir', default='../shared/data')
    p.add_argument('--advance', action='store_true')
    p.add_argument('--minutes', type=float, default=60, help="--advance: start no epoch after this many minutes")
    p.add_argument('--workers', type=int, default=2, help="--advance: runs trained side by side")
    p.add_argument('--threads', type=int, default=1, help="--advance: threads per run")
    p.add_argument('--epochs-per-call', type=int, default=1, help="--advance: epochs per pttfs-train call")
    p.add_argument('--train-subset', type=int, default=None, help="train every run on this many training images")
    p.add_argument('--collect', default=None, help="write the finished runs' results to this JSON")
    p.add_argument('--precise-bn', action='store_true', help="--collect: also evaluate each run with its batch-norm "
                   "statistics recomputed from its training images (pttfs-eval --precise-bn)")
    p.add_argument('--configs', default=','.join(list(CONFIGS)[:6]), help="these configurations only (comma-separated), in order")
    p.add_argument('--seeds', default='0,1,2', help="these seeds (comma-separated); every configuration of one before the next")
    args = p.parse_args()
    args.configs, args.seeds = args.configs.split(','), [int(v) for v in args.seeds.split(',')]
    if set(args.configs) - set(CONFIGS): p.error(f"--configs: unknown {sorted(set(args.configs) - set(CONFIGS))}; from {','.join(CONFIGS)}")
    args.runs_dir, args.data_dir = os.path.abspath(args.runs_dir), os.path.abspath(args.data_dir)
    if args.advance: advance(args)
    if args.collect: collect(args)
