"""Chapter 13's Fashion-MNIST studies: Tables 3, 4 and 5 in the paper's shape, the Eq. 7 hypothesis at T = 1, and
bfloat16 against float32. Each writes one JSON in benchmarks/ with its commands and the machine.

    python benchmarks/fmnist_studies.py [--data-dir ../shared/data] [--only NAME ...]

All runs share the study settings below: the MNIST-sized SCNN (C = 32, one convolution per block), a fixed
10,000-image training subset, random crops, batch 128. They are short (2 to 5 epochs), so they show the tables'
shape, not the paper's numbers. `--only neurons-equal --seed S` runs one seed of Table 3 with equal training.
"""
import argparse, os
from pttfs.evaluation import ablation

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('--data-dir', default='../shared/data')
p.add_argument('--only', nargs='*', default=None, help="precision, threshold, neurons, decoders, force-last, neurons-equal")
p.add_argument('--seed', type=int, default=0, help="neurons-equal: the seed of this pass (one file per seed)")
p.add_argument('--threads', type=int, default=None, help="threads per run (pttfs-train --threads); torch's default if left out")
args = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
STUDY = ('--train-subset', '10000', '--batch-size', '128', '--augment')

if args.threads: STUDY += ('--threads', str(args.threads))

def run(name, schedule, configurations, extra=STUDY):
    if args.only is None or name.split('-seed')[0] in args.only:
        ablation('fashion-mnist', schedule, configurations, extra_args=extra, data_dir=args.data_dir,
                 out=os.path.join(here, f'ablation-fmnist-{name}.json'))

# bfloat16 autocast against float32, on the recipe's network (two convolutions per block); first, while the
# machine has nothing else to do, since its wall times are compared
run('precision', '1:3', [dict(bf16=True), dict(bf16=False)], extra=STUDY + ('--convs-per-block', '2'))
# Table 5: the decoder threshold V_th of the TSD, at T = 4
run('threshold', '1:2,2:1,4:1', [dict(decoder_threshold=v) for v in (1, 2, 5, 10)])
# Table 3: SpikingJelly's LIF and PSN in the same body, 3 epochs at T = 4 (ours: the V_th = 1 run above, 4 epochs)
run('neurons', '4:3', [dict(neuron='lif'), dict(neuron='psn')])
# Table 3 with equal training: every neuron 5 epochs at T = 4, ATan for all (as the PSN paper), the LIF both as
# SpikingJelly's defaults and as the PSN paper's code configures it; one file per seed (--seed), so that seeds can
# run side by side; the default pass (no --only) runs seed 0 only
run(f'neurons-equal-seed{args.seed}', '4:5', [dict(neuron=n) for n in ('amos', 'lif-psnpaper', 'lif', 'psn')],
    extra=STUDY + ('--surrogate', 'atan', '--seed', str(args.seed)))
# Table 4: the four decoders, read at the end of each stage T = 1, 2, 4, 8
run('decoders', '1:1,2:1,4:1,8:1', [dict(decoder=d) for d in ('tsd', 'rate', 'twd', 'tq-ttfs')])
# The hypothesis for the paper's 1 % at T = 1: Eq. 7 in the output layer only
run('force-last', '1:2', [dict(decoder=d, output_force_last=True) for d in ('twd', 'tq-ttfs')])
