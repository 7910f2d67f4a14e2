"""`edge-gr nas` on a tiny docs folder: candidates distilled, exported (ONNX Runtime int8) and timed on the
runtime; the Pareto front, the plot and student.json come out, and `edge-gr build --student-config` uses it."""

import json

from edge_gr.bundle import load_manifest
from server.cli import main as cli

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def test_nas_measures_candidates_and_hands_the_student_to_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    with open(docs / "docs.jsonl", "w") as f:
        for j in range(12):
            f.write(json.dumps({"id": f"d{j}", "text": " ".join(WORDS[(j + t) % len(WORDS)] for t in range(8))}) + "\n")
    common = ["--task", "retrieval", "--data", str(docs), "--preset", "tiny", "--device", "cpu"]
    assert cli(["build", *common, "--out", str(tmp_path / "b0"), "--work", str(tmp_path / "w"), "--no-student"]) == 0
    out = tmp_path / "nas"
    assert cli(["nas", *common, "--checkpoint", str(tmp_path / "w" / "teacher"), "--out", str(out), "--trials", "3",
                "--eval-queries", "8", "--max-p99-ms", "1000"]) == 0
    doc = json.loads((out / "nas.json").read_text())
    assert len(doc["trials"]) == 3 and (out / "pareto.png").is_file() and (out / "study.log").is_file()
    for t in doc["trials"]:
        assert t["p99_ms"] >= t["p50_ms"] > 0 and t["size_mb"] > 0 and t["threads"] == 1 and 0 <= t["quality"] <= 1
    assert any(t["pareto"] for t in doc["trials"])
    assert json.loads((out / "student.json").read_text())["config"]
    assert all(t["probe_p99_ms"] > 0 and t["epochs"] >= 1 and t["machine"]["cpu"] for t in doc["trials"])
    # resuming the study adds only the missing trials, here from two worker processes sharing the journal
    assert cli(["nas", *common, "--checkpoint", str(tmp_path / "w" / "teacher"), "--out", str(out), "--trials", "4",
                "--eval-queries", "8", "--workers", "2"]) == 0
    trials = json.loads((out / "nas.json").read_text())["trials"]
    assert len(trials) >= 4
    # the workers and the resumed study drew their own architectures (not one replayed random stream)
    assert len({json.dumps([t["config"], t["beam"]], sort_keys=True) for t in trials}) >= 3
    # the resumed study may choose another architecture: build uses the student.json it rewrote
    chosen = json.loads((out / "student.json").read_text())
    assert cli(["build", *common, "--out", str(tmp_path / "b1"), "--work", str(tmp_path / "w"),
                "--student-config", str(out / "student.json")]) == 0
    student = next(v for v in load_manifest(tmp_path / "b1").variants if v.source["name"] == "student")
    assert student.source["config"]["d_model"] == chosen["config"]["d_model"]
    assert student.source["config"]["n_enc_layers"] == chosen["config"]["n_enc_layers"]
