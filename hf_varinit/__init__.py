"""hf_varinit: weight-initialisation rules for HF models, variance recording and variance reports.

Example:
    >>> import hf_varinit as hv
    >>> model = hv.from_config(GPT2Config(n_layer=12), rule="kaiming", seed=0)
    >>> with hv.patched_init("xavier"):
    ...     other = AutoModelForCausalLM.from_config(GPT2Config(n_layer=12))
    >>> nxt = hv.from_report("model_cards/gpt2-12l-tiny-kaiming", seed=0)  # the report's model, s0^2 = V(W)
"""

import importlib
import importlib.util
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from hf_varinit.errors import ConfigError, DataError, HFVarInitError, ReportError, RuleError, StatsError

# The public names load on first use (PEP 562), so that `import hf_varinit` and `hf-varinit --help` do not import
# torch and transformers. Public name -> the module that defines it.
_LAZY = {
    **dict.fromkeys(("apply_init", "from_config", "init_plan", "patched_init"), "hf_varinit.init.patch"),
    "get_roles": "hf_varinit.init.roles",
    **dict.fromkeys(("Init", "InitRule", "get_rule", "list_rules", "register_rule"), "hf_varinit.init.rules"),
    "VarianceCallback": "hf_varinit.record.callback",
    "VarianceRecorder": "hf_varinit.record.recorder",
    **dict.fromkeys(("load_stats", "save_stats"), "hf_varinit.record.stats_file"),
    "OptimalRule": "hf_varinit.init.optimal",
    "VarianceTable": "hf_varinit.init.table",
    "from_report": "hf_varinit.report.next_model",
    "VarianceReport": "hf_varinit.report.report",
    "AnalysisOptions": "hf_varinit.report.options",
    "analyze": "hf_varinit.report.steady_state",
}


def __getattr__(name: str) -> Any:
    """Load a public name (or a subpackage, ``hv.arch``) on first access; later accesses find it in the module."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the names __getattr__ loads
    from hf_varinit.init.optimal import OptimalRule
    from hf_varinit.init.patch import apply_init, from_config, init_plan, patched_init
    from hf_varinit.init.roles import get_roles
    from hf_varinit.init.rules import Init, InitRule, get_rule, list_rules, register_rule
    from hf_varinit.init.table import VarianceTable
    from hf_varinit.record.callback import VarianceCallback
    from hf_varinit.record.recorder import VarianceRecorder
    from hf_varinit.record.stats_file import load_stats, save_stats
    from hf_varinit.report.next_model import from_report
    from hf_varinit.report.options import AnalysisOptions
    from hf_varinit.report.report import VarianceReport
    from hf_varinit.report.steady_state import analyze

__version__ = version("hf_varinit")

__all__ = [
    "AnalysisOptions",
    "ConfigError",
    "DataError",
    "HFVarInitError",
    "Init",
    "InitRule",
    "OptimalRule",
    "ReportError",
    "RuleError",
    "StatsError",
    "VarianceCallback",
    "VarianceRecorder",
    "VarianceReport",
    "VarianceTable",
    "analyze",
    "apply_init",
    "from_config",
    "from_report",
    "get_roles",
    "get_rule",
    "init_plan",
    "list_rules",
    "load_stats",
    "patched_init",
    "register_rule",
    "save_stats",
]
