"""The package layout is the data flow (DESIGN.md): each stage imports only the stages above it.

An AST walk over ``hf_varinit/``: no import cycles, no upward imports, nothing imports ``cli/``, no
function-level imports of the package's own modules outside ``cli/``, architecture names only in ``arch/`` and
``init/roles.py``, and no module much over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_varinit"

# The stages, top to bottom: a module may import its own stage and the ones before it, never one after it.
STAGES = ["errors", "plugins", "io_utils", "reference_reports", "arch", "init", "record", "report", "train",
          "calibrate", "cli"]
ENTRY_POINTS = {"hf_varinit", "hf_varinit.__main__"}  # the public API and `python -m hf_varinit` sit on top

# Attribute and key names that only the architecture table may know.
ARCH_NAMES = {
    "c_attn", "c_proj", "c_fc", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "query_key_value", "dense_h_to_4h", "dense_4h_to_h", "wte", "wpe", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_size", "max_position_embeddings",
}
# GPT-2 config attributes that are also this project's option names (--n-embd): forbidden on configs only.
CONFIG_ONLY_NAMES = {"n_embd", "n_layer", "n_head", "n_positions", "n_inner"}
ARCH_MODULES = {"hf_varinit.arch", "hf_varinit.arch.table", "hf_varinit.arch.config", "hf_varinit.arch.builder",
                "hf_varinit.arch.keys", "hf_varinit.init.roles"}
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The hf_varinit modules an import statement loads (``from x import y`` counts y when it is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("hf_varinit")]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    if not base.startswith("hf_varinit"):
        return []
    out = [base]
    out += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return out


def imports(module: str) -> list[tuple[str, ast.AST, bool]]:
    """(imported module, node, at module level) for every import of the package's own modules."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in resolve(module, node):
                found.append((target, node, id(node) in top))
    return found


GRAPH = {m: sorted({t for t, _, _ in imports(m) if t in MODULES and t != m}) for m in MODULES}


def test_no_import_cycles():
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    # a package __init__ that re-exports its own submodules is not a cycle of logic
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_each_stage_imports_only_the_stages_above_it():
    upward = []
    for module in MODULES:
        if module in ENTRY_POINTS:
            continue
        own = stage(module)
        for target, node, _ in imports(module):
            if target == "hf_varinit":
                upward.append(f"{module}:{node.lineno} imports the package root")
                continue
            theirs = stage(target)
            if own is None or theirs is None:
                continue
            if theirs > own:
                upward.append(f"{module}:{node.lineno} ({STAGES[own]}) imports {target} ({STAGES[theirs]})")
    assert not upward, "\n".join(upward)


def test_nothing_outside_cli_imports_cli():
    offenders = [f"{m} imports {t}" for m in MODULES if not m.startswith("hf_varinit.cli") and m not in ENTRY_POINTS
                 for t, _, _ in imports(m) if t.startswith("hf_varinit.cli")]
    assert not offenders, offenders


# The command line imports the library inside each command's `run` (and cli/main.py the command module it runs),
# so that `hf-varinit --help` and `hf-varinit <command> --help` answer without loading torch and transformers.
# Nothing imports cli/, so these late imports cannot hide a cycle.
LAZY_IMPORTERS = "hf_varinit.cli"


def test_no_function_level_imports_of_the_package():
    inner = [f"{m}:{node.lineno} imports {t}" for m in MODULES for t, node, top in imports(m)
             if not top and not _type_checking_only(m, node) and not m.startswith(LAZY_IMPORTERS)]
    assert not inner, "\n".join(inner)


def _type_checking_only(module: str, node: ast.AST) -> bool:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            if any(n is node or (isinstance(n, type(node)) and n.lineno == node.lineno) for n in ast.walk(block)):
                return True
    return False


@pytest.mark.parametrize("module", sorted(set(MODULES) - ARCH_MODULES))
def test_architecture_names_live_in_the_architecture_table(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in ARCH_NAMES:
                found.append(f"line {node.lineno}: .{node.attr}")
            elif node.attr in CONFIG_ONLY_NAMES and "config" in ast.unparse(node.value).lower():
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ARCH_NAMES:
            found.append(f"line {node.lineno}: {node.value!r}")
    assert not found, f"{module} names architecture attributes (move them to hf_varinit/arch/): {found}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_read_in_one_sitting(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concern (~400 at most)"


def test_the_layout_of_design_md_exists():
    for stage_name in STAGES:
        assert (PACKAGE / f"{stage_name}.py").is_file() or (PACKAGE / stage_name / "__init__.py").is_file(), stage_name
    for module in ("init.roles", "init.rules", "init.patch", "record.moments", "record.recorder",
                   "record.stats_file", "record.callback", "record.from_checkpoint", "report.steady_state",
                   "report.dynamics", "init.optimal", "init.transfer", "report.report", "report.next_model",
                   "report.card", "report.plots", "report.publish", "train.run_config", "train.data",
                   "train.checkpoint", "train.loop", "train.lm_study", "train.study_stats", "__main__"):
        assert f"hf_varinit.{module}" in MODULES, module


LAB = "hf_varinit_lab"  # the lab (experiments/): it imports the library, never the reverse


def test_nothing_in_the_library_imports_the_lab():
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{module}:{node.lineno} imports {n}" for n in names if n == LAB or n.startswith(LAB + ".")]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(LAB + "."):
                found.append(f"{module}:{node.lineno} names {node.value!r} (importlib)")
    assert not found, "\n".join(found)
