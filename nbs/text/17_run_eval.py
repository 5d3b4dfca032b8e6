# %% [markdown]
# # Appendix C: evaluating a run: `load_run`, `pttfs-eval` and the studies
#
# > A run folder back in Python (`load_run`), evaluated the way a chip would run it (`evaluate_run`, `pttfs-eval`: early exit, decisions, spikes to the decision), and the studies of chapter 13 re-run (`ablation`).

# %% [markdown]
# After this appendix you can load a trained run's network, evaluate it at another T or threshold, with early exit or in full, and re-run chapter 13's studies.

# %%
#| default_exp run_eval

# %%
#| export
import json
import math
import os
import sys
import tempfile
import time
import torch
from torch import nn
from pttfs.data import DATASETS, load_dataset
from pttfs.decoders import TemporalSelectorDecoder
from pttfs.models import spike_recorder
from pttfs.train import (parse_schedule, MAX_T, recalibrate_batch_norm, training_subset, decision_table,
                         add_spike_counts, autocast_for)
from pttfs.evaluation import energy_estimate, stage_ends
from pttfs.runs import (RunError, load_checkpoint, model_for, network_signature, run_settings, atomic_write,
                        describe_machine, OneLineParser, check_device, default_device, check_out_file)
# pttfs.train_cli is imported where it is used: `from pttfs import load_run` must not load it, or
# `python -m pttfs.train_cli` (torchrun's form) would find it imported before it runs

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
import io, tempfile


# %% [markdown]
# ## Inference that stops at the decision: `pttfs-eval`
#
# Chapter 11's `predict(..., early_exit=True)` computes each sample only up to its decision. `pttfs-eval RUN_DIR`
# evaluates a run folder of `pttfs-train` that way: it rebuilds the network from the settings stored in `last.pt`
# (checksum verified), loads its weights, and runs the test split, with early exit by default, or over all T steps
# with `--full`. It writes `RUN_DIR/eval.json` (or `--out FILE`):
#
# * `test_accuracy` and `avg_timesteps` (the mean of $t_{1st} + 1$);
# * `decisions`: for every step $t$, the fraction of test samples that decide at $t$ and their accuracy (`null`
#   where none does), Table 5's layout;
# * `spikes_per_sample_to_decision`, per layer and in total: the spikes a chip that stops at $t_{1st}$ would
#   spend (with `--full`, also `spikes_per_sample_all_steps`);
# * `steps_computed` (the mean number of steps each sample was actually computed for), `wall_seconds` and
#   `images_per_second`.
#
# `--T` and `--decoder-threshold` evaluate the trained network at another T or confidence threshold. Bad input gets
# one line and exit 2, and nothing is written.

# %%
#| export
def _run_model(run_dir: str, T: int = None, decoder_threshold: float = None) -> tuple:
    "(settings, model with the trained weights, T, threshold) of a run folder, every setting checked; a RunError otherwise."
    path = os.path.join(run_dir, 'last.pt')
    if not os.path.isdir(run_dir): raise RunError(f"{run_dir}: no such run folder")
    if not os.path.exists(path): raise RunError(f"{run_dir} holds no checkpoint (last.pt): is it a pttfs-train run folder?")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get('model'), dict): raise RunError(f"{path} is not a pttfs-train checkpoint")
    from pttfs.train_cli import checked_settings
    settings = checked_settings(state.get('settings'), path)          # the command line's own checks, on the stored values
    trained_T = parse_schedule(settings['schedule'])[-1][0]
    T = trained_T if T is None else T
    if not 1 <= T <= MAX_T: raise RunError(f"--T must be in 1..{MAX_T} (pttfs-train's bound), got {T}")
    if settings['neuron'] == 'psn' and T != trained_T:
        raise RunError(f"the run's PSN layers were built for T={trained_T} (their weights are T×T), so --T must be {trained_T}")
    if decoder_threshold is not None and settings['neuron'] != 'amos':
        raise RunError(f"the run's {settings['neuron']} baseline reads out by a linear layer, which has no decoder threshold; "
                       f"leave --decoder-threshold out")
    threshold = settings['decoder_threshold'] if decoder_threshold is None else decoder_threshold
    model = model_for({**settings, 'decoder_threshold': threshold})
    if network_signature(state['model']) != network_signature(model.state_dict()):
        raise RunError(f"{path} holds another network than its settings describe (the file was edited)")
    try: model.load_state_dict(state['model'])
    except RuntimeError: raise RunError(f"{path} does not fit the network its settings describe") from None
    return settings, model, T, threshold


