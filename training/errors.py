"""The error the training and evaluation runs raise when they cannot start."""

__all__ = ["SetupError"]


class SetupError(ValueError):
    """The run cannot start (bad arguments, config, checkpoint, data, work dir or device); nothing has been
    written."""
