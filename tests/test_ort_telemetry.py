"""ONNX Runtime's telemetry stays off: no device id, no event queue under the user's home.

The official onnxruntime 1.32 wheel starts Microsoft's 1DS telemetry when it is *imported*
(``~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db}``);
``onnxruntime.disable_telemetry_events()`` does not stop that, ``ORT_DISABLE_TELEMETRY=1``
does, and ``edge_gr.backends`` sets it (see its docstring). Each case runs in a fresh
interpreter with ``HOME`` and ``XDG_CACHE_HOME`` pointed at a temporary folder.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODEL = """
import onnx
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("src", TensorProto.INT64, ["N", "S"])
y = helper.make_tensor_value_info("out", TensorProto.INT64, ["N", "S"])
m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["src"], ["out"])], "g", [x], [y]),
                      opset_imports=[helper.make_opsetid("", 13)])
m.ir_version = 8
onnx.save(m, {path!r})
"""

# the device runtime's own session (encoder + decoder), then onnxruntime used directly after edge_gr
EDGE_GR = """
import numpy as np
import edge_gr
from edge_gr.backends import open_session
s = open_session("onnxruntime", {{"encoder": {path!r}, "decoder": {path!r}}}, threads=1)
assert s.encode(np.ones((1, 3), dtype=np.int64))[0].shape == (1, 3)
import onnxruntime as ort
ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"]).run(None, {{"src": np.ones((1, 2), dtype=np.int64)}})
"""

PLAIN = """
import numpy as np, onnxruntime as ort
ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"]).run(None, {{"src": np.ones((1, 2), dtype=np.int64)}})
"""


def _run(code: str, home: Path, **extra: str) -> list[Path]:
    """Run ``code`` with HOME (and the XDG cache) in ``home``; return the files it left there."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, timeout=120, cwd=ROOT)
    return [p for p in home.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ort") / "identity.onnx")
    subprocess.run([sys.executable, "-c", MODEL.format(path=path)], check=True, timeout=120)
    return path


def test_edge_gr_sessions_leave_nothing_in_home(model, tmp_path):
    control = _run(PLAIN.format(path=model), tmp_path / "plain")  # onnxruntime alone: what edge-gr must prevent
    if not control:
        pytest.skip("this onnxruntime build writes no telemetry files (nothing to turn off)")
    assert any(p.name == "onnxruntime.db" for p in control), control
    assert _run(EDGE_GR.format(path=model), tmp_path / "edge") == []
    xdg = tmp_path / "xdg"
    assert _run(EDGE_GR.format(path=model), xdg, XDG_CACHE_HOME=str(xdg / "cache")) == []


def test_an_explicit_opt_in_is_respected(model, tmp_path):
    """edge-gr only sets the default: ORT_DISABLE_TELEMETRY=0 from the caller keeps ONNX Runtime's behaviour."""
    control = _run(PLAIN.format(path=model), tmp_path / "plain")
    if not control:
        pytest.skip("this onnxruntime build writes no telemetry files")
    assert _run(EDGE_GR.format(path=model), tmp_path / "optin", ORT_DISABLE_TELEMETRY="0")
