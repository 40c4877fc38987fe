"""The library's exceptions: one line each, naming the bad value and what is allowed."""


class FLError(Exception):
    """Base class: the CLI prints these as one line (exit status 2), never a traceback."""


class ConfigError(FLError, ValueError):
    """A config field is out of its allowed range."""


class DataError(FLError, ValueError):
    """A dataset is missing, cannot be downloaded, or its file is malformed."""


class CodecError(FLError, ValueError):
    """An encoded upload is truncated, corrupted, or of an unknown format."""


class DivergenceError(FLError, RuntimeError):
    """Training diverged: every client's upload was non-finite for several rounds."""
