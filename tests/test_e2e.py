"""End to end through public entry points only: a tiny catalogue (docs only, built on the fly) ->
`edge-gr build` -> a bundle with two precisions (fp32 teacher, int8 distilled student) -> loaded by
a clean venv holding only `edge-gr[device]` -> variant switching along a recorded battery trace ->
the catalogue grows, the cloud rebuilds and publishes (`edge-gr registry publish / package`) ->
the device installs the update (`edge_gr.update.BundleStore`) -> search answers from the new version."""

import json
import subprocess

import edge_gr
from edge_gr.bundle import load_manifest
from server.cli import main as cli

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi "
         "psi omega").split()

DEVICE = r'''
import json, sys
import edge_gr
from edge_gr.policy import DeviceState, VariantPolicy, VariantSwitcher
from edge_gr.update import BundleStore
import importlib.util
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("flwr") is None  # the device extra only
bundle, store_root, full, delta, queries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
out = {"trace": []}
r = edge_gr.load(bundle)
sw = VariantSwitcher(r, VariantPolicy.from_bundle(r))
for t, b in enumerate([0.95, 0.70, 0.45, 0.30, 0.15, 0.35, 0.60, 0.90]):
    served = sw.update(DeviceState(battery=b, t=float(t), charging=b >= 0.9))
    out["trace"].append([served, [[h.item_id for h in sw.search(q, 3)] for q in queries]])
out["switches"] = sw.stats()["switches"]
out["failed"] = sw.stats()["failed_switches"]
store = BundleStore(store_root)
out["install"] = [store.install(p).to_version for p in (full, delta)]
new = store.load()
out["version"] = new.manifest.model_version
out["answers"] = [[h.item_id for h in new.search(q, 3)] for q in queries]
out["catalogue"] = len(new.ids)
print(json.dumps(out))
'''


def _docs(folder, n: int) -> None:
    folder.mkdir(exist_ok=True)
    with open(folder / "docs.jsonl", "w") as f:
        for j in range(n):
            f.write(json.dumps({"id": f"d{j}", "text": " ".join(WORDS[(3 * j + t) % len(WORDS)] for t in range(9))}) + "\n")


def test_catalogue_to_phone_and_an_update(tmp_path, device_python, capsys):
    docs, out, work, reg = tmp_path / "docs", tmp_path / "bundle", tmp_path / "work", tmp_path / "reg"
    _docs(docs, 14)
    build = ["build", "--task", "retrieval", "--data", str(docs), "--out", str(out), "--work", str(work), "--preset", "tiny", "--device", "cpu"]
    assert cli(build) == 0
    m = load_manifest(out)
    assert {v.precision for v in m.variants} == {"fp32", "int8"}
    assert {v.precision: v.source["name"] for v in m.variants} == {"fp32": "teacher", "int8": "student"}

    # the cloud publishes what it built, then the catalogue grows and it builds and publishes again
    assert cli(["registry", "publish", "--registry", str(reg), "--checkpoint", str(work / "teacher"), "--full", "--activate"]) == 0
    _docs(docs, 17)
    assert cli(build[:6] + [str(tmp_path / "bundle-v2")] + build[7:]) == 0  # the phone still holds the first bundle
    assert cli(["registry", "publish", "--registry", str(reg), "--checkpoint", str(work / "teacher")]) == 0
    assert cli(["registry", "package", "--registry", str(reg), "--to", "v1.0", "--out", str(tmp_path / "full")]) == 0
    assert cli(["registry", "package", "--registry", str(reg), "--from", "v1.0", "--to", "v1.1", "--out", str(tmp_path / "delta")]) == 0
    capsys.readouterr()

    queries = [" ".join(WORDS[i:i + 4]) for i in (0, 7, 13)]
    py, env = device_python
    res = subprocess.run([str(py), "-c", DEVICE, str(out), str(tmp_path / "phone"), str(tmp_path / "full"),
                          str(tmp_path / "delta"), json.dumps(queries)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])

    # every answer during the battery trace is a valid top-3 of the first catalogue, and both precisions served
    first = {f"d{j}" for j in range(14)}
    served = [s for s, _ in got["trace"]]
    assert served[0] == "onnxruntime-fp32" and "onnxruntime-int8" in served and served[-1] == "onnxruntime-fp32"
    assert got["switches"] >= 2 and got["failed"] == 0
    assert all(len(a) == 3 and set(a) <= first for _, answers in got["trace"] for a in answers), got["trace"]

    # the phone now runs v1.1: the grown catalogue, answering exactly as the cloud's v1.1 bundle
    assert got["install"] == ["v1.0", "v1.1"] and got["version"] == "v1.1" and got["catalogue"] == 17
    cloud = edge_gr.load(next((reg / "bundles" / "v1.1").iterdir()))
    assert got["answers"] == [[h.item_id for h in cloud.search(q, 3)] for q in queries]
