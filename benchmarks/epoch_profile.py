"""Where a training step of the Fashion-MNIST recipe network spends its time (issue: a faster epoch).

Times training steps of the recipe network (`--convs-per-block 2`, T = 1, batch 128, Adam) on random images in
float32 and under bfloat16 autocast, profiles three steps of each with torch.profiler, and times the data
pipeline of one augmented epoch (random crops, as `--augment`). Writes one JSON with the machine.

    python benchmarks/epoch_profile.py --data-dir ../shared/data --out benchmarks/epoch-profile.json
"""
import argparse, json, os, sys, time
import torch
from torch import nn
from torch.profiler import profile, ProfilerActivity
from pttfs.runs import model_for, atomic_write; from pttfs.train_cli import parse_args; from pttfs.train import autocast_for
from pttfs.runs import describe_machine
from pttfs.data import load_dataset


def step_times(bf16: bool, steps: int = 20, batch: int = 128) -> dict:
    torch.manual_seed(0)
    model = model_for(vars(parse_args(['--dataset', 'fashion-mnist', '--convs-per-block', '2', '--schedule', '1:1',
                                       '--out', 'unused'])))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    def step():
        with autocast_for('cpu', bf16):
            logits, _ = model(images, 1)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
    for _ in range(3): step()
    times = []
    for _ in range(steps):
        start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3): step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    top = [dict(name=e.key, self_ms_per_step=e.self_cpu_time_total / 3e3, calls_per_step=e.count / 3,
                share=e.self_cpu_time_total / total) for e in rows[:12]]
    return dict(bf16=bf16, batch=batch, median_step_ms=1e3 * sorted(times)[len(times) // 2], profile_top=top)


def data_seconds(data_dir: str) -> float:
    "One epoch of augmented Fashion-MNIST batches through the DataLoader, as pttfs-train draws them."
    train = load_dataset('fashion-mnist', data_dir, train=True, augment=True)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in loader: pass
    return time.perf_counter() - start


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-dir', default='../shared/data')
    p.add_argument('--out', default='epoch-profile.json')
    args = p.parse_args()
    result = dict(command='python benchmarks/epoch_profile.py ' + ' '.join(sys.argv[1:]), machine=describe_machine('cpu'),
                  steps=[step_times(False), step_times(True)], data_epoch_seconds=data_seconds(args.data_dir))
    result['epoch_steps'] = -(-60000 // 128)
    for row in result['steps']:
        print(f"bf16={row['bf16']!s:5} step {row['median_step_ms']:.1f} ms, epoch of steps ~{row['median_step_ms'] * result['epoch_steps'] / 1e3:.0f} s; "
              + ', '.join(f"{r['name']} {100 * r['share']:.0f}%" for r in row['profile_top'][:5]))
    print(f"data pipeline, one augmented epoch: {result['data_epoch_seconds']:.1f} s")
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(result, f, indent=1)
    atomic_write(os.path.abspath(args.out), write)
