"""The package's shape: imports point one way along the flow, no cycles, no giant modules.

Layers, lowest first (a module may import its own subpackage and anything below):
base (vocabulary, errors, cancel, cue, clock, fsutil, sdnotify, childenv) < config < sound < cache, coze < voice
< queue < mqtt, wyoming < app < cli. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PKG = Path(__file__).resolve().parent.parent / "coze_speaker"
LAYERS = {
    "": 0, "vocabulary": 0, "errors": 0, "cancel": 0, "cue": 0, "clock": 0, "fsutil": 0, "sdnotify": 0,
    "childenv": 0, "memtrim": 0,
    "config": 1,
    "sound": 2,
    "cache": 3, "coze": 3,
    "voice": 4,
    "queue": 5,
    "mqtt": 6, "wyoming": 6,
    "app": 7,
    "cli": 8, "__main__": 8,
}
MAX_LINES = 620  # "no module over ~600 lines"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage(module: str) -> str:
    """coze_speaker.queue.worker -> queue; coze_speaker.coze -> coze; coze_speaker -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path, *, top_level_only: bool = False) -> List[Tuple[int, str]]:
    """(line, absolute module) of every coze_speaker import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "coze_speaker":
                continue
            if node.module is None or target.count(".") < 1:  # from . import x / from .. import x
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.append((node.lineno, candidate if _exists(candidate) else target))
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "coze_speaker"]
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PKG / rel).with_suffix(".py").exists() or (PKG / rel / "__init__.py").exists()


def modules() -> List[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_stage_has_a_layer():
    assert {stage(module_name(p)) for p in modules()} <= set(LAYERS)


def test_imports_point_down_the_flow():
    upward = []
    for path in modules():
        here = stage(module_name(path))
        for line, target in imports(path):
            there = stage(target)
            if there != here and LAYERS[there] > LAYERS[here]:
                upward.append(f"{path.relative_to(PKG.parent)}:{line}: {here or 'base'} imports {target}")
    assert upward == []


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (a package's __init__ re-exporting its own modules
    is not an edge of the design, so it is left out)."""
    graph: Dict[str, Set[str]] = {}
    for path in modules():
        name = module_name(path)
        own = name + "." if path.name == "__init__.py" else None
        graph[name] = {t for _, t in imports(path, top_level_only=True)
                       if t != name and not (own and t.startswith(own))}
    cycles: List[str] = []
    done: Set[str] = set()

    def visit(node: str, trail: List[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt in graph and nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])
    assert cycles == []


def test_no_module_over_about_600_lines():
    big = [f"{p.relative_to(PKG.parent)}: {n}" for p in modules()
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert big == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule itself is tested: a sound module importing the queue must be reported."""
    fake = PKG / "sound" / "_layer_probe.py"
    fake.write_text("from ..queue.worker import Announcer\n")
    try:
        found = [(stage(module_name(fake)), stage(t)) for _, t in imports(fake)]
        assert found == [("sound", "queue")] and LAYERS["queue"] > LAYERS["sound"]
    finally:
        fake.unlink()
