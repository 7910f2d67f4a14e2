"""android_demo (issue #7): the Python side of the shared vectors, and the Kotlin core's JVM tests on them.

The Kotlin tests need Debian's ``kotlin`` and ``junit4`` packages (``.ci/run`` installs them);
without ``kotlinc`` those tests are skipped (with the reason), the Python-side vector checks still run.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_gr.bundle import load_manifest
from edge_gr.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "android_demo"))
import make_vectors  # noqa: E402


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    return make_vectors.write_vectors(tmp_path_factory.mktemp("vectors") / "v")


def test_vector_bundle_is_valid_and_every_corruption_is_refused(vectors):
    assert load_manifest(vectors / "bundle").model_version == "vectors-1"
    cases = json.loads((vectors / "bundle_cases.json").read_text())["cases"]
    assert {c["name"] for c in cases} == set(make_vectors.CORRUPTIONS)
    for c in cases:
        if c["name"] == "ok":
            assert c["error"] is None
            load_manifest(c["path"])
        else:
            assert c["error"] and "To fix:" in c["error"]["text"], c
            with pytest.raises(BundleError):
                load_manifest(c["path"])


def test_search_vectors_cover_the_runtime_paths(vectors):
    doc = json.loads((vectors / "search.json").read_text())
    q = {x["name"]: x for x in doc["queries"]}
    assert all(len(x["expected"]) == min(x["k"], make_vectors.N_ITEMS) for x in q.values() if x["history"])
    assert [s for _, s in q["empty-history"]["expected"]] and all(s != s for _, s in q["empty-history"]["expected"])  # NaN: fallback
    assert len({s for _, s in q["ties"]["expected"]}) == 1  # the order comes from the tie-breaking alone
    assert any(v != v or v in (float("inf"), float("-inf")) for _, row in q["non-finite-logits"]["logits"] for v in row)
    assert 0 not in q["long-with-unknown"]["src"]  # truncated to the last max_len known items
    for x in q.values():  # every replayed row starts at BOS and has V = sum(levels) logits
        assert all(key[0] == 0 and len(row) == sum(make_vectors.LEVELS) for key, row in x["logits"])


def test_policy_traces_switch_variants(vectors):
    traces = json.loads((vectors / "policy.json").read_text())["traces"]
    for t in traces:
        if t["name"] != "only-fp16":
            assert len({v for v, _, _ in t["expected"]}) >= 2, t["name"]


needs_kotlin = pytest.mark.skipif(shutil.which("kotlinc") is None or not Path("/usr/share/java/junit4.jar").is_file(),
                                  reason="needs Debian's kotlin and junit4 packages: apt-get install -y kotlin junit4 (.ci/run installs them)")


def _run_kotlin_tests(**env) -> str:
    r = subprocess.run(["bash", str(ROOT / "android_demo/core/run_tests.sh")], capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "PYTHON": sys.executable, **env})
    out = r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, out[-6000:]
    m = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert m and int(m.group(1)) >= 50, out[-3000:]
    return r.stdout


@needs_kotlin
def test_kotlin_core_agrees_with_python_runtime():
    out = _run_kotlin_tests()
    assert "ok   agreesWithPythonRuntime[search/ties]" in out


@pytest.mark.slow
@needs_kotlin
def test_kotlin_core_agrees_with_a_real_executorch_bundle():
    """A tiny model trained and exported with ExecuTorch here; its real decoder logits replayed in Kotlin (~2 min)."""
    out = _run_kotlin_tests(EDGE_GR_REAL_VECTORS="1")
    assert out.count("ok   agreesWithPythonRuntime[search-real/") == 6, out[-3000:]


@pytest.mark.skipif(shutil.which("kotlinc") is None or shutil.which("javac") is None,
                    reason="needs Debian's kotlin package and a JDK: apt-get install -y kotlin (.ci/run installs it)")
def test_android_app_sources_type_check_against_stubs():
    """Not an Android build: the app's Kotlin against hand-written stubs of the Android/ExecuTorch members it uses."""
    r = subprocess.run(["bash", str(ROOT / "android_demo/app/typecheck/typecheck.sh")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "type-check against the stubs: ok" in r.stdout, (r.stdout + r.stderr)[-6000:]
