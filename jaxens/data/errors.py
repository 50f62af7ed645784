"""The one error type of the data layer."""


class DatasetError(ValueError):
    """A dataset cannot be read: missing, unprepared, truncated or malformed.

    The message names the file or dataset and says what to do (which package to install, which
    command prepares it, which config field points at it). Runs exit with code 2 on it, before any compute.
    """
