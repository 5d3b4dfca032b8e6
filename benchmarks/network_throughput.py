"""Throughput of the networks we train, with AMOS, SpikingJelly LIF and PSN neurons, in one run (the speed issue, item 2).

Our analogue of the paper's Fig. 4 on the networks pttfs trains: images per second of

* `fmnist`: the Fashion-MNIST recipe network (`--convs-per-block 2`, batch 128) at T = 1, 4, 8;
* `cifar`: the CIFAR network at the paper's width (C = 256), batch 16, T = 4;

each built by `pttfs-train`'s own `model_for` with `--neuron amos` (TSD read-out), `lif` or `psn` (rate read-out,
the baselines' configuration), in training mode (forward, cross-entropy, backward and an Adam step, as
`train_epoch` does it) and in inference mode (a full T-step forward under `torch.no_grad()`: no early exit, so
every neuron does the same work), in float32 and under bfloat16 autocast (the recipe's precision on CPU). Every
round measures each neuron in turn at each point (A B C A B C ...), and the median of the rounds is kept, so the
ratios are side by side. Random images and labels: the data pipeline is not timed here (see epoch_race.py).

    python benchmarks/network_throughput.py --rounds 3 --out benchmarks/network-throughput.json
"""
import argparse, json, os, statistics, sys, time
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pttfs.runs import model_for, describe_machine, atomic_write; from pttfs.train_cli import parse_args; from pttfs.train import autocast_for

NETWORKS = {  # name: (pttfs-train flags, batch, Ts)
    'fmnist': (['--dataset', 'fashion-mnist', '--convs-per-block', '2'], 128, (1, 4, 8)),
    'cifar': (['--dataset', 'cifar10', '--architecture', 'cifar', '--channels', '256'], 16, (4,)),
}
NEURONS = ('amos', 'lif', 'psn')


def build(network: str, neuron: str, T: int):
    flags, batch, _ = NETWORKS[network]
    args = parse_args(flags + ['--neuron', neuron, '--schedule', f'{T}:1', '--out', 'unused'])
    torch.manual_seed(0)
    model = model_for(vars(args))
    size = 28 if network == 'fmnist' else 32
    images = torch.randn(batch, 1 if network == 'fmnist' else 3, size, size)
    return model, images, torch.randint(0, 10, (batch,))


def seconds_per_call(model, images, labels, T: int, mode: str, bf16: bool, warmup: int, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    def train_step():
        model.train()
        with autocast_for('cpu', bf16):
            logits, _ = model(images, T)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
    def inference():
        model.eval()
        with torch.no_grad(), autocast_for('cpu', bf16): model(images, T)
    call = train_step if mode == 'train' else inference
    for _ in range(warmup): call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--networks', default='fmnist,cifar')
    p.add_argument('--precisions', default='float32,bf16')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--out', required=True)
    args = p.parse_args()
    points = [(net, T, precision, mode) for net in args.networks.split(',') for T in NETWORKS[net][2]
              for precision in args.precisions.split(',') for mode in ('train', 'inference')]
    rounds = {}
    for r in range(args.rounds):
        for net, T, precision, mode in points:
            for neuron in NEURONS:
                model, images, labels = build(net, neuron, T)
                s = seconds_per_call(model, images, labels, T, mode, precision == 'bf16', args.warmup, args.repeats)
                rounds.setdefault((net, T, precision, mode, neuron), []).append(s)
                print(f"round {r + 1}: {net} T={T} {precision} {mode} {neuron}: {len(images) / s:8.1f} images/s", flush=True)
    rows = []
    for (net, T, precision, mode, neuron), times in rounds.items():
        batch = NETWORKS[net][1]
        rows.append(dict(network=net, T=T, batch=batch, precision=precision, mode=mode, neuron=neuron,
                         seconds=statistics.median(times), seconds_rounds=times, images_per_second=batch / statistics.median(times)))
    result = dict(command='python benchmarks/network_throughput.py ' + ' '.join(sys.argv[1:]), machine=describe_machine('cpu'),
                  networks={k: dict(flags=v[0], batch=v[1], T=list(v[2])) for k, v in NETWORKS.items()},
                  protocol="train: forward, cross-entropy, backward, Adam step; inference: full T-step forward under no_grad; "
                           "random images; median over rounds of the median of --repeats calls",
                  settings=vars(args), rows=rows)
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(result, f, indent=1)
    atomic_write(os.path.abspath(args.out), write)
    print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
