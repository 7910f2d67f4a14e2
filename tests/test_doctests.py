"""The examples in public docstrings run (so they cannot rot)."""

import doctest
import importlib

import pytest

MODULES = ["edge_gr.errors", "edge_gr.ids", "edge_gr.decode", "server.metrics", "server.data.base", "server.data.jsonl",
           "server.text", "server.model", "server.semantic_ids", "server.evaluate", "server.train", "server.peers.popularity"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
