"""A command's main() run in the test's own process, for refusals that come before any work.

Starting a fresh interpreter costs ~3 s (importing torch) per call; a bad flag or a bad `--out` is refused long
before a fresh process would matter, so those tests call main() here and get what `subprocess.run` would return.
Tests of real runs (kills, locks held by another process, torchrun) keep their subprocesses.
"""
import contextlib, importlib, io, os, subprocess


def run_main(module: str, function: str, *args, cwd=None) -> subprocess.CompletedProcess:
    "module.function(list(args)) with stdout and stderr captured; SystemExit becomes the return code."
    main = getattr(importlib.import_module(module), function)
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None: os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: main(list(args)); code = 0
            except SystemExit as e: code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally: os.chdir(here)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


TINY = ['--dataset', 'digits', '--hidden', '16', '--channels', '4', '--batch-size', '256']   # a run of seconds


def train_main(*args, cwd=None): return run_main('pttfs.train_cli', 'main', *args, cwd=cwd)
def eval_main(*args, cwd=None): return run_main('pttfs.run_eval', 'eval_main', *args, cwd=cwd)
def bench_main(*args, cwd=None): return run_main('pttfs.bench_cli', 'main', *args, cwd=cwd)


def one_line_error(result, *words, code=2):
    "A refusal as a user sees it: exit `code`, no traceback, and the last line holds every word."
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-2000:]
    assert lines and all(w in lines[-1] for w in words), result.stderr[-2000:]
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
