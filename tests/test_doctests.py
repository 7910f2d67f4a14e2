"""The examples in public docstrings run (so they cannot rot)."""

import doctest
import importlib

import pytest

MODULES = ["edge_gr", "edge_gr.delta", "edge_gr.update", "edge_gr.weightmap", "server.registry", "server.incremental_ids", "server.rollout", "server.incremental", "device_sim.rollout_sim", "edge_gr.errors", "edge_gr.bundle", "edge_gr.text", "edge_gr.backends", "server.export.modules", "server.export.bundle", "edge_gr.ids", "edge_gr.decode", "server.metrics", "server.data.base", "server.data.jsonl",
           "server.text", "server.model", "server.semantic_ids", "server.evaluate", "server.train", "server.peers.popularity",
           "server.compress", "server.compress.quantize", "server.compress.distill", "server.compress.grouped", "server.compress.prune",
           "server.compress._util", "server.compress.recipe", "server.compress.transforms", "edge_gr.search", "server.nas", "server.nas.space", "server.nas.search", "device_sim.fl.records", "device_sim.fl.adapters", "device_sim.fl.local",
           "device_sim.fl.report", "device_sim.fl.flower", "server.shard", "server.shard.route", "server.shard.engines", "server.shard.meta", "server.shard.log", "server.security", "device_sim.fl.robust", "device_sim.fl.attacks", "server.schemas", "edge_gr.validate", "server.api", "edge_gr.sealed"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


def test_device_package_imports_no_torch_and_no_server():
    import subprocess
    import sys

    code = "import sys, edge_gr, edge_gr.decode, edge_gr.ids; bad = [m for m in ('torch', 'server', 'device_sim') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
