"""The error `nhr train` reports as a one-line message (no traceback)."""


class TrainError(ValueError):
    """Training cannot run as asked (bad data, unsupported model, bad option)."""
