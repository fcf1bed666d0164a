"""Exceptions the driver turns into one clear line for the user.

Each message says what is wrong and what to do. Command-line entry points catch ``AnetrainError``,
print ``error: <message>`` to stderr and exit with status 2 (argparse's status for bad usage).
"""


class AnetrainError(Exception):
    """Base of the driver's user-facing errors."""


class UsageError(AnetrainError):
    """A bad command line or config file: unknown preset or backend, bad value, unknown key."""


class DataError(AnetrainError):
    """Token shards that cannot be used: missing, empty, misshapen, out-of-vocabulary or too short."""


class CheckpointError(AnetrainError):
    """A checkpoint that cannot be loaded: truncated, corrupt, wrong format or wrong model config."""


class ModelFileError(AnetrainError):
    """A llama2.c model or tokenizer file that is malformed or does not fit its header."""


class RunFailed(Exception):
    """The run cannot go on (not a usage problem): the training command prints it as one line and
    exits with status 1."""


def print_error(message):
    """``error: message`` on stderr in one write: stderr writes through, and print()'s text and
    newline as two writes could interleave with another process's line (the ranks of a torchrun
    job share one stderr)."""
    import sys

    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def exit_on_error(main):
    """Run ``main()``; turn an AnetrainError into ``error: ...`` on stderr and exit status 2, and a
    Ctrl-C that reaches here (the command's own handling, if any, has cleaned up) into one
    ``interrupted`` line and exit status 130, instead of a traceback."""
    import sys

    try:
        return main()
    except AnetrainError as e:
        print_error(e)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
