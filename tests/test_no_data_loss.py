"""Writers never delete what edge-gr did not write (issue #16): ``--out`` of ``registry materialize``, ``registry
package``, ``export`` and ``build`` refuses a folder that is not its own previous output (``--force`` overrides);
outputs are swapped in from a temp sibling; temp folders of runs that died (``.tmp-v*`` in the registry, the temp
siblings of outputs) are removed by the next run, never a live one's."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import edge_gr
import edge_gr.fsutil as fsutil
from edge_gr.bundle import load_manifest
from edge_gr.delta import read_tensors
from edge_gr.errors import InputError
from edge_gr.fsutil import OUTPUT_MARKER, output_folder
from server.cli import main as cli
from server.registry import CHECKPOINT_WEIGHTS, Registry

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _notes(d: Path) -> Path:
    """The reviewer's folder: ``mkdir d; echo x > d/notes.txt``."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "notes.txt").write_text("x\n")
    return d


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}"))


@pytest.fixture
def reg(tmp_path) -> Registry:
    """A numpy-only registry: v1.0 full, v1.1 a delta."""
    r = Registry(tmp_path / "R")
    state = {"w": np.arange(16, dtype=np.float32).reshape(4, 4), "b": np.zeros(4, np.float32)}
    r.publish(state, full=True, aux={"ids.json": b"[]"}, activate=True)
    r.publish({**state, "b": np.ones(4, np.float32)})
    return r


def test_fsutil_examples_run():
    assert doctest.testmod(fsutil, optionflags=doctest.ELLIPSIS).failed == 0


