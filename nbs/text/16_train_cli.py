# %% [markdown]
# # Appendix B: the `pttfs-train` command
#
# > Chapter 12's loop in a run folder: the flags and recipes, checked before any work; resuming a killed run; more than one process under `torchrun`; the figures of a run.

# %% [markdown]
# After this appendix you can train from the command line, resume a killed run exactly, and read what each flag does and how it is checked.

# %%
#| default_exp train_cli

# %%
#| export
import argparse
import json
import math
import os
import random
import sys
import time
import torch
from torch.utils.data import DataLoader
from pttfs.data import DATASETS, TensorImages, load_dataset
from pttfs.decoders import DECODERS
from pttfs.models import NEURONS, SURROGATES
from pttfs.train import (parse_schedule, epoch_stages, lr_factors, LR_SCHEDULES, stage_thresholds, mixup_or_cutmix,
                         train_epoch, evaluate, training_subset, _all_sum, per_step_scheduler, epoch_seed)
from pttfs.runs import (RunError, RunFolder, atomic_write, write_metrics, save_checkpoint, load_checkpoint, check_out_path,
                        RUN_KEYS, RECIPES, run_settings, model_for, network_signature,
                        OneLineParser, HelpFormatter, default_device, check_device, new_run_folder, plot_run)

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
import io, tempfile

# %% [markdown]
# ## More than one process
#
# Under `torchrun --nproc_per_node N -m pttfs.train_cli ...` the run is data-parallel: every process holds the model,
# wrapped in `DistributedDataParallel` (NCCL on GPUs, gloo on the CPU), and trains on its share of each epoch
# (`DistributedSampler`), with `--batch-size` the *global* batch split evenly between processes. The training loss
# and accuracy are summed over processes; process 0 alone evaluates and writes the checkpoint, the metrics, the
# summary (with its `world_size`) and the figures, while the others wait at a barrier.
#
# ## Recipes and baselines
#
# A **recipe** fills every flag marked "(recipe)" that the command leaves out; a flag given on the command line
# always wins.
#
# | flag | `default` | `psn` (Fang et al. 2023b) |
# |---|---|---|
# | `--optimizer`, `--lr` | Adam, 3·10⁻³ | SGD, 0.1, momentum 0.9, no weight decay |
# | `--batch-size` | 64 | 128 |
# | `--schedule` | `1:12,2:4,4:4` | `4:1024` (their CIFAR runs: T = 4, 1024 epochs) |
# | `--label-smoothing` | 0 | 0.1 |
# | `--augment` | CIFAR: crop + flip; others: off | flip (CIFAR), TrivialAugmentWide, RandomErasing(0.1) |
# | `--mixup` | off | mixup (α = 0.2) or cutmix (α = 1), one per batch |
# | `--surrogate` | sigmoid (α = 4) | ATan (α = 2) |
# | `--bf16` | CUDA only | on (their runs use fp16 mixed precision with a loss scaler; bfloat16 needs none) |
#
# Both use one cosine learning-rate decay over all epochs (`--lr-schedule cosine`). The `psn` values are read
# from the PSN paper's CIFAR-10 script and its logged arguments; the AMOS paper says it followed that protocol on
# CIFAR.
#
# `--neuron lif` or `--neuron psn` trains the same body with SpikingJelly's neurons instead of AMOS LIF (chapter 11)
# and a rate read-out: Table 3's baselines. A PSN layer is built for one T, so its schedule has one stage.
# `--output-force-last` applies Eq. 7 to the output layer only (chapter 13 tests what that does to the spike-time
# decoders). `--train-subset N` trains on a fixed random choice of N training images, the same in every run, for
# quick studies.
#
# ## The command line

# %%
#| export
_EXAMPLES = """examples:
  pttfs-train --dataset digits --schedule 1:4,2:2          a small run (offline data), seconds on a CPU
  pttfs-train --dataset fashion-mnist --download --convs-per-block 2 --out runs/fmnist   (downloads into ./data once)
  pttfs-train --dataset cifar10 --recipe psn --out runs/c10  the PSN paper's CIFAR protocol
  pttfs-train ... --stop-after 5                           stop after 5 epochs in all; run it again with --resume
  pttfs-train <the same flags> --resume                    continue a stopped or killed run in --out
  pttfs-eval runs/fmnist                                   evaluate it, stopping each image at its decision"""


def _recipe(key: str) -> str:
    return "(recipe: " + ', '.join(f"{name} {'auto' if values[key] is None else values[key]}" for name, values in RECIPES.items()) + ")"



