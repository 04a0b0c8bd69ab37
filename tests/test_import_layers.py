"""The package's imports point down its layers and never go round in a circle.

Every `import` / `from ... import` in every module of scstn_vcn (and of the Triton kernels, installed as
scstn_vcn.kernels) is read from the source with ast, including the imports inside functions (a lazy import
is still a dependency). Each module belongs to the unit named by its first two dotted parts (scstn_vcn.ops,
scstn_vcn.engine, ...); a module may import its own unit and the units of lower layers only. The layers are
defined here, once.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. Units in one layer do not import each other: each is its own kind of thing.
LAYERS = (
    ("scstn_vcn._version", "scstn_vcn.configs"),  # plain data: the version string, the config schema and presets
    ("scstn_vcn._C", "scstn_vcn.kernels"),  # the compiled extension and the Triton kernels
    ("scstn_vcn.ops",),  # the fused ops: contracts, eager references, backends, torch.library wiring
    ("scstn_vcn.modules",),  # nn.Modules built on the ops (SC-STN, VCN, heads)
    ("scstn_vcn.models", "scstn_vcn.losses", "scstn_vcn.data", "scstn_vcn.metrics"),
    ("scstn_vcn.engine",),  # training and evaluation machinery
    ("scstn_vcn.extractor", "scstn_vcn.export", "scstn_vcn.figures"),  # library pieces built on the engine
    ("scstn_vcn.report",),  # the evaluation report (its alignment images are the figures' resampling)
    ("scstn_vcn.commands",),  # one module per `scstn-vcn` sub-command
    ("scstn_vcn.cli",),  # the parser and the dispatch
    ("scstn_vcn",),  # the package itself (its lazy scstn_vcn.FeatureExtractor)
)
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def _source_modules():
    """{module name: file path} for the package and its kernels (kernels/ installs as scstn_vcn.kernels)."""
    found = {}
    for top, package in (
        (os.path.join(ROOT, "scstn_vcn"), "scstn_vcn"),
        (os.path.join(ROOT, "kernels"), "scstn_vcn.kernels"),
    ):
        for folder, subfolders, files in os.walk(top):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            rel = os.path.relpath(folder, top)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in sorted(files):
                if name.endswith(".py"):
                    module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    found[module] = os.path.join(folder, name)
    return found


MODULES = _source_modules()


def _is_package(module):
    return MODULES.get(module, "").endswith("__init__.py")


def _imports(module, path):
    """The scstn_vcn modules `module` imports, anywhere in its file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    package = module if _is_package(module) else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                # `from pkg import name` imports the submodule pkg.name when there is one.
                candidate = f"{source}.{alias.name}"
                targets.add(candidate if candidate in MODULES or candidate == "scstn_vcn._C" else source)
    return {t for t in targets if t == "scstn_vcn" or t.startswith("scstn_vcn.")}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def unit_of(module):
    parts = module.split(".")
    return ".".join(parts[:2])


def test_every_unit_has_a_layer():
    unknown = sorted({unit_of(m) for m in MODULES} - set(LAYER_OF))
    assert not unknown, f"units with no layer in LAYERS: {unknown}; give each one"


def upward_imports():
    bad = []
    for module, targets in GRAPH.items():
        mine = unit_of(module)
        for target in targets:
            theirs = unit_of(target)
            if theirs == mine:
                continue
            if LAYER_OF.get(theirs, -1) >= LAYER_OF.get(mine, -1):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_imports_point_down_the_layers():
    bad = upward_imports()
    assert not bad, "imports of the same or a higher layer:\n" + "\n".join(bad)


def import_cycles():
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH.get(node, ())):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH[node]:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "modules that import each other (directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


@pytest.mark.parametrize(
    "name",
    [
        "train",
        "eval",
        "demo",
        "visualize",
        "export",
        "extract",
        "search",
        "make-synthetic",
        "study",
        "convert-checkpoint",
    ],
)
def test_each_sub_command_is_one_module(name):
    """`scstn-vcn NAME` is scstn_vcn/commands/NAME.py (dashes as underscores), which the parser uses."""
    import importlib

    from scstn_vcn.cli import build_parser
    from scstn_vcn.commands import COMMANDS

    assert name.replace("-", "_") in COMMANDS
    module = importlib.import_module("scstn_vcn.commands." + name.replace("-", "_"))
    assert module.NAME == name
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices[name].get_default("handler") is module.run


def test_the_graph_holds_known_edges():
    """The graph is real: known downward edges are in it (a reader that saw nothing would pass anything)."""
    assert "scstn_vcn.ops._backend" in GRAPH["scstn_vcn.ops.channel_pool"]
    assert any(t.startswith("scstn_vcn.engine") for t in GRAPH["scstn_vcn.commands.train"])
    assert "scstn_vcn.commands" in GRAPH["scstn_vcn.cli"]


def test_the_checks_report_an_upward_import_and_a_cycle(monkeypatch):
    graph = {module: set(targets) for module, targets in GRAPH.items()}
    graph["scstn_vcn.ops.channel_pool"].add("scstn_vcn.engine.trainer")  # ops reaching up to the engine
    graph["scstn_vcn.ops._checks"].add("scstn_vcn.ops.channel_pool")  # channel_pool -> _checks -> channel_pool
    monkeypatch.setitem(globals(), "GRAPH", graph)
    assert "scstn_vcn.ops.channel_pool -> scstn_vcn.engine.trainer" in upward_imports()
    assert any({"scstn_vcn.ops.channel_pool", "scstn_vcn.ops._checks"} <= set(c) for c in import_cycles())
