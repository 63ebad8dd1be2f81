"""SIGTERM and SIGINT of `harmonyray train | resume`: stop collecting, checkpoint, exit 128+signum.

The first signal only sets a flag: the driver's watch loop sees it within a tick and the run's
orderly shutdown follows (runners stop and flush, the learner stops, final metrics, a checkpoint,
W&B closes, Ray shuts down), its waits cut to fit `run.shutdown_timeout` seconds after the signal.
A watchdog thread ends the process at that deadline whatever the main thread is doing, as does a
second signal at once: one line on stderr, every process the driver started (Ray's processes,
W&B's service) killed, then `os._exit(128 + signum)`.

Ray's part: `ray.init` sets a SIGTERM handler (`sys.exit`), and its C++ core worker installs Abseil's
failure-signal handler for SIGTERM, which dumps a stack and arms `alarm(3)`; three seconds later
SIGALRM aborts the process (exit 134) in the middle of whatever cleanup the Python handler started,
and Ray's node agents are left running. `StopSignals.install`, called after Ray started, replaces
both; `ray.shutdown()` resets SIGTERM to the default action at the C level (the core worker
uninstalls its handlers), so the CLI installs them again after it.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import psutil

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped on a signal after its orderly shutdown; `line` says where to resume."""

    def __init__(self, signum: int, line: str, signals: StopSignals | None = None):
        super().__init__(line)
        self.signum, self.line, self.signals = signum, line, signals

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def report(self) -> None:
        """The line on stderr, unless the deadline's watchdog already wrote its own."""
        if self.signals is not None:
            self.signals.say(self.line)
        else:
            os.write(2, (self.line + "\n").encode())


class StopSignals:
    """The stop request of one run: set by SIGTERM/SIGINT once `install`ed; never raises into the run."""

    def __init__(self, timeout: float = 60.0, logdir: str | os.PathLike | None = None):
        self.timeout = timeout  # run.shutdown_timeout: from the first signal to the process's exit
        self.logdir = logdir
        self.signum: int | None = None
        self.at: float | None = None  # time.monotonic() of the first signal
        self.env_steps = 0  # the latest count the driver saw
        self.saved_steps: int | None = None  # env steps of the latest checkpoint of the run
        self.saved_at: float | None = None
        self.save_error: str | None = None
        self._previous: dict[int, object] = {}
        self._watchdog: threading.Thread | None = None
        self._exiting = threading.Lock()
        self._said = threading.Lock()  # held once the final line is out: there is one

    # ----------------------------------------------------------- installation
    def install(self) -> None:
        """Handle SIGTERM and SIGINT in this (main) thread; call it after Ray started, and again
        after `ray.shutdown()`, which resets SIGTERM to the default action beneath Python."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            previous = signal.signal(signum, self._handle)
            if previous != self._handle:  # the first installation's originals are restored later
                self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """The handlers from before `install` (an in-process caller's own, e.g. pytest's SIGINT)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    # ------------------------------------------------------- what the run reads
    @property
    def requested(self) -> bool:
        return self.signum is not None

    def remaining(self, share: float = 1.0) -> float | None:
        """Seconds left for an orderly shutdown step: `share` of the time left before the orderly
        part must be over (70% of the timeout; the rest is for W&B and Ray); None before a signal."""
        if self.at is None:
            return None
        left = self.at + 0.7 * self.timeout - time.monotonic()
        return max(0.0, share * left)

    def saved(self, env_steps: int) -> None:
        self.saved_steps, self.saved_at = env_steps, time.monotonic()

    def saved_since_signal(self) -> bool:
        """A checkpoint holds everything collected: written after the signal, or after the last
        step counted (a signal during the final evaluation, when collection had already stopped)."""
        if self.saved_at is None:
            return False
        return (self.at is not None and self.saved_at >= self.at) or (self.saved_steps or 0) >= self.env_steps > 0

    # ------------------------------------------------------------------ lines
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal"

    def checkpoint_words(self) -> str:
        if self.saved_since_signal():
            return "checkpoint written"
        why = f" ({self.save_error})" if self.save_error else ""
        if self.saved_steps is None:
            return f"no checkpoint written{why}"
        return f"no new checkpoint{why}, the last is at {self.saved_steps:,} env steps"

    def resume_words(self) -> str:
        return f"resume with: harmonyray resume {self.logdir}" if self.logdir is not None else "nothing to resume"

    def interrupted(self) -> Interrupted:
        """What the driver raises once the orderly shutdown is over."""
        steps = self.saved_steps if self.saved_since_signal() else self.env_steps
        line = f"harmonyray: interrupted by {self.name()} at {steps:,} env steps; {self.checkpoint_words()}; {self.resume_words()}"
        return Interrupted(self.signum or signal.SIGTERM, line, self)

    def say(self, line: str, newline_first: bool = False) -> None:
        """Write the run's one final line to stderr, unless it was written already. With `os.write`,
        not `sys.stderr`: the main thread may be inside a write to it when a signal or the deadline
        comes."""
        if not self._said.acquire(blocking=False):
            return
        try:
            os.write(2, (("\n" if newline_first else "") + line + "\n").encode())
        except OSError:
            pass

    # ---------------------------------------------------------------- signals
    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
            self._watchdog = threading.Thread(target=self._watch_deadline, name="harmonyray-shutdown-deadline", daemon=True)
            self._watchdog.start()
            return
        self.exit_now(signum, f"{signal.Signals(signum).name} again during the shutdown: exited at once")

    def _watch_deadline(self) -> None:
        assert self.at is not None
        margin = min(2.0, 0.1 * self.timeout)  # killing the processes and exiting take well under this
        time.sleep(max(0.0, self.at + self.timeout - margin - time.monotonic()))
        self.exit_now(self.signum or signal.SIGTERM,
                      f"interrupted by {self.name()}; the shutdown ran past run.shutdown_timeout={self.timeout:g}s: exited")

    def exit_now(self, signum: int, what: str) -> None:
        """One line (none if the orderly one is out), every process this one started killed, exit
        128+signum. From any thread."""
        if not self._exiting.acquire(blocking=False):  # the other path is already at it
            return
        steps = self.saved_steps if self.saved_since_signal() else self.env_steps
        # after a new line: a progress bar may be on the current one
        self.say(f"harmonyray: {what} at {steps:,} env steps; {self.checkpoint_words()}; {self.resume_words()}", newline_first=True)
        kill_descendants()
        os._exit(128 + signum)


def kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (Ray's GCS, raylet, its agents and
    workers, W&B's service), all listed before any is killed, so that none is orphaned unseen."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