# %%
#| export
def _build_parser() -> OneLineParser:
    p = OneLineParser(prog='pttfs-train', formatter_class=HelpFormatter, epilog=_EXAMPLES,
                      description="Train a TTFS SNN with AMOS LIF neurons and incremental time steps. Flags marked "
                                  "(recipe) take the recipe's value unless given.")
    stages = "T and the epochs are set together, per stage: --schedule T:EPOCHS[,T:EPOCHS...], e.g. --schedule 4:5"
    p.hints = {'--epochs': stages, '--T': stages, '--timesteps': stages, '--T_max': stages}
    p.add_argument('--recipe', default='default', choices=list(RECIPES), help="presets for the flags marked (recipe); "
                   "'psn': the PSN paper's CIFAR protocol")
    p.add_argument('--dataset', default='digits', choices=list(DATASETS), help="digits ships with scikit-learn (offline)")
    p.add_argument('--data-dir', default='data', help="torchvision's root folder for the datasets")
    p.add_argument('--download', action='store_true', help="download a missing dataset")
    p.add_argument('--augment', action=argparse.BooleanOptionalAction, default=None, help="training augmentation: "
                   "crops (and flips for CIFAR); default on for CIFAR only, not for digits " + _recipe('augment'))
    p.add_argument('--architecture', default=None, choices=['scnn', 'cifar'], help="default: cifar for CIFAR, scnn otherwise")
    p.add_argument('--neuron', default='amos', choices=list(NEURONS),
                   help="hidden neurons: AMOS LIF, or a SpikingJelly baseline (needs pttfs[baselines]): LIF with its defaults, "
                   "LIF as the PSN paper's code configures it (lif-psnpaper), or PSN")
    p.add_argument('--decoder', default=None, choices=list(DECODERS), help="default: tsd; rate for the baselines")
    p.add_argument('--output-force-last', action='store_true', help="Eq. 7 in the output layer only: silent neurons fire at T-1 "
                   "(for --decoder twd or tq-ttfs; the others read membranes, which it does not change)")
    p.add_argument('--channels', type=int, default=None, help="C: 32 for the SCNN, 256 for the CIFAR net by default")
    p.add_argument('--hidden', type=int, default=256, help="SCNN: neurons in the last hidden layer")
    p.add_argument('--convs-per-block', type=int, default=1, help="SCNN: Conv-BN-neuron layers before each of its two poolings")
    p.add_argument('--tau', type=float, default=2.0, help="the initial membrane time constant of every neuron (> 1)")
    p.add_argument('--surrogate', default=None, choices=list(SURROGATES), help="every neuron's surrogate gradient " + _recipe('surrogate'))
    p.add_argument('--decoder-threshold', type=float, default=None, help="the decoder's V_th, the confidence parameter "
                   "(default: 1.0, or the last of --stage-thresholds)")
    p.add_argument('--stage-thresholds', default=None, help="the decoder's V_th in each stage of --schedule, e.g. 1,2,4; "
                   "the network keeps the last")
    return _add_training_flags(p)


# %%
#| export
def _add_training_flags(p: OneLineParser) -> OneLineParser:
    "The flags of how the network is trained, and where: schedule, optimisation, data order, device, run folder."
    p.add_argument('--schedule', default=None, help="stages T:epochs, trained in order " + _recipe('schedule'))
    p.add_argument('--batch-size', type=int, default=None, help="images per step, over all processes " + _recipe('batch_size'))
    p.add_argument('--optimizer', default=None, choices=['adam', 'sgd'], help="with the --lr-schedule decay " + _recipe('optimizer'))
    p.add_argument('--lr', type=float, default=None, help="the initial learning rate " + _recipe('lr'))
    p.add_argument('--lr-schedule', default='cosine', choices=LR_SCHEDULES, help="cosine: one decay over all epochs; "
                   "stage-cosine: each T stage restarts at --lr and decays to about 0 by its last batch")
    p.add_argument('--lr-step', default='batch', choices=['batch', 'epoch'], help="change the rate after every batch, "
                   "or once per epoch (as runs made before --lr-step did; a 2-epoch stage then ends at half --lr)")
    p.add_argument('--momentum', type=float, default=0.9, help="SGD's momentum")
    p.add_argument('--label-smoothing', type=float, default=None, help="of the cross-entropy " + _recipe('label_smoothing'))
    p.add_argument('--mixup', action=argparse.BooleanOptionalAction, default=None,
                   help="mixup (α 0.2) or cutmix (α 1), one of the two per batch, as in the PSN paper " + _recipe('mixup'))
    p.add_argument('--train-subset', type=int, default=None,
                   help="train on this many training images, a fixed random choice (the same in every run): quick studies")
    p.add_argument('--seed', type=int, default=0, help="seeds the weights, the data order and every random draw")
    p.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast of convolutions "
                   "and linear layers (neurons stay float32); default on for CUDA only " + _recipe('bf16'))
    p.add_argument('--device', default=default_device(), help="cpu, cuda or cuda:N")
    p.add_argument('--workers', type=int, default=0, help="DataLoader worker processes")
    p.add_argument('--threads', type=int, default=None, help="CPU threads (default: torch's, one per core); beside "
                   "other busy processes, 1 is faster")
    p.add_argument('--out', default=None, help="the run's folder (default: a new runs/DATASET-DATE-TIME)")
    p.add_argument('--resume', action='store_true', help="continue the run in --out from its last.pt (same flags)")
    p.add_argument('--stop-after', type=int, default=None, help="stop after this many epochs in all (resume later)")
    return p


# %%
#| export
MAX_BATCH, MAX_SEED, MAX_LR = 2**20, 2**32 - 1, 1e3    # beyond these a value is a typo, and torch would fail obscurely