def load_run(run_dir: str,  # a pttfs-train run folder
             decoder_threshold: float = None,  # the decoder's V_th (default: the run's)
            ) -> nn.Module:
    "The trained network of a run (settings checked, last.pt loaded), in eval mode: `model(images, T)` or `model.predict(images, T)`."
    settings, model, T, threshold = _run_model(run_dir, None, decoder_threshold)
    model.trained_T = T                               # the T of the run's last stage: the natural T to call it with
    return model.eval()


# %%
#| export
def _recalibrate_from_training_images(model, settings: dict, T: int, data_dir: str, batch_size: int, device):
    "Precise batch norm (chapter 12) from the run's own training images, unaugmented."
    from torch.utils.data import DataLoader
    try: images = load_dataset(settings['dataset'], data_dir, train=True, augment=False, in_memory=settings['dataset'] != 'digits')
    except (FileNotFoundError, ImportError) as e: raise RunError(str(e)) from None
    images = training_subset(images, run_settings(settings)['train_subset'])
    batches = images.batches(batch_size) if hasattr(images, 'batches') else DataLoader(images, batch_size=batch_size)
    recalibrate_batch_norm(model, batches, T, device, run_settings(settings)['bf16'])


# %%
#| export
def evaluate_run(run_dir: str,  # a pttfs-train run folder
                 T: int = None,  # time steps (default: the T of the run's last stage)
                 decoder_threshold: float = None,  # the decoder's V_th (default: the run's)
                 full: bool = False,  # compute all T steps instead of stopping at each decision
                 batch_size: int = 256, data_dir: str = 'data', device: str = 'cpu', progress: bool = False,
                 test_set=None,  # the test split (default: loaded from data_dir)
                 keep_predictions: bool = False,  # also return each sample's predicted class and t_1st
                 precise_bn: bool = False,  # first recompute batch-norm statistics from the run's training images (unaugmented)
                ) -> dict:
    "Evaluate a trained run on its test split, with early exit or over all T steps; the numbers of `eval.json`."
    from tqdm import tqdm
    from torch.utils.data import DataLoader
    settings, model, T, threshold = _run_model(run_dir, T, decoder_threshold)
    model.to(device).eval()
    if precise_bn: _recalibrate_from_training_images(model, settings, T, data_dir, batch_size, device)
    if not full and not isinstance(model.decoder, TemporalSelectorDecoder):
        raise RunError(f"the run's decoder {settings['decoder']!r} reads all T steps, so it cannot exit early: pass --full")
    if test_set is None:
        try: test_set = load_dataset(settings['dataset'], data_dir, train=False)
        except (FileNotFoundError, ImportError) as e: raise RunError(str(e)) from None
    decisions, corrects, predictions, to_decision, all_steps, computed = [], [], [], {}, {}, 0
    per_step = []
    hooks = spike_recorder(model, per_step)
    start = time.perf_counter()
    try:
        loader = DataLoader(test_set, batch_size=batch_size)
        for images, labels in tqdm(loader, desc=f"pttfs-eval T={T}", disable=not progress):
            images, labels = images.to(device), labels.to(device)
            per_step.clear()
            with autocast_for(device, run_settings(settings)['bf16']):     # in the precision the run trained in
                logits, decision, steps = model.predict(images, T, early_exit=not full)
            decisions.append(decision.cpu()); predictions.append(logits.argmax(1).cpu())
            corrects.append((logits.argmax(1) == labels).cpu()); computed += int(steps.sum())
            if full: add_spike_counts(per_step, decision, all_steps, to_decision)
            else:                                               # one step a pass: what was computed is up to t_1st
                for name, counts in per_step: to_decision[name] = to_decision.get(name, 0.0) + float(counts.sum())
    finally:
        for hook in hooks: hook.remove()
    seconds = time.perf_counter() - start
    decision, correct = torch.cat(decisions), torch.cat(corrects)
    n = len(decision)
    result = dict(run_dir=os.path.abspath(run_dir), dataset=settings['dataset'], decoder=settings['decoder'], T=T, precise_bn=precise_bn,
                  decoder_threshold=threshold, mode='full' if full else 'early-exit', samples=n,
                  test_accuracy=correct.sum().item() / n, avg_timesteps=(decision + 1).sum().item() / n,
                  decisions=decision_table(decision, correct, T),
                  spikes_per_sample_to_decision={k: v / n for k, v in to_decision.items()},
                  spikes_per_sample_to_decision_total=sum(to_decision.values()) / n,
                  steps_computed=computed / n, wall_seconds=seconds, images_per_second=n / seconds)
    if full:
        result.update(spikes_per_sample_all_steps={k: v / n for k, v in all_steps.items()},
                      spikes_per_sample_all_steps_total=sum(all_steps.values()) / n)
    if keep_predictions: result.update(predictions=torch.cat(predictions).tolist(), t_first=decision.tolist())
    return result


