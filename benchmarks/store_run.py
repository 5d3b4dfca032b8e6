"""Store a finished pttfs-train run folder as one JSON in benchmarks/: the command, the machine, the wall clock, the
summary and every epoch's metrics.

    /usr/bin/time -f "wall %e s" pttfs-train ... --out RUN_DIR          # prints the wall clock of the whole command
    python benchmarks/store_run.py RUN_DIR --command "pttfs-train ..." --wall-seconds S --out benchmarks/NAME.json
"""
import argparse, json, os
from pttfs.runs import describe_machine
from pttfs.runs import atomic_write

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('run_dir')
p.add_argument('--command', required=True, help="the exact pttfs-train command (its --out may be any folder)")
p.add_argument('--wall-seconds', type=float, required=True, help="the whole command's wall clock, as /usr/bin/time gave it")
p.add_argument('--note', default=None, help="anything the numbers need to be read right (other load on the machine ...)")
p.add_argument('--out', required=True)
args = p.parse_args()
with open(os.path.join(args.run_dir, 'summary.json')) as f: summary = json.load(f)
with open(os.path.join(args.run_dir, 'metrics.jsonl')) as f: metrics = [json.loads(line) for line in f]
if not summary.get('finished'): raise SystemExit(f"{args.run_dir}: the run is not finished")
minutes, seconds = divmod(args.wall_seconds, 60)
result = dict(command=args.command, machine=describe_machine(summary['device']), wall_seconds=args.wall_seconds,
              wall_clock=f"{int(minutes)}:{seconds:05.2f}", note=args.note, summary=summary, metrics=metrics)
def write(tmp):
    with open(tmp, 'w') as f: json.dump(result, f, indent=1)
atomic_write(args.out, write)
print(f"{args.out}: {summary['dataset']}, {100 * summary['test_accuracy']:.2f} %, {summary['avg_timesteps']:.2f} steps, {result['wall_clock']}")
