"""User-facing errors: each is reported as one line by the command-line entry points."""


class TokenPruneError(Exception):
    """Base class: an error in the user's input, printed as one line without a traceback."""


class ConfigError(TokenPruneError):
    """A config file that is missing or malformed, or an override that does not fit it."""


class DatasetNotFoundError(TokenPruneError):
    """A registered dataset whose files are not where its registration says."""


class CheckpointError(TokenPruneError):
    """A checkpoint that does not exist or does not match the model."""


class DeviceError(TokenPruneError):
    """A device this machine does not have (CUDA asked for where PyTorch finds none)."""


class InputError(TokenPruneError):
    """A bad model or tool input (image file, guidance vector, task id, prompt, ...)."""


class BadImageError(InputError):
    """An image file that cannot be read, or an image the model cannot take (empty, too
    thin to resize); a tool running over many images reports it and goes on."""