def check_args(p: OneLineParser, args):
    "Fill the recipe's values, then check every flag against the others; `p.error` on the first that is wrong."
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None: setattr(args, key, value)
    if args.decoder is None: args.decoder = 'tsd' if args.neuron == 'amos' else 'rate'
    try: args.stages = parse_schedule(args.schedule)
    except ValueError as e: p.error(f"--schedule: {e}")
    if not 1 <= args.batch_size <= MAX_BATCH: p.error(f"--batch-size must be in 1..{MAX_BATCH}, got {args.batch_size}")
    if not 0 <= args.seed <= MAX_SEED: p.error(f"--seed must be in 0..{MAX_SEED}, got {args.seed}")
    if not (math.isfinite(args.lr) and 0 < args.lr <= MAX_LR): p.error(f"--lr must be a number in (0, {MAX_LR:g}], got {args.lr}")
    if not (math.isfinite(args.momentum) and 0 <= args.momentum < 1): p.error(f"--momentum must be in [0, 1), got {args.momentum}")
    if not (0 <= args.label_smoothing < 1): p.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    for flag in ('channels', 'hidden', 'convs_per_block', 'train_subset', 'stop_after'):
        value = getattr(args, flag)
        if value is not None and value < 1: p.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    tau32 = torch.tensor(args.tau, dtype=torch.float32).item() if math.isfinite(args.tau) else args.tau   # the neurons' dtype
    if not (math.isfinite(tau32) and tau32 > 1): p.error(f"--tau must be a number > 1 that float32 holds (1 + 1e-6 < tau < 3e38), got {args.tau}")
    if args.stage_thresholds is not None:
        try: args.epoch_thresholds = stage_thresholds(args.stage_thresholds, args.stages)
        except ValueError as e: p.error(f"--stage-thresholds: {e}")
        if args.decoder_threshold is None: args.decoder_threshold = args.epoch_thresholds[-1]
        if args.decoder_threshold != args.epoch_thresholds[-1]:
            p.error(f"--decoder-threshold {args.decoder_threshold:g} differs from the last of --stage-thresholds "
                    f"({args.epoch_thresholds[-1]:g}), which the network keeps; leave --decoder-threshold out")
    if args.decoder_threshold is None: args.decoder_threshold = 1.0
    if not (math.isfinite(args.decoder_threshold) and args.decoder_threshold > 0):
        p.error(f"--decoder-threshold must be a finite number > 0, got {args.decoder_threshold}")
    if args.workers < 0: p.error(f"--workers must be >= 0, got {args.workers}")
    if args.threads is not None and not 1 <= args.threads <= 1024: p.error(f"--threads must be in 1..1024, got {args.threads}")
    if args.augment and args.dataset == 'digits':
        p.error("--augment: digits has no augmentation (8x8 images, no crops defined); leave --augment out")
    if args.output_force_last and args.neuron == 'amos' and args.decoder in ('tsd', 'rate') and not p.raising:    # (a stored run is not refused for it)
        p.error(f"--output-force-last changes nothing for --decoder {args.decoder}: it reads the output membranes (at t_1st, "
                f"or over all steps), which Eq. 7 does not touch; it is for the spike-time decoders twd and tq-ttfs")
    if args.neuron != 'amos':
        if args.decoder != 'rate': p.error(f"--neuron {args.neuron} fires many times, so it decodes by rate: --decoder rate, not {args.decoder}")
        if args.output_force_last: p.error(f"--output-force-last is for AMOS output neurons; --neuron {args.neuron} reads out by a linear layer")
        if args.stage_thresholds: p.error(f"--stage-thresholds: --neuron {args.neuron} reads out by a linear layer, which has no threshold")
        try: import spikingjelly  # noqa: F401
        except ImportError: p.error(f"--neuron {args.neuron} needs SpikingJelly: pip install \"pttfs[baselines]\"")
    if args.neuron == 'psn' and len(args.stages) > 1:
        p.error(f"--neuron psn: a PSN layer's weights are T×T, so the schedule must have one stage (e.g. 4:20), got {args.schedule}")
    device = check_device(p, args.device)
    if args.bf16 is None: args.bf16 = device.type == 'cuda'
    if args.architecture is None: args.architecture = 'cifar' if args.dataset.startswith('cifar') else 'scnn'
    if args.architecture == 'cifar' and DATASETS[args.dataset]['size'] != 32:
        p.error(f"--architecture cifar needs 32x32 images; --dataset {args.dataset} has {DATASETS[args.dataset]['size']}x{DATASETS[args.dataset]['size']}")
    if args.out is None:
        if args.resume: p.error("--resume needs --out: the folder of the run to continue")
        if int(os.environ.get('WORLD_SIZE', '1')) > 1: p.error("under torchrun, name the run's folder with --out")
        args.out, args.default_out = new_run_folder(args.dataset), True
    return args


# %%
#| export
def parse_args(argv=None):
    "`pttfs-train`'s flags, checked (see `check_args`); a bad one is one line and exit code 2."
    p = _build_parser()
    return check_args(p, p.parse_args(argv))


# %% [markdown]
# A recipe, checked: `--recipe psn` fills what the command leaves out and keeps what it gives:

