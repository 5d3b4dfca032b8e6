"""One trained network, its decoder threshold swept at evaluation time: an accuracy-latency curve (the decoder
issue, item 3, beyond the paper). Each point is `pttfs-eval RUN --decoder-threshold V` on the full test set,
stopping every image at its decision; the weights never change.

    python benchmarks/threshold_sweep.py RUN_DIR [RUN_DIR ...] --data-dir ../shared/data --out benchmarks/threshold-sweep.json
"""
import argparse, json, os, subprocess, sys, tempfile

THRESHOLDS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('runs', nargs='+', help="pttfs-train run folders")
    p.add_argument('--data-dir', default='../shared/data')
    p.add_argument('--thresholds', default=','.join(map(str, THRESHOLDS)))
    p.add_argument('--out', required=True)
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pttfs.runs import describe_machine, atomic_write
    result = dict(command='python benchmarks/threshold_sweep.py ' + ' '.join(sys.argv[1:]), machine=describe_machine('cpu'), runs=[])
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            with open(os.path.join(run, 'summary.json')) as f: summary = json.load(f)
            points = []
            for v in map(float, args.thresholds.split(',')):
                out = os.path.join(tmp, f"{os.path.basename(run)}-{v}.json")
                subprocess.run(['pttfs-eval', run, '--data-dir', args.data_dir, '--decoder-threshold', str(v), '--out', out],
                               check=True, capture_output=True)
                with open(out) as f: e = json.load(f)
                points.append(dict(decoder_threshold=v, test_accuracy=e['test_accuracy'], avg_timesteps=e['avg_timesteps'],
                                   decisions=e.get('decisions')))
                print(f"{os.path.basename(run)} V_th={v:5}: accuracy {e['test_accuracy']:.4f}, avg steps {e['avg_timesteps']:.3f}", flush=True)
            result['runs'].append(dict(run=os.path.basename(run), schedule=summary.get('schedule'), T=summary['T'],
                                       trained_threshold=summary['settings'].get('decoder_threshold', 1.0), points=points))
    def write(tmp_path):
        with open(tmp_path, 'w') as f: json.dump(result, f, indent=1)
    atomic_write(os.path.abspath(args.out), write)
