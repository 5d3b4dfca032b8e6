# %% [markdown]
# # Appendix A: run folders, checkpoints and settings
#
# > What every pttfs command shares: a run folder that cannot lose work, checkpoints that survive a kill, output files and figures that never replace a reader's files, the settings that define a run, and one-line command-line errors.

# %% [markdown]
# After this appendix you can say what `pttfs-train` writes, why a killed run loses at most the epoch in flight, and how a run's settings rebuild its network. The lesson these files serve is chapter 12's.

# %%
#| default_exp runs

# %%
#| export
import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import re
import stat
import tempfile
import time
import torch
from torch import Tensor
from pttfs.models import build_model
from pttfs.train import parse_schedule, mark_stages, decision_curve

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc


# %% [markdown]
# ## Checkpoints that survive a kill
#
# After every epoch the run writes `last.pt` (model, optimizer, learning-rate schedule, random-number states, the
# metrics so far, the settings) to a temporary file and renames it over the old one: a rename is atomic, so at any
# moment `last.pt` is a complete checkpoint. `metrics.jsonl` is rewritten the same way from the metrics *in the
# checkpoint*, so the two never disagree: a run killed between them loses at most the epoch in flight, and
# `--resume` redoes exactly that one. The checkpoint ends with a SHA-256 of its contents: a file damaged on disk or
# in a copy is refused on `--resume` rather than resumed. A checkpoint is read back with
# `torch.load(weights_only=True)`: tensors and plain Python values only, so a planted file cannot run code when it
# is opened; its settings then go through the command line's own checks (`checked_settings`, Appendix B), and the
# network they describe must have the stored weights' names and shapes (`network_signature`): what loading needs,
# so that a module class renamed by a later version does not lock out runs made before it.

# %%
#| export
class RunError(Exception):
    "A run that cannot start (a bad --out, missing data, a bad checkpoint); the message says what to do."


def atomic_write(path: str, write):
    "Write a file through a temporary neighbour and a rename, so that readers only ever see a complete file."
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp): os.remove(tmp)


def write_metrics(out: str, history: list):
    "metrics.jsonl: one JSON object per finished epoch."
    def write(tmp):
        with open(tmp, 'w') as f:
            for row in history: f.write(json.dumps(row, allow_nan=False) + '\n')   # strict JSON: no bare NaN or Infinity
    atomic_write(os.path.join(out, 'metrics.jsonl'), write)


_CHECKSUM_TAG = b'\npttfs-checkpoint-sha256:'


def save_checkpoint(out: str, state: dict):
    "last.pt: what torch.save writes, then a SHA-256 of it, so that a damaged file is known as such."
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(payload + _CHECKSUM_TAG + hashlib.sha256(payload).hexdigest().encode() + b'\n')
            f.flush(); os.fsync(f.fileno())          # on disk before the rename makes it the checkpoint
    atomic_write(os.path.join(out, 'last.pt'), write)


def load_checkpoint(path: str) -> dict:
    "The state `save_checkpoint` wrote; a `RunError` if the file is not such a checkpoint or its checksum fails."
    with open(path, 'rb') as f: data = f.read()
    tail = len(_CHECKSUM_TAG) + 65                   # the tag, 64 hex digits, a newline
    payload, tag, digest = data[:-tail], data[-tail:-65], data[-65:-1]
    if len(data) < tail or tag != _CHECKSUM_TAG: raise RunError(f"{path} is not a pttfs-train checkpoint (no checksum)")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise RunError(f"{path} is damaged: its contents do not match its checksum")
    try: return torch.load(io.BytesIO(payload), map_location='cpu', weights_only=True)   # tensors and plain types: no code runs
    except Exception as e: raise RunError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None


