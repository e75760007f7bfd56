"""Imports go downward only (ADR 010): no package imports a higher or sibling layer, and no two
modules import each other, lazily or not. `python scripts/import_graph.py` prints the graph."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_every_import_goes_down_a_layer_and_no_module_cycle():
    graph = _graph()
    edges = graph.module_edges()
    assert len(edges) > 50 and sum(map(len, edges.values())) > 100   # it did read the package
    assert graph.upward(edges) == []
    assert graph.cycles(edges) == []


def test_the_check_catches_an_upward_import_and_a_cycle():
    graph = _graph()
    edges = {"shoal.runtime.bench": {"shoal.planner.pipeline"}, "shoal.planner.pipeline": set(),
             "shoal.models.spec": {"shoal.models.partition"}, "shoal.models.partition": {"shoal.models.spec"},
             "shoal.plan.document": {"shoal.errors"}, "shoal.errors": set()}
    assert graph.upward(edges) == ["shoal.runtime.bench -> shoal.planner.pipeline"]
    assert graph.cycles(edges) == [["shoal.models.partition", "shoal.models.spec"]]