# %%
args = parse_args(['--recipe', 'psn', '--dataset', 'cifar100', '--lr', '0.05'])
print({k: getattr(args, k) for k in ('optimizer', 'lr', 'batch_size', 'schedule', 'label_smoothing', 'augment', 'mixup', 'surrogate', 'bf16')})
test_eq((args.optimizer, args.lr, args.batch_size, args.schedule, args.surrogate), ('sgd', 0.05, 128, '4:1024', 'atan'))
test_eq((parse_args([]).optimizer, parse_args([]).lr, parse_args([]).decoder), ('adam', 3e-3, 'tsd'))
test_eq(parse_args(['--neuron', 'lif']).decoder, 'rate')                       # the baselines decode by rate

# %%
#| export
_MAY_BE_NONE = ('channels', 'augment', 'train_subset', 'stage_thresholds')      # None means "the default" for these, and only these

def _stored_type_error(action, value) -> str:
    "Why a stored value could not have come from this flag ('' if it could)."
    if action.choices is not None and value not in action.choices: return f"not one of {', '.join(map(str, action.choices))}"
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
        return '' if isinstance(value, bool) or (action.dest == 'augment' and value == 'psn') else "not a bool"
    kind = action.type or str
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind): return f"not {kind.__name__}"
    return ''


def checked_settings(settings, path: str, device: str = 'cpu') -> dict:
    "A checkpoint's settings put through the command line's own checks; a RunError names the first that is wrong."
    if not isinstance(settings, dict): raise RunError(f"{path} is not a pttfs-train checkpoint (no settings)")
    p, filled = _build_parser(), run_settings(settings, device)
    args, actions = p.parse_args(['--device', 'cpu']), {action.dest: action for action in p._actions}
    for key in RUN_KEYS:
        value = filled.get(key)
        problem = ('missing' if value is None and key not in _MAY_BE_NONE
                   else '' if value is None else _stored_type_error(actions[key], value))
        if problem: raise RunError(f"{path}: its setting {key}={value!r} is {problem}: the file was edited or is not pttfs-train's")
        setattr(args, key, value)
    args.out, p.raising = '.', True
    try: check_args(p, args)
    except RunError as e: raise RunError(f"{path}: its settings are refused ({e}): the file was edited or is not pttfs-train's") from None
    return {key: getattr(args, key) for key in RUN_KEYS}


# %% [markdown]
# A checkpoint's settings, checked as the command line checks its flags: the settings of a real run pass unchanged,
# and an edited value is refused with its name (we expect one `RunError` per edit):

# %%
good = {key: getattr(parse_args(['--out', 'unused']), key) for key in RUN_KEYS}
test_eq(checked_settings(good, 'last.pt'), good)
for edit in [dict(schedule='abc'), dict(dataset='imagenet'), dict(tau=0.5), dict(channels='32'), dict(hidden=None)]:
    test_fail(checked_settings, args=({**good, **edit}, 'last.pt'), exc=RunError, contains=next(iter(edit)))
try: checked_settings({**good, 'channels': '32'}, 'last.pt')
except RunError as e: print(e)

# %%
#| export
_CHECKPOINT_FIELDS = dict(model=dict, optimizer=dict, scheduler=dict, history=list, settings=dict, epochs_done=int)


def _same_setting(key: str, stored, args) -> bool:
    if key == 'stage_thresholds' and stored is not None and args.stage_thresholds is not None:
        try: return stage_thresholds(stored, args.stages) == args.epoch_thresholds     # the values: '1,2' = '1.0, 2'
        except ValueError: return False
    if key != 'schedule': return stored == getattr(args, key)
    try: return parse_schedule(stored) == args.stages            # the stages, not the spelling: '1:12, 2:4' = '1:12,2:4'
    except ValueError: return False


def _load_resume_state(args) -> dict:
    path = os.path.join(args.out, 'last.pt')
    if not os.path.exists(path): raise RunError(f"--resume: no checkpoint at {path}")
    try: state = load_checkpoint(path)
    except RunError as e: raise RunError(f"--resume: {e}") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(k), kind) for k, kind in _CHECKPOINT_FIELDS.items()):
        raise RunError(f"--resume: {path} is not a pttfs-train checkpoint")
    try: stored = checked_settings(state['settings'], path, args.device)
    except RunError as e: raise RunError(f"--resume: {e}") from None
    mismatched = [k for k in RUN_KEYS if not _same_setting(k, stored.get(k), args)]
    if mismatched:
        raise RunError("--resume: the checkpoint was made with other settings: " +
                       ', '.join(f"--{k.replace('_', '-')} {stored.get(k)!r} (now {getattr(args, k)!r})" for k in mismatched))
    return state


def _rng_state() -> dict:
    return dict(torch=torch.get_rng_state(), python=random.getstate())


# %%
with tempfile.TemporaryDirectory() as tmp:
    args = parse_args(['--schedule', '1:2,2:1', '--out', tmp, '--resume'])
    test_eq(_same_setting('schedule', '1:2, 2:1', args), True)     # the stages, not the spelling
    test_eq(_same_setting('schedule', '1:3', args), False)
    test_fail(lambda: _load_resume_state(args), exc=RunError, contains='no checkpoint')