# %%
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    write_metrics(tmp, [dict(epoch=1, T=1), dict(epoch=2, T=1)])
    print(open(os.path.join(tmp, 'metrics.jsonl')).read().strip())
    test_eq(sorted(os.listdir(tmp)), ['metrics.jsonl'])                 # no temporary file left
    save_checkpoint(tmp, dict(epochs_done=2, weights=torch.arange(4.0)))
    test_eq(load_checkpoint(os.path.join(tmp, 'last.pt'))['weights'], torch.arange(4.0))
    data = bytearray(open(os.path.join(tmp, 'last.pt'), 'rb').read())
    data[len(data) // 2] ^= 0x01                                   # one flipped bit anywhere ...
    open(os.path.join(tmp, 'last.pt'), 'wb').write(bytes(data))
    test_fail(load_checkpoint, args=(os.path.join(tmp, 'last.pt'),), exc=RunError, contains='damaged')   # ... is refused

# %% [markdown]
# ## A run folder that cannot lose work
#
# A run's folder holds its results, so `pttfs-train` guards it in three ways:
#
# * **Refused, not overwritten.** Without `--resume`, a folder that already holds any run file (`last.pt`,
#   `metrics.jsonl`, `summary.json`, the figures) is refused, even if `last.pt` was deleted. There is no overwrite
#   flag: remove the folder, or choose another `--out`.
# * **One writer.** The run holds an OS lock (`flock`) on a file in its folder for as long as it runs; a second
#   `pttfs-train` on the same folder is refused at once. The kernel releases the lock when the process ends,
#   however it ends, so a killed run never leaves the folder locked.
# * **Checked before any work.** `--out` must name a folder that can be made and written (not a file, not below a
#   file); this, the data and every flag are checked before the folder is created, so a refused run leaves
#   nothing behind. The temporaries a killed run leaves (`last.pt.tmp-PID`, `metrics.jsonl.tmp-PID`, ...) are
#   removed by the next run that takes the lock, since no writer can be alive then, and only once that run is
#   allowed to write there; nothing else is removed. The lock file is opened without following links, so a
#   symbolic link planted in its place is refused rather than written through.

# %%
#| export
RUN_FILES = ('last.pt', 'metrics.jsonl', 'summary.json', 'accuracy.png', 't_first.png')   # everything a run writes
LOCK_FILE = '.pttfs-train.lock'
_TEMPORARY = '(' + '|'.join(re.escape(name) for name in RUN_FILES) + r')\.tmp-\d+'   # what atomic_write leaves when killed


def check_out_path(out: str) -> str:
    "The run folder's absolute path; a `RunError` if it cannot be a writable folder (empty, a file, below a file)."
    if not str(out).strip(): raise RunError("--out is empty: name the run's folder")
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path): raise RunError(f"--out {out}: is a file, not a folder")
    existing = path
    while not os.path.exists(existing): existing = os.path.dirname(existing)
    if not os.path.isdir(existing): raise RunError(f"--out {out}: {existing} is a file, so no folder can be made below it")
    if not os.access(existing, os.W_OK | os.X_OK): raise RunError(f"--out {out}: {existing} is not writable")
    return path


# %% [markdown]
# A single output file (`pttfs-eval`'s JSON, `pttfs-bench`'s) gets the same care as a run folder: checked before any
# work, and never replacing a file that is not an earlier output of the same command:

# %%
#| export
def _holds_keys(path: str, keys) -> bool:
    "Whether the file is a JSON object with all these keys: an earlier output of the same command."
    try:
        with open(path) as f: data = json.load(f)
    except (OSError, ValueError): return False
    return isinstance(data, dict) and all(key in data for key in keys)


def check_out_file(p, out: str,
                   overwrite: bool = False,  # --overwrite: replace an existing file, if it is `own`
                   own: tuple = ('machine', 'isolated'),  # the keys of this command's JSON: only such a file is replaced
                  ) -> str:
    "An output file's absolute path, checked before any work: new (or replaceable), not a folder, in a writable folder."
    if not out.strip(): p.error("--out is empty: name the JSON file to write")
    path = os.path.abspath(out)
    if os.path.isdir(path): p.error(f"--out {out}: is a folder; name a file in it, e.g. {os.path.join(out, 'bench.json')}")
    existing = os.path.dirname(path)
    while not os.path.lexists(existing): existing = os.path.dirname(existing)
    if not os.path.isdir(existing): p.error(f"--out {out}: {existing} is a file, so no file can be written below it")
    if os.path.lexists(path):                       # never replace a checkpoint, a metrics file, another tool's output
        if not overwrite: p.error(f"--out {out}: the file exists; choose another --out, or pass --overwrite to replace it")
        if os.path.islink(path) or not _holds_keys(path, own):
            p.error(f"--out {out}: --overwrite replaces only an earlier {p.prog} output, and this file is not one")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path)): pass        # can a file be written there?
    except OSError as e: p.error(f"--out {out}: cannot write there ({e.strerror or e})")
    return path


