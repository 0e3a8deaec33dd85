"""The library's own error types: every user-facing failure is one of these (and `shown`, to name a value in one)."""


class HFVarInitError(Exception):
    """Base class of every error hf_varinit raises on bad input."""


class RuleError(HFVarInitError, ValueError):
    """A rule spec that cannot be parsed or validated."""


class RoleError(HFVarInitError, ValueError):
    """A model whose parameters cannot be mapped to roles."""


class StatsError(HFVarInitError, ValueError):
    """A statistics file that is missing, truncated, corrupt or of the wrong format."""


class ReportError(HFVarInitError, ValueError):
    """A variance report that cannot be read or does not fit the model."""


class DataError(HFVarInitError, ValueError):
    """A dataset that is empty, too short, or cannot be loaded."""


class ConfigError(HFVarInitError, ValueError):
    """A training or study configuration with an unknown key or an invalid value."""


class NonFiniteLossError(HFVarInitError, RuntimeError):
    """Training produced a NaN or infinite loss."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters (the middle elided), for one-line error messages.

    Example:
        >>> shown("a" * 1000, limit=20)
        "'aaaaaaa...aaaaaaa'"
    """
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    half = max(1, (limit - 3) // 2)
    return text[:half] + "..." + text[-half:]
