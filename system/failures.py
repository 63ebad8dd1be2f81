"""Why a run stopped before its end, when the cause is known: the CLI prints one line and exits 1.

Both leave the run resumable: acknowledged replay data is on disk, and `harmonyray resume LOGDIR`
continues from the last checkpoint.
"""
from __future__ import annotations


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and how to continue."""


class RunnersFailed(RunStopped):
    """Every runner was given up on: nothing collects any more."""


class LearnerFailed(RunStopped):
    """A learner died or stopped before the run's end: the group cannot train on without it.
    `died`: its process is gone (killed, out of memory, node lost), as opposed to an error its
    training loop raised, which a restored learner would meet again."""

    def __init__(self, message: str, died: bool = False):
        super().__init__(message)
        self.died = died
