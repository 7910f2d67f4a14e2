"""`edge-gr build`: one command from a docs folder to a verified bundle; stages skip when up to date."""

from __future__ import annotations

import json

import edge_gr
from edge_gr.bundle import load_manifest
from server.cli import main as cli

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def _folder(tmp_path, n=12, shift=0):
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    with open(folder / "docs.jsonl", "w") as f:
        for j in range(n):
            f.write(json.dumps({"id": f"d{j}", "text": " ".join(WORDS[(j + t + shift) % len(WORDS)] for t in range(8))}) + "\n")
    return folder


def test_build_docs_folder_to_verified_bundle_and_skip(tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "bundle"
    argv = ["build", "--task", "retrieval", "--data", str(folder), "--out", str(out), "--preset", "tiny", "--device", "cpu"]
    assert cli(argv) == 0
    m = load_manifest(out)
    assert {v.precision for v in m.variants} == {"fp32", "int8"}
    assert all("overlap@10" in v.metrics and "recall@10" in v.metrics for v in m.variants)
    # the int8 variant is the distilled student, quantized by the backend; the fp32 one the teacher
    by = {v.precision: v for v in m.variants}
    assert by["int8"].source["name"] == "student" and by["fp32"].source["name"] == "teacher"
    assert by["int8"].source["params"] < by["fp32"].source["params"]
    assert by["int8"].recipe["tool"] == "onnxruntime.quantization.quantize_dynamic"
    assert 0.0 <= by["int8"].metrics["overlap@10_reference_quantizer"] <= 1.0
    r = edge_gr.load(out)
    assert r.search(" ".join(WORDS[2:6]), k=3)
    capsys.readouterr()
    assert cli(["search", str(out), " ".join(WORDS[2:6]), "-k", "3"]) == 0  # the CLI searches a bundle too
    assert len([ln for ln in capsys.readouterr().out.splitlines() if " d" in ln]) == 3
    assert cli(argv) == 0  # same inputs: every stage is skipped
    err = capsys.readouterr().err
    assert err.count("skipped") == 4  # ids, teacher, student, export+verify
    # another variant list re-runs export+verify only
    assert cli(argv + ["--variants", "onnxruntime:fp32"]) == 0
    err = capsys.readouterr().err
    assert "ids: up to date" in err and "teacher: up to date" in err and "export+verify: running" in err
    assert [v.name for v in load_manifest(out).variants] == ["onnxruntime-fp32"]
    # changed data re-runs everything
    _folder(tmp_path, shift=3)
    assert cli(argv) == 0
    assert "ids: running" in capsys.readouterr().err


def test_build_bad_variants_is_one_line(tmp_path, capsys):
    folder = _folder(tmp_path)
    assert cli(["build", "--task", "retrieval", "--data", str(folder), "--out", str(tmp_path / "b"), "--variants", "nope:fp8"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