# %% [markdown]
# Figures get the same rule. `save_figure` writes a PNG through a temporary neighbour and a rename, so a link
# in its place is replaced, never written through, and marks the file as ours in the PNG's `Software` field;
# `check_figure_files` refuses, before any work, a figure path that holds anything but an earlier figure of ours
# (and even that without `--overwrite`):

# %%
#| export
FIGURE_MARK = b'Software\x00pttfs'      # the PNG text chunk that `save_figure` writes: how a figure is known as ours

def save_figure(fig, path: str, dpi: int = 110):
    "Save `fig` as a PNG at `path`, atomically (a link there is replaced, not followed) and marked as pttfs's."
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format='png', metadata={'Software': 'pttfs'}))


def is_our_figure(path: str) -> bool:
    "Whether `path` is a regular file written by `save_figure` (not a link, not a reader's picture)."
    if os.path.islink(path) or not os.path.isfile(path): return False
    with open(path, 'rb') as f: head = f.read(1 << 16)          # text chunks come before the image data
    return head.startswith(b'\x89PNG') and FIGURE_MARK in head


def check_figure_files(p, paths: list, overwrite: bool = False):
    "Before any work: `p.error` unless every figure path is free, or (with `overwrite`) an earlier figure of ours."
    for path in paths:
        if not os.path.lexists(path): continue
        if not overwrite: p.error(f"{path} exists (a figure {p.prog} would write); choose another --out, or pass --overwrite")
        if not is_our_figure(path): p.error(f"{path} is not a figure {p.prog} wrote, so --overwrite does not replace it; move it away")


# %%
from matplotlib.figure import Figure
with tempfile.TemporaryDirectory() as tmp:
    fig = Figure(figsize=(1, 1)); fig.subplots().plot([0, 1])
    theirs = os.path.join(tmp, 'theirs.txt'); open(theirs, 'w').write('keep')
    os.symlink(theirs, os.path.join(tmp, 'linked.png'))
    save_figure(fig, os.path.join(tmp, 'linked.png'))                       # replaces the link ...
    test_eq(open(theirs).read(), 'keep')                                    # ... and never writes through it
    test_eq([is_our_figure(os.path.join(tmp, n)) for n in ('linked.png', 'theirs.txt', 'none.png')], [True, False, False])
    class Refusing:                            # the part of a parser these checks use
        prog = 'demo'
        def error(self, message): raise RunError(message)
    p = Refusing()
    check_figure_files(p, [os.path.join(tmp, 'none.png')])                  # free: fine
    check_figure_files(p, [os.path.join(tmp, 'linked.png')], overwrite=True) # ours: replaceable with --overwrite
    test_fail(check_figure_files, args=(p, [os.path.join(tmp, 'linked.png')]), exc=RunError, contains='--overwrite')
    test_fail(check_figure_files, args=(p, [theirs], True), exc=RunError, contains='not a figure')
    test_fail(check_out_file, args=(p, os.path.join(theirs, 'x.json')), exc=RunError, contains='is a file')


# %% [markdown]
# Every stored result records what it was measured on (`describe_machine`): the date, the CPU model, the thread
# count, the versions, and the environment variables that change threads, kernels or the allocator.

