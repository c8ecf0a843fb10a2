"""Preemption: SIGTERM or SIGINT becomes one checkpoint at the next step boundary and a clean exit.

Schedulers (SLURM, Kubernetes, TPU maintenance) signal the whole process group and kill it a grace
period later. While a `Preemption` is entered, a signal during training steps only sets a flag that
the loop reads after each step, so the state it saves is a whole step; anywhere else (building the
pool, compiling, planning an epoch, evaluating) it raises `Preempted` at once, so a launch never
sits on a signal for the minute a compilation or a re-embedding can take: the loop then saves what
it trained since its last checkpoint, if anything. A second signal while the first is handled is
ignored, so the save it triggers is not interrupted.

Reader processes (Grain workers, cache readers) must not die under the loop: a worker killed while
it starts leaves its parent blocked for ever writing its start-up payload to the pipe (CPython keeps
the pipe's read end open until the write ends). `launch.py` therefore calls `block_signals()` before
anything starts a thread: every thread and process started afterwards inherits the blocked mask, so
the group's signal reaches no reader at any moment, and `Preemption` receives it in a thread of its
own (`signal.sigwait`) and hands it to the main thread (`_thread.interrupt_main`). Without that call
(a library user, the tests) Python's handlers receive the signals as usual and the readers ignore
them once started (`oceansar.data.pipeline.ignore_signals`).
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_ABANDONED: list[threading.Thread] = []  # `interruptibly`'s threads whose caller stopped waiting
_RECEIVER: list[threading.Thread] = []   # the one `sigwait` thread, once signals are blocked


def block_signals() -> None:
    """Blocks SIGTERM and SIGINT in the calling thread and everything it starts later (see above).

    Call it first thing in the main module, before imports that start threads.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _receive() -> None:
    while True:
        _thread.interrupt_main(signal.sigwait(SIGNALS))  # runs the main thread's Python handler


def _start_receiver() -> None:
    """Receives blocked signals in a thread of their own, once, when the main thread blocks them."""
    if not _RECEIVER and set(SIGNALS) <= signal.pthread_sigmask(signal.SIG_BLOCK, []):
        _RECEIVER.append(threading.Thread(target=_receive, name="preemption-signals", daemon=True))
        _RECEIVER[0].start()


class Preempted(Exception):
    """A SIGTERM or SIGINT stopped the launch; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int, detail: str = ""):
        self.signum, self.detail = signum, detail
        super().__init__(f"{signal.Signals(signum).name}" + (f": {detail}" if detail else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Preemption:
    """Turns SIGTERM/SIGINT into `Preempted` or a flag; a context manager (see the module docstring).

    Entered outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self.signum: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is not None:  # already stopping: let the save finish
            return
        self.signum = signum
        if not self._deferring:
            raise Preempted(signum)

    def check(self) -> None:
        """Raises `Preempted` if a signal arrived while deferred."""
        if self.signum is not None:
            raise Preempted(self.signum)

    @contextlib.contextmanager
    def deferred(self):
        """Inside, a signal only sets `requested`: the code finishes what it started."""
        outer, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = outer

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
            _start_receiver()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def interruptibly(fn: Callable[..., Any], *args, name: str = "worker") -> Any:
    """`fn(*args)` in a daemon thread, the caller waiting so that a signal handler can still run.

    A long C++ call (XLA compilation) on the main thread would hold off Python's signal handlers
    until it returns; waiting on an event in short slices instead lets `Preempted` be raised within
    a tenth of a second (a signal handed over by `interrupt_main` does not wake a blocked wait). The
    abandoned thread is a daemon: it does not keep the process alive.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while not done.wait(0.1):
            pass
    except BaseException:
        _ABANDONED.append(thread)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def exit_with(code: int) -> None:
    """Ends the process with `code`: `SystemExit`, or `os._exit` while an abandoned call still runs.

    An XLA compilation cannot be cancelled, and tearing the interpreter down under it aborts the
    process (SIGABRT, a core dump instead of the exit code). Everything that must survive (the
    checkpoint, the lock's release) is done before this is called.
    """
    if any(t.is_alive() for t in _ABANDONED):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
