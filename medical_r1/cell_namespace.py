"""What of a notebook's namespace travels between the kernel and its GPU processes (medical_r1.gpu_processes).

The kernel keeps the notebook's own variables, so that an edited parameter and Run all start the next processes
from what the notebook says: the processes start from the kernel's plain values, its imports (imported again there)
and the functions and classes defined in its cells (their source, run again there); after each cell the first
process sends its plain values back. Objects such as a loaded model cannot travel: they live in the processes.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import sys
import textwrap
import types

IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
# `%pip install` in two processes at once writes the same site-packages twice: it runs in the first alone
INSTALL_PREFIXES = ("%pip", "!pip", "%conda", "!conda", "%mamba", "%uv", "!uv", "!python -m pip")


def is_plain(value) -> bool:
    """A value that can go between the kernel and the processes as it is: parameters and other literals."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(is_plain, value))
    return isinstance(value, dict) and all(isinstance(k, str) and is_plain(v) for k, v in value.items())


def user_names(namespace: dict) -> list[str]:
    """The notebook's own variables in a namespace, not IPython's (In, Out, _i3, get_ipython)."""
    return [k for k in namespace if not k.startswith("_") and k not in IPYTHON_NAMES]


def plain_values(namespace: dict) -> dict:
    """The notebook's variables that are plain values (the parameters among them)."""
    return {k: namespace[k] for k in user_names(namespace) if is_plain(namespace[k])}


def launch_namespace(namespace: dict) -> dict:
    """What the processes start from, of the kernel's variables: plain values; modules and what was imported from
    them (by module and name, imported again there); functions and classes defined in cells (by their source, run
    again there); and the names of the rest (objects made before the launch: say so, define them after it)."""
    start = {"values": plain_values(namespace), "imports": [], "sources": [], "left_out": []}
    for name in user_names(namespace):
        value = namespace[name]
        if name in start["values"]:
            continue
        if isinstance(value, types.ModuleType):
            start["imports"].append((name, value.__name__, ""))
            continue
        module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
        if isinstance(value, (type, types.FunctionType)) and module == "__main__":
            source = _defined_in_cells(value, namespace.get("In") or [])
            if source:
                start["sources"].append(source)
                continue
        elif isinstance(module, str) and isinstance(qualname, str) and _importable(value, module, qualname):
            start["imports"].append((name, module, qualname))
            continue
        start["left_out"].append(name)
    return start


def _defined_in_cells(value, cells: list[str]) -> str | None:
    """The source of a function or class defined in a cell: inspect finds a function's; a class's it cannot (no
    file), so it is the newest cell of the kernel's history that defines it at the top level."""
    with contextlib.suppress(OSError, TypeError):
        return textwrap.dedent(inspect.getsource(value))
    from IPython.core.inputtransformer2 import TransformerManager

    for cell in reversed(cells):
        with contextlib.suppress(SyntaxError):
            code = TransformerManager().transform_cell(cell)
            for node in ast.parse(code).body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == value.__name__:
                    return ast.get_source_segment(code, node)
    return None


def _importable(value, module: str, qualname: str) -> bool:
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is value


def names_loaded(source: str) -> set[str]:
    """The names a cell reads, as IPython would run it (magics turned into calls); none when it does not parse."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        tree = ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run_cell_magic"
              and len(node.args) == 3 and isinstance(node.args[2], ast.Constant)):  # %%time and the like: the body
            names |= names_loaded(node.args[2].value)
    return names


def start_namespace(start: dict) -> dict:
    """The notebook's variables as the kernel sent them: plain values, imports by their module and name, functions
    and classes defined in cells by their source."""
    namespace = {"__name__": "__main__", **start["values"]}
    for name, module, qualname in start["imports"]:
        value = importlib.import_module(module)
        for part in qualname.split(".") if qualname else []:
            value = getattr(value, part)
        namespace[name] = value
    for source in start["sources"]:
        exec(compile(source, "<notebook, before the GPU processes>", "exec"), namespace)
    return namespace


def changed_plain_values(namespace: dict, sent: dict[str, int]) -> tuple[dict, list[str]]:
    """(plain variables new or rebound since the last call, names deleted since): what the kernel's namespace needs
    to stay the notebook's. `sent` remembers what went, by object identity."""
    changed = {}
    for name in user_names(namespace):
        value = namespace[name]
        if sent.get(name) != id(value) and is_plain(value):
            changed[name] = value
            sent[name] = id(value)
    deleted = [name for name in sent if name not in namespace]
    for name in deleted:
        del sent[name]
    return changed, deleted