# %%
#| export
def describe_machine(device: str = 'cpu') -> dict:
    "What the numbers were measured on."
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, device=str(device),
                environment={k: v for k, v in os.environ.items()         # what changes threads, kernels, the allocator
                             if k in ('OMP_NUM_THREADS', 'THP_MEM_ALLOC_ENABLE', 'PTTFS_DISABLE_FUSED', 'LD_PRELOAD') or k.startswith('MALLOC_')})
    try:
        import spikingjelly; info['spikingjelly'] = getattr(spikingjelly, '__version__', 'installed')
    except ImportError: info['spikingjelly'] = None
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu_model'] = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), None)
    except OSError: pass
    if str(device).startswith('cuda') and torch.cuda.is_available(): info['gpu'] = torch.cuda.get_device_name(device)
    return info


# %%
#| export
class RunFolder:
    "A run's folder, locked (an OS file lock, released on exit or kill) while one process writes it."
    def __init__(self, out: str): self.path, self.created, self.fd = os.path.abspath(out), False, None

    def open(self, resume: bool):
        "Make and lock the folder; refuse a locked one and, without `resume`, one that holds a run."
        self.created = not os.path.isdir(self.path)
        try: os.makedirs(self.path, exist_ok=True)
        except OSError as e: raise RunError(f"--out {self.path}: cannot make the folder ({e.strerror})") from None
        try:
            self._lock()
            present = [name for name in RUN_FILES if os.path.lexists(os.path.join(self.path, name))]   # a link counts too
            if present and not resume:
                raise RunError(f"{self.path} already holds a run ({', '.join(present)}); pass --resume to continue it, "
                               f"or choose another --out")
            for name in os.listdir(self.path):       # our own temporaries, left by a killed writer (none is alive now)
                if re.fullmatch(_TEMPORARY, name): os.remove(os.path.join(self.path, name))
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self):
        try: import fcntl
        except ImportError: return                   # not POSIX: no lock
        path = os.path.join(self.path, LOCK_FILE)
        while True:
            try: fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)   # never write through a planted link
            except OSError as e:
                if os.path.islink(path): raise RunError(f"{path} is a symbolic link, not pttfs-train's lock: remove it") from None
                raise RunError(f"--out {self.path}: cannot write there ({e.strerror})") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd); raise RunError(f"{path} is not a regular file, so it cannot be pttfs-train's lock: remove it")
            try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors='replace').strip() or '?'
                os.close(fd)
                raise RunError(f"{self.path} is in use by another pttfs-train (pid {holder}); wait for it, or choose another --out") from None
            try: current = os.stat(path).st_ino == os.fstat(fd).st_ino    # not removed by a holder that just finished
            except FileNotFoundError: current = False
            if current: break
            os.close(fd)
        os.ftruncate(fd, 0); os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def close(self):
        "Release the lock; remove the folder if this run made it and left nothing in it."
        if self.fd is not None:
            try: os.remove(os.path.join(self.path, LOCK_FILE))      # while still locked, so that no one locks a stale file
            except FileNotFoundError: pass
            os.close(self.fd)
            self.fd = None
        if self.created and os.path.isdir(self.path) and not os.listdir(self.path): os.rmdir(self.path)


# %%
with tempfile.TemporaryDirectory() as tmp:
    first = RunFolder(f'{tmp}/run').open(resume=False)
    test_fail(RunFolder(f'{tmp}/run').open, args=(False,), exc=RunError, contains='in use')     # a second writer
    open(f'{tmp}/run/metrics.jsonl', 'w').write('{"epoch": 1}\n')
    first.close()
    test_fail(RunFolder(f'{tmp}/run').open, args=(False,), exc=RunError, contains='already holds a run')
    open(f'{tmp}/run/last.pt.tmp-12345', 'w').write('half a checkpoint')                       # a killed writer's
    RunFolder(f'{tmp}/run').open(resume=True).close()
    print(sorted(os.listdir(f'{tmp}/run')))
    test_eq(sorted(os.listdir(f'{tmp}/run')), ['metrics.jsonl'])
    open(f'{tmp}/file', 'w').write('')
    for bad in ['', f'{tmp}/file', f'{tmp}/file/run']: test_fail(check_out_path, args=(bad,), exc=RunError)
    RunFolder(f'{tmp}/new').open(resume=False).close()                                        # made, left empty ...
    test_eq(os.path.exists(f'{tmp}/new'), False)                                              # ... and removed

