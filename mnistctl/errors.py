"""The one exception type the CLI turns into a single line and exit code 2."""


class MnistctlError(Exception):
    """A problem the user can fix: a bad config, flag, file or run directory.

    The message names the problem and where it is; the CLI prints it as one line.
    """

    exit_code = 2


class DamagedFileError(MnistctlError):
    """A file of a run that cannot be read: binary junk, a truncated archive, wrong columns."""


# The message of the graph's check_numerics on the loss (mnistctl.model): a non-finite loss
# fails the step inside TensorFlow, and the loop (mnistctl.train.loop) knows it by this message.
NONFINITE_LOSS = "the loss is not a finite number"