# %%
#| export
def eval_main(argv=None):
    "The `pttfs-eval` command."
    p = OneLineParser(prog='pttfs-eval', description="Evaluate a pttfs-train run on its test split, stopping each sample at its decision.")
    p.add_argument('run_dir', help="the run folder written by pttfs-train")
    p.add_argument('--T', type=int, default=None, help="time steps (default: the T of the run's last stage)")
    p.add_argument('--decoder-threshold', type=float, default=None, help="the decoder's V_th (default: the run's)")
    p.add_argument('--full', action='store_true', help="compute all T steps (no early exit)")
    p.add_argument('--precise-bn', action='store_true', help="recompute the batch-norm statistics from the run's training "
                   "images (no augmentation) before evaluating; the checkpoint is not changed")
    p.add_argument('--batch-size', type=int, default=256, help="test images per pass")
    p.add_argument('--data-dir', default='data', help="torchvision's root folder for the datasets")
    p.add_argument('--device', default=default_device(), help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument('--out', default=None, help="the JSON to write (default: RUN_DIR/eval.json); never replaced unless --overwrite")
    p.add_argument('--overwrite', action='store_true', help="replace --out if it is an earlier pttfs-eval output")
    args = p.parse_args(argv)
    if args.T is not None and not 1 <= args.T <= MAX_T: p.error(f"--T must be in 1..{MAX_T}, got {args.T}")
    from pttfs.train_cli import MAX_BATCH
    if not 1 <= args.batch_size <= MAX_BATCH: p.error(f"--batch-size must be in 1..{MAX_BATCH}, got {args.batch_size}")
    if args.decoder_threshold is not None and not (math.isfinite(args.decoder_threshold) and args.decoder_threshold > 0):
        p.error(f"--decoder-threshold must be a finite number > 0, got {args.decoder_threshold}")
    check_device(p, args.device)
    if not os.path.isdir(args.run_dir): p.error(f"{args.run_dir}: no such run folder")   # before --out's folder is made
    default = os.path.join(args.run_dir, 'eval.json')
    if args.out is None and os.path.lexists(default) and not args.overwrite:       # a second evaluation: say where it can go
        name = 'eval' + ('-precise-bn' if args.precise_bn else '') + (f"-T{args.T}" if args.T else '') + (f"-vth{args.decoder_threshold:g}" if args.decoder_threshold else '') \
               + ('-full' if args.full else '') + '.json'
        p.error(f"{default} exists (an earlier evaluation); write this one beside it with --out "
                f"{os.path.join(args.run_dir, name if name != 'eval.json' else 'eval-2.json')}, or replace it with --overwrite")
    out = check_out_file(p, args.out or default, args.overwrite,   # before any work
                         own=('run_dir', 'mode', 'test_accuracy'))
    try:
        result = evaluate_run(args.run_dir, args.T, args.decoder_threshold, args.full, args.batch_size, args.data_dir,
                              args.device, progress=sys.stderr.isatty(), precise_bn=args.precise_bn)
    except RunError as e: p.error(str(e))
    except KeyboardInterrupt: p.exit(130, "pttfs-eval: interrupted; nothing was written\n")
    except OSError as e: p.error(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}")
    result['command'] = 'pttfs-eval ' + ' '.join(argv if argv is not None else sys.argv[1:])
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(result, f, indent=1)
    try: atomic_write(out, write)
    except OSError as e: p.error(f"cannot write {out}: {e.strerror or e}")
    print(json.dumps({k: result[k] for k in ('T', 'mode', 'test_accuracy', 'avg_timesteps', 'steps_computed', 'images_per_second')}))


# %% [markdown]
# A run on `digits`, trained in a few seconds, then evaluated with early exit and in full, in one process.
# Expected: the same accuracy, decisions and average steps in both modes (early exit is exact), the decision
# table's fractions summing to 1, fewer steps computed with early exit, and fewer spikes to the decision than over
# all T (the trained numbers themselves depend on the machine's arithmetic, so the check prints only these facts):

# %%
from pttfs.train_cli import main as train_main
from pttfs.data import load_dataset
import contextlib, io
with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    train_main(['--schedule', '1:3,4:2', '--hidden', '64', '--channels', '8', '--decoder-threshold', '2', '--out', f'{tmp}/run'])
    early = evaluate_run(f'{tmp}/run', T=8, keep_predictions=True)
    full = evaluate_run(f'{tmp}/run', T=8, full=True)
    model, test_images = load_run(f'{tmp}/run'), load_dataset('digits', train=False)     # the same network, from Python
    with torch.no_grad(): logits, _ = model(torch.stack([image for image, _ in test_images]), 8)
print("keys:", sorted(early))
print("same decisions:", early['decisions'] == full['decisions'], "| same accuracy:", early['test_accuracy'] == full['test_accuracy'],
      "| fewer steps computed:", early['steps_computed'] < full['steps_computed'] == 8,
      "| fewer spikes to the decision than over all T:", full['spikes_per_sample_to_decision_total'] < full['spikes_per_sample_all_steps_total'])
test_eq(early['decisions'], full['decisions'])
test_eq(logits.argmax(1).tolist(), early['predictions']); test_eq(model.trained_T, 4)
test_eq((early['test_accuracy'], early['avg_timesteps']), (full['test_accuracy'], full['avg_timesteps']))
test_close(sum(d['fraction'] for d in early['decisions']), 1.0)
test_close(early['spikes_per_sample_to_decision_total'], full['spikes_per_sample_to_decision_total'], eps=1e-3)
test_eq(early['steps_computed'] < full['steps_computed'], True)


# %% [markdown]
# ## Re-running the studies: `ablation`
#
# `ablation` trains one network per configuration with `pttfs-train`'s own loop and collects, from each run's
# summary, the test accuracy, the average time steps, the spikes per sample and the energy estimate.

# %%
#| export
def _flags(config: dict) -> list:
    "pttfs-train flags for a dict of settings: {'decoder_threshold': 2} -> ['--decoder-threshold', '2']; True is a bare flag."
    argv = []
    for key, value in config.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True: argv.append(flag)
        elif value is not False: argv += [flag, str(value)]
    return argv


def ablation(dataset: str = 'digits', schedule: str = '1:12,2:4,4:4',
             configurations=(dict(decoder='tsd'), dict(decoder='rate'), dict(decoder='twd'), dict(decoder='tq-ttfs')),
             extra_args=(), data_dir: str = 'data',
             out: str = None,  # a JSON file for the rows, with the machine and date
             precise_bn: bool = False,  # also evaluate each run with recomputed batch-norm statistics (`evaluate_run`)
            ) -> list:
    "Train one run per configuration (a dict of pttfs-train flags, which may override the schedule) and return a row per run."
    from pttfs.train_cli import parse_args, train
    info, rows = DATASETS[dataset], []
    image = (info['channels'], info['size'], info['size'])
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(configurations):
            own = {k: v for k, v in config.items() if k != 'schedule'}             # a configuration may bring its own schedule
            common = ['--dataset', dataset, '--schedule', config.get('schedule', schedule), '--data-dir', data_dir, *extra_args]
            args = parse_args(common + _flags(own) + ['--out', os.path.join(tmp, str(i))])
            summary = train(args)
            with open(os.path.join(args.out, 'metrics.jsonl')) as f: history = [json.loads(line) for line in f]
            model = model_for(vars(args))
            energy = energy_estimate(model, summary['spikes_per_sample'], image, summary['T'])
            to_decision = energy_estimate(model, summary['spikes_per_sample_to_decision'], image, summary['avg_timesteps'])
            rows.append(dict(config, test_accuracy=summary['test_accuracy'], avg_timesteps=summary['avg_timesteps'],
                             decisions=summary['decisions'], stage_accuracy=stage_ends(history),
                             spikes_per_sample=summary['spikes_per_sample_total'],
                             spikes_per_sample_to_decision=summary['spikes_per_sample_to_decision_total'],
                             energy_microjoules=1e6 * energy['energy_joules'],
                             energy_to_decision_microjoules=1e6 * to_decision['energy_joules'],
                             parameters=summary['parameters'], T=summary['T'], wall_seconds=summary['wall_seconds'],
                             command=' '.join(['pttfs-train', *common, *_flags(own)])))
            if precise_bn:
                precise = evaluate_run(args.out, data_dir=data_dir, precise_bn=True, full=args.decoder != 'tsd')
                rows[-1].update(test_accuracy_precise_bn=precise['test_accuracy'], avg_timesteps_precise_bn=precise['avg_timesteps'],
                                decisions_precise_bn=precise['decisions'])
    if out:
        result = dict(dataset=dataset, schedule=schedule, machine=describe_machine(), rows=rows)
        def write(tmp):
            with open(tmp, 'w') as f: json.dump(result, f, indent=1)
        atomic_write(out, write)
    return rows


# %% [markdown]
# The runs behind chapter 13's tables (about a minute on two CPU cores; not re-run by the tests, which read the
# stored file):
#
# ```python
# ablation('digits', configurations=[dict(decoder=d) for d in ('tsd', 'rate', 'twd', 'tq-ttfs')],
#          out='benchmarks/ablation-digits-decoders.json')
# ablation('digits', configurations=[dict(decoder='tsd', decoder_threshold=v) for v in (0.25, 0.5, 1.0, 2.0, 4.0)],
#          out='benchmarks/ablation-digits-threshold.json')
# ```
#
# and, shorter (3 epochs, about 3 minutes a run), on MNIST (TQ-TTFS left out: in our assumed form it trains exactly
# like TWD, see below):
#
# ```python
# ablation('mnist', schedule='1:2,4:1', configurations=[dict(decoder=d) for d in ('tsd', 'rate', 'twd')],
#          extra_args=('--batch-size', '128', '--augment'), data_dir='../shared/data', out='benchmarks/ablation-mnist-decoders.json')
# ablation('mnist', schedule='1:2,4:1', configurations=[dict(decoder='tsd', decoder_threshold=v) for v in (0.5, 2.0, 8.0)],
#          extra_args=('--batch-size', '128', '--augment'), data_dir='../shared/data', out='benchmarks/ablation-mnist-threshold.json')
# ```

# %%
#| eval: false
# NBVAL_SKIP
# Rewrites the tracked benchmarks/ablation-digits-*.json: only when asked to (PTTFS_REFRESH_STUDIES=1), so that
# running the chapter top to bottom in Jupyter cannot replace a stored result by accident.
if os.environ.get('PTTFS_REFRESH_STUDIES') == '1':
    _ = ablation('digits', configurations=[dict(decoder=d) for d in ('tsd', 'rate', 'twd', 'tq-ttfs')],
                 out='../benchmarks/ablation-digits-decoders.json')
    _ = ablation('digits', configurations=[dict(decoder='tsd', decoder_threshold=v) for v in (0.25, 0.5, 1.0, 2.0, 4.0)],
                 out='../benchmarks/ablation-digits-threshold.json')

# %% [markdown]
# ## Summary
# `load_run` rebuilds a run's network from the settings in its checkpoint (checked as the command line checks flags) and loads the weights; `evaluate_run` and `pttfs-eval` evaluate it with early exit or in full, at any T or threshold, optionally with batch-norm statistics recomputed; `ablation` trains one run per configuration and collects the rows that chapter 13's tables read.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
