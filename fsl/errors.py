"""fsl's own error types: train.py and analyze.py print them as one line (HYDRA_FULL_ERROR=1: the trace)."""


class FslError(Exception):
    """Base of the errors that fsl raises for a problem the user can fix (the message says how)."""


class ConfigError(FslError, ValueError):
    """The configuration is invalid (unknown key or name, out-of-range size)."""
