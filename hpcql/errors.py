"""Exception types and the exit codes the command line maps them to."""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_CHECKPOINTED = 3  # run stopped on a signal after writing a checkpoint: please requeue
EXIT_STOPPED = 4  # run stopped on a signal with checkpoints disabled: nothing saved, do not requeue


class BadInput(Exception):
    """Bad user input (config, MDP file, checkpoint, arguments): exit code 2.

    The message is one line that names what is wrong and where. ``agreed`` is
    True when every rank of the job raised it together (see ``comm.collective``);
    only then can the job exit cleanly without an abort.
    """

    def __init__(self, message: str, *, agreed: bool = False) -> None:
        super().__init__(message)
        self.agreed = agreed


class RankFailure(Exception):
    """Another rank failed; raised on the ranks that did not fail themselves."""


class Checkpointed(Exception):
    """Raised on every rank that stops on a signal: exit 3 (requeue) after a checkpoint was written,
    exit 4 when checkpoints are disabled (``saved`` False: nothing to resume from)."""

    def __init__(self, message: str, *, saved: bool = True) -> None:
        super().__init__(message)
        self.saved = saved
