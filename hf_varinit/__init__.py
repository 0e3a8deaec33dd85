"""hf_varinit: weight-initialisation rules for HF models, variance recording and variance reports.

Example:
    >>> import hf_varinit as hv
    >>> model = hv.from_config(GPT2Config(n_layer=12), rule="kaiming", seed=0)
    >>> with hv.patched_init("xavier"):
    ...     other = AutoModelForCausalLM.from_config(GPT2Config(n_layer=12))
"""

from importlib.metadata import version

from hf_varinit import models  # noqa: F401  (registers the MLP with the Auto classes)
from hf_varinit.errors import ConfigError, DataError, HFVarInitError, ReportError, RuleError, StatsError
from hf_varinit.init.patch import apply_init, from_config, init_plan, patched_init
from hf_varinit.init.roles import get_roles
from hf_varinit.init.rules import Init, InitRule, get_rule, list_rules, register_rule
from hf_varinit.record.callback import VarianceCallback
from hf_varinit.record.recorder import VarianceRecorder
from hf_varinit.record.stats_file import load_stats, save_stats
from hf_varinit.report import optimal  # noqa: F401  (registers the optimal rule)
from hf_varinit.report.report import VarianceReport
from hf_varinit.report.steady_state import AnalysisOptions, analyze

__version__ = version("hf_varinit")

__all__ = [
    "AnalysisOptions",
    "ConfigError",
    "DataError",
    "HFVarInitError",
    "Init",
    "InitRule",
    "ReportError",
    "RuleError",
    "StatsError",
    "VarianceCallback",
    "VarianceRecorder",
    "VarianceReport",
    "analyze",
    "apply_init",
    "from_config",
    "get_roles",
    "get_rule",
    "init_plan",
    "list_rules",
    "load_stats",
    "patched_init",
    "register_rule",
    "save_stats",
]