print("resume checks: ok")


# %% [markdown]
# Under `torchrun` every process runs the same code; three small helpers hide the difference. Without `torchrun`
# (`WORLD_SIZE` unset) they are the identity: one process, rank 0, sums that are the numbers themselves.

# %%
#| export
def setup_distributed(device: str) -> tuple:
    "(rank, world_size, device) under torchrun (NCCL on GPUs, gloo on CPU); (0, 1, device) otherwise."
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size == 1: return 0, 1, device
    import torch.distributed as dist
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if str(device).startswith('cuda'):
        torch.cuda.set_device(local_rank); device = f'cuda:{local_rank}'
    if not dist.is_initialized(): dist.init_process_group('nccl' if str(device).startswith('cuda') else 'gloo')
    return dist.get_rank(), world_size, device


def _barrier():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized(): dist.barrier()


# %%
test_eq(setup_distributed('cpu'), (0, 1, 'cpu'))
test_eq(_all_sum([1.0, 2.0], 'cpu'), [1.0, 2.0])


# %% [markdown]
# The data come before the run folder: a missing dataset is refused with a message that says what to do, and
# nothing has been created yet.

# %%
#| export
def _load_data(args) -> tuple:
    "(train set, test set), or a RunError that says what to do."
    try:
        in_memory = args.dataset != 'digits' and args.augment != 'psn'      # chapter 10's TensorImages: the same images, faster
        return (load_dataset(args.dataset, args.data_dir, train=True, download=args.download, augment=args.augment, in_memory=in_memory),
                load_dataset(args.dataset, args.data_dir, train=False, download=args.download, in_memory=in_memory))
    except (FileNotFoundError, ImportError) as e: raise RunError(str(e)) from None     # ImportError: a broken torchvision
    except Exception as e:                            # a download that failed: no network, a moved mirror ...
        if not args.download: raise
        reason = ' '.join(str(e).split())[:200]
        raise RunError(f"--download: could not fetch {args.dataset} ({type(e).__name__}: {reason}); without a network, "
                       f"put the files under {os.path.abspath(args.data_dir)} in torchvision's layout") from None


# %%
train_set, test_set = _load_data(parse_args(['--dataset', 'digits']))
print(f"digits: {len(train_set)} training and {len(test_set)} test images")
with tempfile.TemporaryDirectory() as tmp:
    test_fail(lambda: _load_data(parse_args(['--dataset', 'mnist', '--data-dir', tmp])), exc=RunError, contains='--download')


# %% [markdown]
# `train` checks everything that can be checked before any work (the batch size against the processes, `--out`, the
# data), opens the run folder in one process, and hands over to the loop over epochs, `_train_in_folder`: per epoch
# the stage's T, a seeded data order, one epoch of training, the evaluation, the checkpoint and the metrics file.
# The runs below check it: the figures of a run, and a run killed and resumed.

# %%
#| export
def train(args) -> dict:
    "Run (or resume) the schedule in args.out; returns the summary."
    rank, world_size, device = setup_distributed(args.device)
    if args.batch_size % world_size:
        raise RunError(f"--batch-size {args.batch_size} must be a multiple of the number of processes ({world_size})")
    check_out_path(args.out)                          # a bad --out is known before any work ...
    train_set, test_set = _load_data(args)            # ... and missing data before the folder is made
    if args.train_subset is not None and args.train_subset > len(train_set):
        raise RunError(f"--train-subset {args.train_subset}: {args.dataset} has only {len(train_set)} training images")
    train_set = training_subset(train_set, args.train_subset)
    made_here = getattr(args, 'default_out', False) and rank == 0
    if made_here:                                     # taken now, not when the flags were read: no other run can take it
        args.out = new_run_folder(args.dataset, os.path.dirname(args.out), make=True)
        print(f"pttfs-train: the run's folder is {args.out}", file=sys.stderr)
    folder, failure = RunFolder(args.out), None
    if rank == 0:                                     # one process holds the folder; all stop if it cannot
        try: folder.open(resume=args.resume); folder.created = folder.created or made_here
        except RunError as e: failure = e
    if _all_sum([float(failure is not None)], device)[0]:
        raise failure or RunError(f"process 0 could not open {args.out}")
    try: return _train_in_folder(args, rank, world_size, device, train_set, test_set)
    finally: folder.close()


# %%
#| export
def _repair_run_files(out: str, history: list, summary: dict) -> list:
    "Rewrite metrics.jsonl if it is not the checkpoint's history, and the figures if one is missing; the names rewritten."
    try:
        with open(os.path.join(out, 'metrics.jsonl')) as f: rows = [json.loads(line) for line in f]
    except (OSError, ValueError): rows = None
    repaired = []
    if rows != history:
        write_metrics(out, history); repaired.append('metrics.jsonl')
    if not all(os.path.exists(os.path.join(out, name)) for name in ('accuracy.png', 't_first.png')):
        plot_run(out, history, summary); repaired += ['accuracy.png', 't_first.png']
    return repaired


