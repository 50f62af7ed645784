"""The data layer's error type, and the messages it shares between loaders."""


class DatasetError(ValueError):
    """A dataset cannot be read: missing, unprepared, truncated or malformed.

    The message names the file or dataset and says what to do (which package to install, which
    command prepares it, which config field points at it). Runs exit with code 2 on it, before any compute.
    """


def size_mismatch_message(name: str, split: str, found: int, known: int) -> str:
    """The refusal of a split whose size is not the dataset's (config.data.allow_size_mismatch accepts it)."""
    return (
        f"{name}: the prepared {split} split holds {found} examples, where {name} has {known}; the files are a "
        f"partial preparation or not {name}'s. Prepare the whole dataset, or set "
        "--config.data.allow_size_mismatch=True to train on these files as they are"
    )
