"""The library's own error types: every user-facing failure is one of these."""


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