def _finished_run(args, state: dict, total: int) -> dict:
    "A resumed run with nothing left to train: its summary, after rewriting what a kill left short or missing."
    done, path = state['epochs_done'], os.path.join(args.out, 'summary.json')
    what = (f"is finished ({done} of {total} epochs)" if done == total else f"already has {done} epochs (--stop-after {args.stop_after})")
    try:
        with open(path) as f: summary = json.load(f)
    except (ValueError, IsADirectoryError):
        raise RunError(f"{path} is damaged (not JSON, or not a file): remove it and run --resume again, which writes it anew from "
                       f"last.pt ({done} epochs)") from None
    repaired = _repair_run_files(args.out, state['history'], summary)
    print(f"pttfs-train: {args.out} {what}; " + (f"rewrote {', '.join(repaired)}" if repaired else "left as it is"), file=sys.stderr)
    return summary


def _epoch_loader(args, train_set, epoch: int, rank: int, world_size: int) -> DataLoader:
    "The epoch's training batches in a seeded order: the same order when the epoch is redone after a kill."
    if world_size == 1:
        order = torch.Generator().manual_seed(epoch_seed(args.seed, epoch))
        if isinstance(train_set, TensorImages): return train_set.batches(args.batch_size, order)   # crops drawn from `order` too
        return DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=order, num_workers=args.workers)
    from torch.utils.data.distributed import DistributedSampler     # each process its share; the global batch stays
    sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed)
    sampler.set_epoch(epoch)
    return DataLoader(train_set, batch_size=args.batch_size // world_size, sampler=sampler, num_workers=args.workers)


def _write_summary(out: str, summary: dict, history: list):
    "The figures, then summary.json: a run is finished when its summary exists, so nothing is written after it."
    plot_run(out, history, summary)
    def write(tmp):
        with open(tmp, 'w') as f: json.dump(summary, f, indent=1, allow_nan=False)
    atomic_write(os.path.join(out, 'summary.json'), write)


# %%
#| export
def _model_and_optimizer(args, device, epochs: int, state: dict = None) -> tuple:
    "The run's model, optimizer and learning-rate schedule (`lr_factors`), fresh (seeded) or as the checkpoint left them."
    torch.manual_seed(args.seed); random.seed(args.seed)
    model = model_for(vars(args)).to(device)
    if args.optimizer == 'sgd': optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    else: optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if args.lr_step == 'epoch' and args.lr_schedule == 'cosine':      # as runs made before --lr-step: they resume so
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    else:
        factors = lr_factors(args.stages, args.lr_schedule, getattr(args, 'steps_per_epoch', 1) if args.lr_step == 'batch' else 1)
        scheduler = per_step_scheduler(optimizer, factors)
    if state is not None:
        if network_signature(state['model']) != network_signature(model.state_dict()):
            raise RunError(f"--resume: {args.out}/last.pt holds another network than its settings describe")
        try:
            model.load_state_dict(state['model']); optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"--resume: {args.out}/last.pt does not fit this model ({type(e).__name__})") from None
    return model, optimizer, scheduler


# %%
#| export
def _test_loader(args, test_set):
    "The test split in batches of at least 256, in order (in memory when the split is `TensorImages`)."
    if isinstance(test_set, TensorImages): return test_set.batches(max(args.batch_size, 256))
    return DataLoader(test_set, batch_size=max(args.batch_size, 256), num_workers=args.workers)


def _distributed(model, world_size: int, device):
    "What the optimizer steps through: the model itself, or the model in DDP under torchrun."
    if world_size == 1: return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[int(str(device).split(':')[1])] if str(device).startswith('cuda') else None)


def _build_kernel_first(device, rank: int):
    "The fused kernel's first build (once per install) before a run's clock starts: it is no epoch's time (summary: compile_seconds)."
    from pttfs.fused import load_fused_extension, fused_build_seconds
    if torch.device(device).type != 'cpu': return
    load_fused_extension()
    if fused_build_seconds() and rank == 0:
        print(f"pttfs-train: the fused kernel compiled in {fused_build_seconds():.0f} s (once per install; not counted "
              f"in the epoch times)", file=sys.stderr, flush=True)


def _checkpoint(model, optimizer, scheduler, history, settings, epochs_done: int, world_size: int, wall_seconds: float) -> dict:
    "Everything `--resume` needs to continue after `epochs_done` epochs exactly as an uninterrupted run would."
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                history=history, settings=settings, epochs_done=epochs_done, rng=_rng_state(), world_size=world_size,
                wall_seconds=wall_seconds, network=network_signature(model.state_dict()))



