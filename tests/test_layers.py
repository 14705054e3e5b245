"""The import graph of src/animegen: no cycle, no upward import, inference and training apart.

Every `from animegen...` / `import animegen...` counts, at module level or inside a function, so a
function-level import cannot hide a cycle. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "animegen"

# Lower numbers sit lower; a module may import its own layer or lower ones. A subpackage's modules
# take the subpackage's layer.
LAYERS = {
    # foundations: no animegen imports beyond each other
    "animegen.errors": 0,
    "animegen.helpformat": 0,
    "animegen.image_sizes": 0,
    "animegen.sampling_options": 0,
    "animegen.streams": 0,
    "animegen.visual": 0,
    "animegen.runlog": 0,
    "animegen.config_values": 0,
    "animegen.config": 1,
    "animegen.networks": 2,  # the tutorial's, FastGAN-style and projected networks, and their factory
    # shared by training and inference: file format, layers, devices, data, sampling
    "animegen.checkpoint_format": 3,
    "animegen.model_loading": 3,
    "animegen.deconv_grad": 3,
    "animegen.device": 3,
    "animegen.sampling": 3,
    "animegen.data": 3,
    "animegen.metrics": 4,
    # the two sides: neither imports the other
    "animegen.training": 5,
    "animegen.generate": 5,
    "animegen.best_of": 5,
    "animegen.export": 5,
    "animegen.runs": 5,
    "animegen.serve": 5,
    # the command line and the package's lazy API
    "animegen.cli": 7,
    "animegen.__main__": 7,
    "animegen": 7,
}
INFERENCE = {"animegen.generate", "animegen.best_of", "animegen.export"}
INFERENCE |= {"animegen.runs", "animegen.serve"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_key(module: str) -> str | None:
    """The LAYERS entry for a module: its own, or its subpackage's (never the root package's)."""
    if module == "animegen":
        return module
    while "." in module:
        if module in LAYERS:
            return module
        module = module.rpartition(".")[0]
    return None


def side(module: str) -> str | None:
    key = layer_key(module)
    if key == "animegen.training":
        return "training"
    return "inference" if key in INFERENCE else None


def imports_of(module: str) -> set[str]:
    """The animegen modules `module` imports anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "animegen"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "animegen":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in MODULES:  # `from animegen import checkpoint_format`
                    found.add(target)
                elif not (node.module == "animegen" and alias.name == "__version__"):
                    found.add(node.module)
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if layer_key(m) not in LAYERS] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module: str) -> None:
    own = LAYERS.get(layer_key(module), -1)
    upward = [t for t in sorted(GRAPH[module]) if LAYERS.get(layer_key(t), 99) > own]
    assert upward == [], f"{module} (layer {own}) imports higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_training_and_inference_stay_apart(module: str) -> None:
    mine = side(module)
    crossing = [t for t in sorted(GRAPH[module]) if mine and side(t) not in (None, mine)]
    assert crossing == [], f"{module} ({mine}) imports the other side: {crossing}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
