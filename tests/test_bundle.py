"""The bundle format: round trip, verification before use, atomic writes (no model needed)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edge_gr.bundle import FORMAT_VERSION, BundleManifest, BundleWriter, RuntimeSpec, load_manifest, open_bundle, write_archive
from edge_gr.errors import BundleError
from edge_gr.ids import SemanticIds


def _write(out: Path) -> Path:
    ids = SemanticIds(["a", "b"], np.array([[0, 0], [0, 1]]), (1, 2))
    with BundleWriter(out, task="rec", model_version="v1", runtime=RuntimeSpec("rec", (1, 2), 4, 8), meta={"k": 1}) as w:
        ids.save(w.root / "ids.json")
        w.add_file("ids", "ids.json", w.root / "ids.json")
        w.add_file("catalogue", "catalogue.jsonl", b'{"id": "a", "title": "A"}\n{"id": "b", "title": "B"}\n')
        w.add_file("popularity", "popularity.json", b'["b", "a"]')
        (w.root / "variants" / "x").mkdir(parents=True)
        (w.root / "variants" / "x" / "model.bin").write_bytes(os.urandom(1000))
        w.add_variant("onnxruntime-fp32", "onnxruntime", "fp32", {"program": "variants/x/model.bin"}, metrics={"overlap@10": 1.0})
    return out


def test_roundtrip_folder_and_archive(tmp_path):
    b = _write(tmp_path / "b")
    m = load_manifest(b)
    assert m.format_version == FORMAT_VERSION and m.task == "rec" and m.runtime.levels == (1, 2)
    assert BundleManifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    v = m.variant("onnxruntime-fp32")
    assert v.size == 1000 and v.metrics == {"overlap@10": 1.0} and len(v.files["program"].sha256) == 64
    tar = write_archive(b, tmp_path / "b.tar")
    m2, root, keep = open_bundle(tar)
    assert m2 == m and (root / "popularity.json").read_text() == '["b", "a"]'
    keep.cleanup()


@pytest.mark.parametrize("damage, match", [
    (lambda b: (b / "variants/x/model.bin").write_bytes(b"\0" + (b / "variants/x/model.bin").read_bytes()[1:]), "model.bin does not match its sha256"),
    (lambda b: (b / "popularity.json").unlink(), "popularity.json is missing"),
    (lambda b: (b / "catalogue.jsonl").write_bytes(b"x"), "catalogue.jsonl has 1 bytes"),
    (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text().replace('"format_version": 1', '"format_version": 99')), "format version 99"),
    (lambda b: (b / "manifest.json").write_text("{"), "manifest.json is corrupted"),
    (lambda b: (b / "manifest.json").unlink(), "not an edge-gr bundle"),
])
def test_damage_is_refused_naming_the_file(tmp_path, damage, match):
    b = _write(tmp_path / "b")
    damage(b)
    with pytest.raises(BundleError, match=match) as e:
        load_manifest(b)
    assert "To fix" in str(e.value)


def test_manifest_cannot_point_outside_the_bundle(tmp_path):
    b = _write(tmp_path / "b")
    doc = json.loads((b / "manifest.json").read_text())
    doc["files"]["popularity"]["path"] = "../elsewhere.json"
    (b / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_manifest(b)


def test_failed_write_leaves_nothing_and_keeps_the_old_bundle(tmp_path):
    with pytest.raises(RuntimeError):
        with BundleWriter(tmp_path / "new", task="rec", model_version="v", runtime=RuntimeSpec("rec", (2,), 4, 8)) as w:
            w.add_file("popularity", "popularity.json", b"[]")
            raise RuntimeError("export crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    old = _write(tmp_path / "b")
    before = load_manifest(old)
    with pytest.raises(RuntimeError):
        with BundleWriter(old, task="rec", model_version="v2", runtime=RuntimeSpec("rec", (2,), 4, 8)) as w:
            raise RuntimeError("export crashed")
    assert load_manifest(old) == before and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    _write(old)  # a successful rewrite replaces it and leaves no temp folder either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_bad_archive(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar")
    with pytest.raises(BundleError, match="neither a bundle folder"):
        open_bundle(tmp_path / "x.tar")
    with pytest.raises(BundleError, match="no bundle at"):
        open_bundle(tmp_path / "missing")