# %%
#| export
def _train_in_folder(args, rank, world_size, device, train_set, test_set) -> dict:
    from tqdm import tqdm
    _build_kernel_first(device, rank)
    start = time.time()
    state = _load_resume_state(args) if args.resume else None
    if state is not None: args.epochs_saved = state['epochs_done']      # what an error message can say is safe
    epochs = epoch_stages(args.stages)
    last_epoch = len(epochs) if args.stop_after is None else min(len(epochs), args.stop_after)
    if state is not None and state['epochs_done'] >= last_epoch:    # nothing to train: never go back, never rewrite
        last_epoch = state['epochs_done']
        if os.path.exists(os.path.join(args.out, 'summary.json')):
            return _finished_run(args, state, len(epochs)) if rank == 0 else None
        if rank == 0: print(f"pttfs-train: {args.out} has {last_epoch} epochs; writing its missing summary.json", file=sys.stderr)
    args.steps_per_epoch = len(_epoch_loader(args, train_set, 0, rank, world_size))     # batches: the per-batch schedule's unit
    model, optimizer, scheduler = _model_and_optimizer(args, device, len(epochs), state)
    per_batch = scheduler if args.lr_step == 'batch' else None
    history, epochs_done, seconds_before = [], 0, 0.0
    if state is not None:
        history, epochs_done, seconds_before = state['history'], state['epochs_done'], state.get('wall_seconds', 0.0)
        if rank == 0: write_metrics(args.out, history)   # the checkpoint's rows: a kill may have left the file one short
    args.epochs_saved = epochs_done
    settings = {k: getattr(args, k) for k in RUN_KEYS}
    test_loader, trained = _test_loader(args, test_set), _distributed(model, world_size, device)
    mix = mixup_or_cutmix(DATASETS[args.dataset]['classes']) if args.mixup else None
    interactive, lines = sys.stderr.isatty() and rank == 0, getattr(args, 'epoch_lines', False) and rank == 0
    epoch_bar = tqdm(total=len(epochs), initial=epochs_done, desc='epochs', disable=not interactive)
    final = None
    for epoch in range(epochs_done, last_epoch):
        T = epochs[epoch]
        if args.stage_thresholds is not None: model.decoder.neuron.v_threshold = args.epoch_thresholds[epoch]
        torch.manual_seed(epoch_seed(args.seed, epoch)); random.seed(epoch_seed(args.seed, epoch))   # per epoch: resumable
        train_loader = _epoch_loader(args, train_set, epoch, rank, world_size)
        with tqdm(total=len(train_loader), desc=f"epoch {epoch + 1} T={T}", leave=False, disable=not interactive) as bar:
            row = dict(epoch=epoch + 1, T=T, lr=optimizer.param_groups[0]['lr'])
            if args.stage_thresholds is not None: row['decoder_threshold'] = args.epoch_thresholds[epoch]
            try: row.update(train_epoch(trained, train_loader, T, optimizer, device, bar, args.bf16, args.label_smoothing, mix, per_batch))
            except FloatingPointError as e:
                raise RunError(f"{e} in epoch {epoch + 1} (T={T}): training diverged, so it stops here; lower --lr "
                               f"(last.pt holds {args.epochs_saved} finished epochs)") from None
        if per_batch is None: scheduler.step()
        if rank == 0:                                 # one process evaluates and writes; the others wait
            final = evaluate(model, test_loader, T, device, args.bf16)
            row.update({k: v for k, v in final.items() if k not in ('t_first_histogram', 'spikes_per_sample', 'spikes_per_sample_to_decision')})
            history.append(row)
            save_checkpoint(args.out, _checkpoint(model, optimizer, scheduler, history, settings, epoch + 1, world_size,
                                                  seconds_before + time.time() - start))
            args.epochs_saved = epoch + 1
            write_metrics(args.out, history)
            epoch_bar.set_postfix(acc=f"{row['test_accuracy']:.4f}", steps=f"{row['avg_timesteps']:.2f}")
            if lines: print(f"pttfs-train: epoch {epoch + 1}/{len(epochs)} T={T} loss {row['train_loss']:.4f} test accuracy "
                            f"{row['test_accuracy']:.4f} avg steps {row['avg_timesteps']:.2f} ({time.time() - start:.0f} s)",
                            file=sys.stderr, flush=True)
        _barrier()
        epoch_bar.update(1)
    epoch_bar.close()
    summary = None if rank != 0 else _finish(args, model, history, final, test_loader, device, epochs, last_epoch,
                                             world_size, settings, seconds_before + time.time() - start)
    _barrier()        # the ranks leave together: one that tears down gloo while another still writes can abort
    return summary


# %%
#| export
def _compile_seconds() -> float:
    from pttfs.fused import fused_build_seconds
    return fused_build_seconds()


def _finish(args, model, history, final, test_loader, device, epochs, last_epoch, world_size, settings, seconds) -> dict:
    "The run's summary (evaluating the model if no epoch was trained now), written with the figures."
    T_now = epochs[max(0, last_epoch - 1)]
    if args.stage_thresholds is not None: model.decoder.neuron.v_threshold = args.epoch_thresholds[max(0, last_epoch - 1)]
    if final is None: final = evaluate(model, test_loader, T_now, device, args.bf16)            # nothing left to train
    summary = dict(dataset=args.dataset, architecture=args.architecture, decoder=args.decoder, neuron=args.neuron,
                   recipe=args.recipe, schedule=args.schedule,
                   T=T_now, epochs=last_epoch, finished=last_epoch == len(epochs), test_accuracy=final['test_accuracy'],
                   avg_timesteps=final['avg_timesteps'], t_first_histogram=final['t_first_histogram'],
                   decisions=final['decisions'], spikes_per_sample=final['spikes_per_sample'],
                   spikes_per_sample_total=final['spikes_per_sample_total'],
                   spikes_per_sample_to_decision=final['spikes_per_sample_to_decision'],
                   spikes_per_sample_to_decision_total=final['spikes_per_sample_to_decision_total'],
                   parameters=sum(p.numel() for p in model.parameters()), world_size=world_size, device=str(device),
                   wall_seconds=seconds, compile_seconds=_compile_seconds(), seed=args.seed, settings=settings,
                   threads=torch.get_num_threads())
    _write_summary(args.out, summary, history)
    return summary