def test_materialize_keeps_notes_refuses_until_force_and_replaces_its_own_output(reg, tmp_path, capsys):
    d = _notes(tmp_path / "d")
    argv = ["registry", "materialize", "--registry", str(reg.root), "v1.0", "--out", str(d)]
    assert cli(argv) == 2                                     # the reviewer's command: refused, one line naming --force
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"] and (d / "notes.txt").read_text() == "x\n"
    assert _siblings(d) == []                                 # and no temp folder left beside it
    out = tmp_path / "m"
    assert cli(["registry", "materialize", "--registry", str(reg.root), "v1.0", "--out", str(out)]) == 0
    assert cli(["registry", "materialize", "--registry", str(reg.root), "v1.1", "--out", str(out)]) == 0  # its own output
    assert read_tensors(out / CHECKPOINT_WEIGHTS)["b"][0] == 1.0 and (out / "ids.json").is_file()
    assert json.loads((out / OUTPUT_MARKER).read_text())["command"] == "registry materialize" and _siblings(out) == []
    (out / "mine.txt").write_text("added later")              # its own output with a file added: refused too
    with pytest.raises(InputError, match=r"mine\.txt"):
        reg.materialize("v1.0", out)
    assert (out / "mine.txt").is_file()
    assert cli(argv + ["--force"]) == 0                       # --force replaces the user's folder
    assert not (d / "notes.txt").exists() and read_tensors(d / CHECKPOINT_WEIGHTS)["b"][0] == 0.0
    with pytest.raises(InputError, match="output of `edge-gr registry materialize`, not of `edge-gr registry package`"):
        reg.bundle_package(None, "v1.0", d)                   # refused before any bundle is exported
    pkg = _notes(tmp_path / "pkg")
    assert cli(["registry", "package", "--registry", str(reg.root), "--to", "v1.0", "--out", str(pkg)]) == 2
    assert "--force" in capsys.readouterr().err and sorted(p.name for p in pkg.iterdir()) == ["notes.txt"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch

    from edge_gr.ids import SemanticIds
    from server.data.base import Item
    from server.generative import GenerativeModel
    from server.model import GenerativeRetriever, GRConfig

    n = 8
    ids = SemanticIds([f"m{i}" for i in range(n)], np.array([[i % 4, i // 4] for i in range(n)]), (4, 2))
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=n, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=4)
    torch.manual_seed(0)
    gm = GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, [Item(f"m{i}", f"movie {i}") for i in range(n)],
                         popularity=["m0"])
    ckpt = tmp_path_factory.mktemp("ckpt") / "ckpt"
    gm.save(ckpt)
    return gm, ckpt


def test_export_keeps_notes_refuses_other_folders_until_force_and_reexports_onto_its_own_output(model, reg, tmp_path, capsys):
    from server.export.bundle import export_bundle

    gm, ckpt = model
    d = _notes(tmp_path / "d")
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(d), "--variants", "torch:fp32"]
    assert cli(argv) == 2                                     # notes.txt survives `edge-gr export --out d`
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"] and _siblings(d) == []
    with pytest.raises(InputError, match="notes.txt"):        # the API (BundleWriter's caller) refuses the same way
        export_bundle(gm, d, [("torch", "fp32")])
    ck = reg.materialize("v1.0", tmp_path / "ck")             # a folder that is not a bundle: refused
    with pytest.raises(InputError, match="output of `edge-gr registry materialize`, not of `edge-gr export`"):
        export_bundle(gm, ck, [("torch", "fp32")])
    assert (ck / CHECKPOINT_WEIGHTS).is_file()
    archive = tmp_path / "b.tar"
    archive.write_text("my own file")                         # --archive would overwrite OUT.tar: refused as well
    with pytest.raises(InputError, match="b.tar exists and is not a bundle archive"):
        export_bundle(gm, tmp_path / "b", [("torch", "fp32")], archive=True)
    assert archive.read_text() == "my own file"

    assert cli(argv + ["--force", "--model-version", "v1"]) == 0  # --force replaces it
    assert not (d / "notes.txt").exists() and load_manifest(d).model_version == "v1" and edge_gr.load(d).search(["m1"], 2)
    export_bundle(gm, d, [("torch", "fp32")], model_version="v2")  # onto its own previous output: no --force needed
    assert load_manifest(d).model_version == "v2" and _siblings(d) == []
    assert json.loads((d / OUTPUT_MARKER).read_text())["command"] == "export"
    (d / OUTPUT_MARKER).unlink()                              # a bundle exported before markers existed: still ours
    export_bundle(gm, d, [("torch", "fp32")], model_version="v3")
    assert load_manifest(d).model_version == "v3"
    (d / OUTPUT_MARKER).unlink()
    _notes(d)                                                 # ... unless something was added to it
    with pytest.raises(InputError, match="notes.txt"):
        export_bundle(gm, d, [("torch", "fp32")])
    assert (d / "notes.txt").is_file() and load_manifest(d).model_version == "v3"


def test_build_refuses_a_foreign_out_before_any_stage_runs(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{j}", "text": f"doc {j}"}) + "\n" for j in range(4)))
    d = _notes(tmp_path / "d")
    assert cli(["build", "--task", "retrieval", "--data", str(docs), "--out", str(d), "--preset", "tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"] and not (tmp_path / "d.build").exists()


KILLED_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import server.registry as registry
    def die(path, doc, **kw):  # the version's files are written, its manifest not yet: SIGKILL
        os.kill(os.getpid(), signal.SIGKILL)
    registry.write_json_atomic = die
    reg = registry.Registry(sys.argv[1])
    reg.publish({"w": np.full((4, 4), 7, np.float32), "b": np.zeros(4, np.float32)})
""")


def test_a_leftover_tmp_version_of_a_killed_publish_is_removed_by_the_next_publish(reg, tmp_path):
    script = tmp_path / "publish.py"
    script.write_text(KILLED_PUBLISH)
    assert subprocess.run([sys.executable, str(script), str(reg.root)], env=ENV, cwd=REPO, timeout=120).returncode == -9
    left = [p.name for p in reg.root.iterdir() if p.name.startswith(".tmp-v")]
    assert len(left) == 1 and left[0].startswith(".tmp-v1.2-")   # the reviewer's finding: never cleaned before
    (reg.root / ".gc-v1.1").mkdir()                              # and what a killed gc leaves
    m = reg.publish({"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float32)})
    assert m.version == "v1.2" and reg.verify("v1.2")
    assert not [p for p in reg.root.iterdir() if p.name.startswith((".tmp-v", ".gc-"))]
    assert reg.versions() == ["v1.0", "v1.1", "v1.2"]


WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import edge_gr.fsutil as fsutil
    out, how = Path(sys.argv[1]), sys.argv[2]
    if how == "between-renames":  # the previous output moved aside, the new one not yet in: SIGKILL
        def swap(tmp, stage, out):
            os.replace(out, tmp / "old")
            os.kill(os.getpid(), signal.SIGKILL)
        fsutil._swap = swap
    with fsutil.output_folder(out, "demo") as stage:
        (stage / "a.txt").write_text(how)
        if how == "mid-write":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "live":
            print("writing", flush=True)
            sys.stdin.readline()
    print("done", flush=True)
""")


def test_temp_siblings_of_dead_runs_are_removed_live_ones_kept_and_a_moved_aside_output_restored(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "out"
    run = lambda how: subprocess.run([sys.executable, str(script), str(out), how], env=ENV, cwd=REPO, timeout=120)  # noqa: E731
    assert run("mid-write").returncode == -9
    dead = _siblings(out)
    assert len(dead) == 1 and ".edge-gr-tmp-" in dead[0] and not out.exists()
    live = subprocess.Popen([sys.executable, str(script), str(out), "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=ENV, cwd=REPO)
    try:
        assert live.stdout.readline().strip() == "writing"
        with output_folder(out, "demo") as stage:             # the next run: the dead one's temp goes, the live one's stays
            (stage / "a.txt").write_text("next")
        assert (out / "a.txt").read_text() == "next"
        left = _siblings(out)
        assert dead[0] not in left and len(left) == 1 and f"-tmp-{live.pid}-" in left[0]
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.stdout.readline().strip() == "done" and live.wait(timeout=30) == 0
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert (out / "a.txt").read_text() == "live" and _siblings(out) == []
    assert run("between-renames").returncode == -9            # killed with the previous output moved aside
    assert not out.exists() and len(_siblings(out)) == 1
    with pytest.raises(RuntimeError):                          # the next run puts it back first, even if it fails itself
        with output_folder(out, "demo"):
            raise RuntimeError("crashed")
    assert (out / "a.txt").read_text() == "live" and _siblings(out) == []
    with pytest.raises(InputError, match="output of `edge-gr demo`, not of `edge-gr other`"):
        with output_folder(out, "other"):
            pass
    with output_folder(out, "other", force=True) as stage:
        (stage / "b.txt").write_text("forced")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "b.txt"]