# %%
#| export
# Settings that define a run: a checkpoint made with other values cannot be resumed with these.
RUN_KEYS = ('dataset', 'architecture', 'decoder', 'channels', 'hidden', 'tau', 'decoder_threshold', 'schedule',
            'batch_size', 'lr', 'seed', 'augment', 'convs_per_block', 'bf16', 'neuron', 'surrogate', 'output_force_last',
            'optimizer', 'momentum', 'label_smoothing', 'mixup', 'train_subset', 'lr_schedule', 'stage_thresholds',
            'lr_step')
# Keys added later, with the value that runs saved before them had (bf16 None: on for CUDA only).
_OLDER_RUNS = dict(convs_per_block=1, bf16=None, neuron='amos', surrogate='sigmoid', output_force_last=False,
                   optimizer='adam', momentum=0.9, label_smoothing=0.0, mixup=False, train_subset=None,
                   lr_schedule='cosine', stage_thresholds=None, lr_step='epoch')

# A recipe fills every one of these flags that the command leaves out.
RECIPES = {
    'default': dict(optimizer='adam', lr=3e-3, batch_size=64, schedule='1:12,2:4,4:4', label_smoothing=0.0,
                    mixup=False, surrogate='sigmoid', augment=None, bf16=None),
    # Fang et al. 2023b (the PSN paper), whose CIFAR protocol the AMOS paper follows; 1024 epochs at T = 4 in their runs
    'psn': dict(optimizer='sgd', lr=0.1, batch_size=128, schedule='4:1024', label_smoothing=0.1,
                mixup=True, surrogate='atan', augment='psn', bf16=True),
}


def run_settings(settings: dict, device='cpu') -> dict:
    "A run's settings with every key of RUN_KEYS: a key the run predates gets the value such runs had."
    filled = {**_OLDER_RUNS, **settings}
    if filled['bf16'] is None: filled['bf16'] = str(device).startswith('cuda')
    return filled


def model_for(settings: dict, backend: str = 'auto'):
    "The network a run's settings describe."
    s = run_settings(settings)
    return build_model(s['dataset'], s['architecture'], s['decoder'], s['channels'], s['hidden'], s['tau'],
                       s['decoder_threshold'], backend=backend, convs_per_block=s['convs_per_block'], neuron=s['neuron'],
                       T=parse_schedule(s['schedule'])[-1][0], surrogate=s['surrogate'],
                       output_force_last=s['output_force_last'])


def network_signature(weights: dict) -> list:
    "Every tensor's name and shape in a state dict: what loading needs (a class a later version renames still loads)."
    return [f"{name}:{tuple(t.shape)}" for name, t in weights.items() if isinstance(t, Tensor)]


# %%
#| export
class OneLineParser(argparse.ArgumentParser):
    "argparse, but an error is one line that names the flag (no usage block), and exit code 2; or a RunError if `raising`."
    raising = False                                   # True while checking settings read from a checkpoint

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse reads '-1e30' as an unknown flag (its pattern knows '-1' and '-.5' only): a number in any float form
        self._negative_number_matcher = re.compile(r'^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-inf$|^-nan$', re.I)

    hints = {}                                        # flag -> what to use instead, added to "unrecognized arguments"

    def error(self, message):
        if self.raising: raise RunError(message)
        if message.startswith('unrecognized arguments'):
            words = {w.split('=')[0] for w in message.split(':', 1)[1].split()}
            message += ''.join(f"; {hint}" for flag, hint in self.hints.items() if flag in words)
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    "Every flag's default after its help (unless the help states it, or it has none); the epilog as written."
    def _get_help_string(self, action):
        text = action.help or ''
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS: return text
        if '(default' in text or '(recipe' in text: return text
        return f"{text} (default: %(default)s)"


