"""One exception family for every problem caused by user input (data, config, checkpoint).

Front doors (CLI, pipelines) catch `LookalikeError` and print its message alone, without a traceback:
the message itself must say what is wrong, where, and how to fix it.
"""


class LookalikeError(Exception):
    """Base of all user-facing errors: the message is the whole explanation."""


class DatasetError(LookalikeError):
    """The dataset CSV or its images cannot be used as they are."""


class SamplerError(LookalikeError):
    """The data cannot satisfy the batch sampler's constraints (too few labels or instances)."""


class CheckpointError(LookalikeError):
    """A checkpoint file is missing, corrupt, unsafe or does not match the model."""


class ConfigError(LookalikeError):
    """A config has an unknown key, a wrong type or an unknown component name."""


class ArgumentError(LookalikeError, ValueError):
    """A component (miner, loss, plot, image cache) got an argument it cannot use: a value out of range, or a
    tensor or list of the wrong shape or length. Also a `ValueError`, so callers that catch that still do."""


def suggest(word: object, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice (a prefix match first, then the nearest spelling), or ''."""
    import difflib

    choices = [str(c) for c in choices]
    word = str(word)
    close = [c for c in choices if word and c.lower().startswith(word.lower())]
    close = close or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(kind: str, name: object, choices) -> str:
    """The message for an unknown name: the valid choices and, when one is close, "did you mean ...?"."""
    choices = [str(c) for c in choices]
    return f"unknown {kind} {name!r}{suggest(name, choices)}; valid choices: {', '.join(choices)}."
