"""The layers of slurm_vm (docs/architecture.md, "Layers"), checked on the code's imports.

A unit is a subpackage (`slurm_vm/hypervisor/`) or a top-level module (`slurm_vm/spec.py`). Every unit has a
layer; a unit imports only from its own layer or lower ones, never from a sibling column of its layer (the
node's hooks and the login side know nothing of each other), and no two units import each other, directly
or round a circle. Imports inside functions and under TYPE_CHECKING count too.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "slurm_vm")

# Bottom to top: each layer is a list of columns (sets of units).
LAYERS: list[list[set[str]]] = [
    [{"errors", "limits", "units", "yamldoc", "mounts", "schema", "transport", "acceptloop"}],   # foundation
    [{"hypervisor", "disks", "networks", "slurm", "config", "spec"}],              # core: definitions, plain libraries
    [{"checkpoint"}],                                                               # save/restore, VMM-neutral
    [{"launcher"}],                                                                 # the job step running one VM
    [{"node"},                                                                      # the root hooks, `slurm-vm launch`
     {"submit", "lifecycle", "output", "readiness", "sshjump", "console", "vmaccess", "completion", "userdoctor",
      "catalog", "imagesave", "reference", "checkpoint_command", "history", "vnc", "vncrelay", "vncweb", "loopback",
      "guestexec"}],                                                                # the login side's library
    [{"cli"}],                                                                      # the thin click layer
]

# Imports allowed to break the layers (none today). A new one fails the tests; so does one listed here once it
# is gone (drop it here).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def place(unit: str) -> tuple[int, int]:
    for level, columns in enumerate(LAYERS):
        for column, units in enumerate(columns):
            if unit in units:
                return level, column
    raise AssertionError(f"slurm_vm.{unit} has no layer: add it to LAYERS here and in docs/architecture.md")


def unit_of(module: str) -> str:
    return module.split(".")[1]


def imported(path: str, module: str, is_package: bool) -> set[str]:
    """The slurm_vm modules (and names that may be modules) a file imports, absolute."""
    package = module if is_package else module.rsplit(".", 1)[0]
    out = set()
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("slurm_vm.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "slurm_vm":
                out |= {f"slurm_vm.{a.name}" for a in node.names}
            elif target.startswith("slurm_vm."):
                out.add(target)
    return out


def unit_edges() -> dict[tuple[str, str], str]:
    """(importer unit, imported unit) -> one file that does it."""
    edges: dict[tuple[str, str], str] = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if not name.endswith(".py") or (folder == PACKAGE and name == "__init__.py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            is_package = name == "__init__.py"
            module = rel[:-len(".__init__")] if is_package else rel
            for target in imported(path, module, is_package):
                if unit_of(target) != unit_of(module):
                    edges.setdefault((unit_of(module), unit_of(target)), os.path.relpath(path, ROOT))
    return edges


def test_every_unit_has_a_layer_and_imports_only_downwards():
    wrong = []
    edges = unit_edges()
    assert set(KNOWN_EXCEPTIONS) <= set(edges), "an exception is gone: remove it from KNOWN_EXCEPTIONS"
    for (src, dst), path in sorted(edges.items()):
        if (src, dst) in KNOWN_EXCEPTIONS:
            continue
        (src_level, src_column), (dst_level, dst_column) = place(src), place(dst)
        if dst_level > src_level or (dst_level == src_level and dst_column != src_column):
            wrong.append(f"{path}: {src} imports {dst}, which is above it or beside it")
    assert wrong == []


def test_no_import_circle_between_units():
    graph: dict[str, set[str]] = {}
    for src, dst in unit_edges():
        if (src, dst) not in KNOWN_EXCEPTIONS:
            graph.setdefault(src, set()).add(dst)
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert circles == []


def test_the_layers_name_only_units_that_exist():
    units = {name[:-3] if name.endswith(".py") else name for name in os.listdir(PACKAGE)
             if (name.endswith(".py") and name != "__init__.py")
             or os.path.isfile(os.path.join(PACKAGE, name, "__init__.py"))}
    named = set().union(*(units_ for columns in LAYERS for units_ in columns))
    assert named == units


def test_srun_command_lines_are_built_in_slurm_only():
    spelled = []
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".py") and os.path.relpath(folder, PACKAGE) != "slurm":
                with open(path) as fh:
                    if '["srun"' in fh.read():
                        spelled.append(os.path.relpath(path, ROOT))
    assert spelled == [], "build srun lines with slurm.srun.srun_in_job"
