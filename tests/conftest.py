import os
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def device_python(tmp_path_factory):
    """The python of a clean venv holding only ``pip install edge-gr[device]`` from this checkout (no torch, no flwr)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}  # nothing of this venv leaks in
    venv = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{root}[device]"], capture_output=True, text=True, timeout=900, env=env)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return py, env


@pytest.fixture(scope="session")
def update_registry(tmp_path_factory):
    """The tiny registry of tests/test_update.py (v1.0 full, v1.1 LoRA, v1.2 new items), built once for every module
    that ships its versions to devices (test_update, test_trust); its bundle exports are cached in it."""
    from test_update import _registry

    return _registry(tmp_path_factory.mktemp("update-registry"))