def default_device() -> str:
    "The one rule of every pttfs command: cuda when this machine has it, the CPU otherwise."
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def check_device(p: argparse.ArgumentParser, name: str) -> torch.device:
    "The device `--device` names, if it is the CPU or an available CUDA device; otherwise `p.error`."
    try: device = torch.device(name)
    except (RuntimeError, ValueError): p.error(f"--device {name!r} is not a device: use cpu, cuda or cuda:N")
    if device.type not in ('cpu', 'cuda'): p.error(f"--device {name}: pttfs runs on cpu or cuda")
    if device.type == 'cuda' and not torch.cuda.is_available(): p.error(f"--device {name}: CUDA is not available here")
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        p.error(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def new_run_folder(dataset: str, root: str = 'runs',
                   make: bool = False,  # make it too: taken atomically, so two runs started in one second get two folders
                  ) -> str:
    "runs/DATASET-YYYYmmdd-HHMMSS (then -2, -3, ... if taken): a second plain run never meets the first's folder."
    base = os.path.join(root, f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while True:
        if not make and not os.path.lexists(path): return path
        if make:
            os.makedirs(root, exist_ok=True)
            try: os.mkdir(path); return path
            except FileExistsError: pass
        n, path = n + 1, f"{base}-{n + 1}"


# %%
#| export
def plot_run(out: str, history: list, summary: dict):
    "accuracy.png (accuracy and decisions per epoch, stages marked) and t_first.png (how many test images decide at each step)."
    from matplotlib.figure import Figure         # no pyplot: drawing files must not change a notebook's backend
    from matplotlib.ticker import MaxNLocator
    fig = Figure(figsize=(11, 3.5)); ax, right = fig.subplots(1, 2)
    ax.plot([r['epoch'] for r in history], [100 * r['test_accuracy'] for r in history], 'o-')
    pad = mark_stages(ax, history)
    ax.set_xlabel('epoch'); ax.set_ylabel('test accuracy (%)')
    ax.set_title(f"Test accuracy after each epoch ({summary['dataset']}, schedule {summary['schedule']})", fontsize=10, pad=pad)
    epochs, at_zero, later = decision_curve(history)
    right.plot(epochs, [100 * s for s in at_zero], 'o-', label='share deciding at t = 0')
    right.plot(epochs, [None if a is None else 100 * a for a in later], 's--', label='accuracy of those deciding later')
    right.set_ylim(-3, 103); right.set_xlabel('epoch'); right.set_ylabel('%'); right.legend(fontsize=8)
    right.set_title("Decisions after each epoch" if epochs else "Decisions per epoch were not logged by this run", fontsize=10,
                    pad=mark_stages(right, history))
    fig.tight_layout(); save_figure(fig, os.path.join(out, 'accuracy.png'))
    fig = Figure(figsize=(6, 3.5)); ax = fig.subplots()
    counts = summary['t_first_histogram']
    bars = ax.bar(range(len(counts)), counts)
    ax.bar_label(bars, labels=[f"{100 * c / sum(counts):.1f}%" if c else '' for c in counts], fontsize=8)   # rare steps stay visible
    ax.xaxis.set_major_locator(MaxNLocator(integer=True)); ax.margins(y=0.15)
    ax.set_xlabel('time step t of the decision (first output spike; t = 0 is the first step)'); ax.set_ylabel('test images')
    ax.set_title(f"When the test images decide: {summary['avg_timesteps']:.2f} steps on average, of T = {summary['T']}", fontsize=10)
    fig.tight_layout(); save_figure(fig, os.path.join(out, 't_first.png'))


# %% [markdown]
# ## Summary
# A run folder is checked before any work, locked while a run writes it, and written only by rename (`atomic_write`), so a kill leaves complete files; checkpoints carry a checksum and load without running code; single output files and figures are replaced only when they are an earlier output of the same command. `RUN_KEYS` and `model_for` turn a run's settings back into its network, and `OneLineParser` makes every command's error one line.

# %%
#| hide
# NBVAL_SKIP
import nbdev; nbdev.nbdev_export()
