"""Early exit against full evaluation: the test split of a trained run, in one process, at several T.

Run (the MNIST recipe's run folder, trained by the command stored in the JSON):
  python benchmarks/early_exit.py RUN_DIR --data-dir ../shared/data --out benchmarks/early-exit-mnist.json
The test images are decoded once into a tensor. For each T, the full evaluation and early exit run in turn
(`rounds` times, the median kept), each over every test image; predictions and decision steps must be identical. Writes the JSON and a figure beside it.
"""
import argparse, datetime, json, os, platform, statistics, sys
import torch
from pttfs.run_eval import evaluate_run
from pttfs.runs import atomic_write, load_checkpoint
from pttfs.data import load_dataset

p = argparse.ArgumentParser()
p.add_argument('run_dir'); p.add_argument('--data-dir', default='data'); p.add_argument('--out', required=True)
p.add_argument('--T', default='4,8,16'); p.add_argument('--rounds', type=int, default=3); p.add_argument('--batch-size', type=int, default=256)
args = p.parse_args()
settings = load_checkpoint(os.path.join(args.run_dir, 'last.pt'))['settings']
summary_path = os.path.join(args.run_dir, 'summary.json')
summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
test_set = load_dataset(settings['dataset'], args.data_dir, train=False)
images, labels = zip(*(test_set[i] for i in range(len(test_set))))   # decoded once: the timings are the network's
test_set = torch.utils.data.TensorDataset(torch.stack(images), torch.tensor(labels))
evaluate_run(args.run_dir, T=4, test_set=torch.utils.data.Subset(test_set, range(min(512, len(test_set)))))            # warm-up
evaluate_run(args.run_dir, T=4, full=True, test_set=torch.utils.data.Subset(test_set, range(min(512, len(test_set)))))
rows = []
for T in [int(t) for t in args.T.split(',')]:
    runs = {'full': [], 'early-exit': []}
    for _ in range(args.rounds):
        for mode in ('full', 'early-exit'):
            runs[mode].append(evaluate_run(args.run_dir, T=T, full=mode == 'full', batch_size=args.batch_size,
                                           test_set=test_set, keep_predictions=True))
            print(T, mode, f"{runs[mode][-1]['wall_seconds']:.2f} s", file=sys.stderr, flush=True)
    full, early = runs['full'][0], runs['early-exit'][0]
    seconds = {mode: statistics.median(r['wall_seconds'] for r in rs) for mode, rs in runs.items()}
    rows.append(dict(T=T, identical_predictions=full['predictions'] == early['predictions'],
                     identical_decisions=full['t_first'] == early['t_first'],
                     test_accuracy=early['test_accuracy'], avg_timesteps=early['avg_timesteps'],
                     steps_computed={'full': full['steps_computed'], 'early-exit': early['steps_computed']},
                     wall_seconds=seconds, all_wall_seconds={m: [r['wall_seconds'] for r in rs] for m, rs in runs.items()},
                     speedup=seconds['full'] / seconds['early-exit'], ideal_speedup=T / early['steps_computed'],
                     spikes_per_sample_to_decision=early['spikes_per_sample_to_decision_total'],
                     spikes_per_sample_all_steps=full['spikes_per_sample_all_steps_total'],
                     decisions=early['decisions']))
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
result = dict(command='python benchmarks/early_exit.py ' + ' '.join(sys.argv[1:]), date=datetime.date.today().isoformat(),
              machine=dict(cpu=cpu, threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version()),
              run_settings=settings, run_summary=summary, samples=len(test_set), rounds=args.rounds, batch_size=args.batch_size,
              protocol="test images decoded and normalised once into a tensor; per T, full and early exit alternate "
                       "`rounds` times in one process, the median wall time kept; wall time covers the batches only",
              rows=rows)
def write(tmp):
    with open(tmp, 'w') as f: json.dump(result, f, indent=1)
atomic_write(args.out, write)                   # the one atomic_write (chapter 12): no half-written file on a kill
for r in rows: print(f"T={r['T']}: full {r['wall_seconds']['full']:.2f} s, early exit {r['wall_seconds']['early-exit']:.2f} s, "
                     f"speed-up {r['speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x), identical {r['identical_predictions']}")