# %% [markdown]
# Each run folder also gets two figures, drawn by `plot_run` (below for a short run on `digits` with the decoder
# threshold at 2, so that the decisions spread over steps; `mark_stages` marks the stages here and in every
# learning curve of this book), and the command line wraps `train`: a `RunError`
# becomes one line and exit code 2.

# %%
#| fig-cap: accuracy.png of a short digits run at decoder threshold 2: test accuracy and decisions per epoch, stages marked; the share deciding at t = 0 falls once T > 1.
#| fig-cap: t_first.png of the same run: how many test images decide at each step; most at t = 0, some later because the threshold is 2.
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image, display
import contextlib
with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
    train(parse_args(['--dataset', 'digits', '--schedule', '1:4,2:2,4:2', '--hidden', '64', '--channels', '8',
                      '--batch-size', '32', '--lr', '0.005', '--decoder-threshold', '2', '--out', f'{tmp}/run']))
    test_eq(sorted(f for f in os.listdir(f'{tmp}/run') if f.endswith('.png')), ['accuracy.png', 't_first.png'])
    for name in ('accuracy.png', 't_first.png'): display(Image(filename=os.path.join(tmp, 'run', name), width=640 if name == 'accuracy.png' else 420))


# %%
#| export
def _where_the_run_stands(args) -> str:
    saved = getattr(args, 'epochs_saved', None)
    if not saved: return "no epoch was finished, so nothing is saved"
    return f"{args.out}/last.pt holds {saved} finished epochs: run the same command with --resume to continue"


def main(argv=None):
    "The `pttfs-train` command."
    args = parse_args(argv)
    args.epoch_lines = not sys.stderr.isatty()       # a log file, nohup or CI: one line per epoch instead of bars
    threads_before = torch.get_num_threads()
    if args.threads: torch.set_num_threads(args.threads)   # on a shared machine, --threads 1 (benchmarks/threads.txt)
    try: summary = train(args)
    except RunError as e:
        print(f"pttfs-train: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print(f"pttfs-train: interrupted; {_where_the_run_stands(args)}", file=sys.stderr)
        raise SystemExit(130)
    except OSError as e:                              # disk full, a folder removed under the run, ...
        print(f"pttfs-train: error: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
              f"{_where_the_run_stands(args)}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        torch.set_num_threads(threads_before)         # main() called from Python leaves the process as it found it
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized(): dist.destroy_process_group()
    if summary is None: return                        # not rank 0
    print(json.dumps({k: summary[k] for k in ('dataset', 'T', 'test_accuracy', 'avg_timesteps', 'spikes_per_sample_total', 'wall_seconds')}))


# %%
test_fail(lambda: main(['--schedule', '1:0']), exc=SystemExit)

# %%
#| export
if __name__ == '__main__' and os.path.basename(sys.argv[0]) == 'train_cli.py': main()   # python -m pttfs.train_cli


# %% [markdown]
# ## A run, killed and resumed
#
# A short run on `digits` in one go, and the same run stopped after two epochs (`--stop-after 2`) and resumed: we
# expect the same metrics row for row (seeds set per epoch, the same data order, optimizer and learning-rate
# schedule restored), and no row lost or doubled. (`tests/` also kills a run at a random moment.)

# %%
def run_quietly(argv):
    args = parse_args(argv)
    return train(args)

with tempfile.TemporaryDirectory() as tmp:
    common = ['--dataset', 'digits', '--schedule', '1:2,2:1', '--hidden', '64', '--channels', '8', '--batch-size', '128']
    run_quietly(common + ['--out', f'{tmp}/whole'])
    run_quietly(common + ['--out', f'{tmp}/cut', '--stop-after', '2'])      # stopped after two of three epochs
    run_quietly(common + ['--out', f'{tmp}/cut', '--resume'])
    rows_whole = [json.loads(l) for l in open(f'{tmp}/whole/metrics.jsonl')]
    rows_cut = [json.loads(l) for l in open(f'{tmp}/cut/metrics.jsonl')]
    print("epochs:", [r['epoch'] for r in rows_cut], "| identical rows:", rows_whole == rows_cut)
    test_eq([r['epoch'] for r in rows_cut], [1, 2, 3])
    test_eq(rows_whole, rows_cut)
    test_eq(sorted(os.listdir(f'{tmp}/whole')), ['accuracy.png', 'last.pt', 'metrics.jsonl', 'summary.json', 't_first.png'])

# %% [markdown]
# ## Summary
# `pttfs-train` is chapter 12's loop with everything a long run needs: flags checked before any work (and a checkpoint's settings checked the same way), recipes, a run folder that is locked and written by rename, a resumed run equal to an uninterrupted one, data-parallel training under `torchrun`, and two figures per run. Errors are one line and exit code 2.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
