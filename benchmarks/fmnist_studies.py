"""Chapter 13's Fashion-MNIST studies: Tables 3, 4 and 5 in the paper's shape, the Eq. 7 hypothesis at T = 1, and
bfloat16 against float32. Each writes one JSON in benchmarks/ with its commands and the machine.

    python benchmarks/fmnist_studies.py [--data-dir ../shared/data] [--only NAME ...]

All runs share the study settings below: the MNIST-sized SCNN (C = 32, one convolution per block), a fixed
10,000-image training subset, random crops, batch 128. They are short (2 to 5 epochs), so they show the tables'
shape, not the paper's numbers. `--only neurons-equal --seed S` runs one seed of Table 3 with equal training;
`--only readout-t1 readout-t4 --seed S` the same with the readout separated from the neuron.
"""
import argparse, os
from pttfs.run_eval import ablation

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('--data-dir', default='../shared/data')
p.add_argument('--only', nargs='*', default=None, help="precision, threshold, neurons, decoders, force-last, neurons-equal")
p.add_argument('--seed', type=int, default=0, help="neurons-equal: the seed of this pass (one file per seed)")
p.add_argument('--readout-vth', type=float, default=4.0, help="readout: the decoder threshold of the AMOS + TSD row")
p.add_argument('--threads', type=int, default=None, help="threads per run (pttfs-train --threads); torch's default if left out")
args = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
STUDY = ('--train-subset', '10000', '--batch-size', '128', '--augment')

if args.threads: STUDY += ('--threads', str(args.threads))

def run(name, schedule, configurations, extra=STUDY, precise_bn=False, default=True):
    if (args.only is None and default) or (args.only is not None and name.split('-seed')[0] in args.only):
        ablation('fashion-mnist', schedule, configurations, extra_args=extra, data_dir=args.data_dir,
                 out=os.path.join(here, f'ablation-fmnist-{name}.json'), precise_bn=precise_bn)

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
# Table 3 with the readout separated from the neuron (the decoder issue, item 5): the same equal training (5 epochs,
# ATan), the baselines at T = 1, where rate decoding reads one step as the TSD does when it decides at t = 0, and
# ours at T = 4 read by rate decoding (four steps, as the baselines were) and by the TSD at a threshold that spreads
# its decisions (--readout-vth); each run also evaluated with precise batch norm. Not in the default pass.
EQUAL = STUDY + ('--surrogate', 'atan', '--seed', str(args.seed))
run(f'readout-t1-seed{args.seed}', '1:5', [dict(neuron=n) for n in ('lif-psnpaper', 'psn')], extra=EQUAL, precise_bn=True, default=False)
run(f'readout-t4-seed{args.seed}', '4:5', [dict(decoder='rate'), dict(decoder_threshold=args.readout_vth)], extra=EQUAL,
    precise_bn=True, default=False)
# Table 4: the four decoders, read at the end of each stage T = 1, 2, 4, 8
run('decoders', '1:1,2:1,4:1,8:1', [dict(decoder=d) for d in ('tsd', 'rate', 'twd', 'tq-ttfs')])
# The hypothesis for the paper's 1 % at T = 1: Eq. 7 in the output layer only
run('force-last', '1:2', [dict(decoder=d, output_force_last=True) for d in ('twd', 'tq-ttfs')])
