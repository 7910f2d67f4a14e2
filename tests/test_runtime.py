"""The device runtime end to end: export tiny trained models, load the bundles, compare with eager.

ExecuTorch and LiteRT exports take 20-60 s each on 2 cores, so their cases are ``slow``.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_gr
from edge_gr.bundle import load_manifest
from edge_gr.errors import BundleError, InputError
from server.data.base import Item, Query, RecData, RetrievalData
from server.export.bundle import export_bundle
from server.model import GRConfig
from server.semantic_ids import build_ids
from server.train import TrainConfig, train_rec, train_retrieval

ROOT = Path(__file__).parents[1]
slow = pytest.mark.slow
N_ITEMS = 30


def _rec_data() -> RecData:
    """Users walk the catalogue in steps of 1 (even users) or 2 (odd users)."""
    items = [Item(f"i{j}", f"item {j}") for j in range(N_ITEMS)]
    return RecData("toy", items, {f"u{u}": [f"i{(u + (1 + u % 2) * t) % N_ITEMS}" for t in range(12)] for u in range(120)})


@pytest.fixture(scope="module")
def rec_gm():
    d = _rec_data()
    ids = build_ids([f"i{j}" for j in range(N_ITEMS)], np.random.default_rng(0).normal(size=(N_ITEMS, 8)).astype("float32"), levels=(4, 4))
    gm, _ = train_rec(d.split(), d.items, ids, GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=2),
                      TrainConfig(epochs=15, batch_size=32, lr=5e-3, eval_queries=20, beam=10, patience=50, progress=False, warmup_steps=10))
    split = d.split()
    queries = [split.test_history(u) for u in list(split.test_target)[:12]]
    return gm, queries


@pytest.fixture(scope="module")
def ret_gm():
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
    docs = [Item(f"d{j}", " ".join(words[(j + t) % len(words)] for t in range(5)) + f" w{j}") for j in range(24)]
    train = [Query(f"q{j}", " ".join(d.text.split()[1:4]), frozenset({d.id})) for j, d in enumerate(docs)]
    data = RetrievalData("toy", docs, train=train, test=train, valid=train)
    ids = build_ids([d.id for d in docs], np.random.default_rng(0).normal(size=(24, 8)).astype("float32"), levels=(4,))
    gm, _ = train_retrieval(data, ids, GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=2),
                            TrainConfig(epochs=20, batch_size=16, lr=5e-3, eval_queries=12, beam=10, patience=50, progress=False, warmup_steps=10),
                            vocab_size=120, index_windows=1)
    return gm, [q.text for q in train[:12]]


_BUNDLES: dict = {}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, rec_gm, ret_gm):
    """bundle(task, backend, precision) -> path of a one-variant bundle (exported once per module)."""
    gms = {"rec": rec_gm[0], "retrieval": ret_gm[0]}

    def make(task: str, backend: str, precision: str) -> Path:
        key = (task, backend, precision)
        if key not in _BUNDLES:
            _BUNDLES[key] = export_bundle(gms[task], tmp_path_factory.mktemp("b") / f"{task}-{backend}-{precision}", [(backend, precision)])
        return _BUNDLES[key]

    return make


VARIANTS = [pytest.param("onnxruntime", "fp32"), pytest.param("onnxruntime", "int8"), pytest.param("torch", "fp32"),
            pytest.param("executorch", "fp32", marks=slow), pytest.param("executorch", "int8", marks=slow),
            pytest.param("executorch", "int4", marks=slow), pytest.param("litert", "fp32", marks=slow),
            pytest.param("litert", "int8", marks=slow)]


def test_export_modules_match_eager_decode(rec_gm, ret_gm):
    for gm in (rec_gm[0], ret_gm[0]):
        m, c = gm.model, gm.model.cfg
        hi = c.n_items + 1 if c.task == "rec" else c.vocab_size
        src = torch.randint(1, hi, (3, c.max_len), generator=torch.Generator().manual_seed(0))
        src[0, : c.max_len // 2] = 0 if c.task == "rec" else src[0, : c.max_len // 2]
        if c.task == "retrieval":
            src[0, c.max_len // 2:] = 0
        codes = torch.stack([torch.randint(0, k, (3, 5)) for k in c.levels], -1)
        with torch.no_grad():
            mem, pad = m.encode(src)
            ref = m.decode(mem, pad, m.teacher_inputs(codes))
            enc, dec = m.export_graphs()
            got = dec(m.teacher_inputs(codes), *enc(src))
        assert torch.allclose(ref, got, atol=1e-4), (ref - got).abs().max()


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("executorch", marks=slow), pytest.param("litert", marks=slow)])
@pytest.mark.parametrize("task", ["rec", "retrieval"])
def test_lean_step_is_exact(task, backend, bundle, rec_gm, ret_gm):
    """The lean decoder (one position per level, KV cache reordered by parent beam) answers exactly
    what the eager model and the full-prefix graph answer: same top-10, scores within 1e-4."""
    gm, queries = rec_gm if task == "rec" else ret_gm
    r = edge_gr.load(bundle(task, backend, "fp32"), backend=backend)
    assert r._model.has_step and r.lean
    # ONNX Runtime text encoders take the query's real length instead of max_len (the same answer)
    assert r._model.dynamic_src == (backend == "onnxruntime" and task == "retrieval")
    lean = r.search_many(queries, 10, beam=20)
    r.lean = False
    full = r.search_many(queries, 10, beam=20)
    eager = gm.search_many(queries, 10, beam=20)
    for a, b, c in zip(lean, full, eager):
        assert [h.item_id for h in a] == [h.item_id for h in b] == [h.item_id for h in c]
        assert max((abs(x.score - z.score) for x, z in zip(a, c)), default=0.0) < 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", pytest.param("executorch", marks=slow), pytest.param("litert", marks=slow)])
def test_threads_one_really_means_one(backend, bundle, ret_gm):
    """`threads=1` reaches each backend (ExecuTorch's XNNPACK pool included) and the runtime reports it."""
    r = edge_gr.load(bundle("retrieval", backend, "fp32"), backend=backend, threads=1)
    assert r.threads == 1
    assert r.search(ret_gm[1][0], 3)


def test_beam_search_reports_parents_for_a_stateful_step():
    from edge_gr.decode import beam_search
    from edge_gr.ids import SemanticIds

    ids = SemanticIds(["a", "b", "c", "d"], np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), (2, 2))
    seen, parents = [], []

    def step(prefix):
        seen.append(prefix.copy())
        return np.log(np.full(prefix.shape[:2] + (2,), 0.5)) + np.arange(2) * 0.1
    beam_search(step, ids.trie(), n=1, beam=2, k=2, on_select=parents.append)
    assert len(parents) == 2 and parents[0].shape == (1, 2) and (parents[0] == 0).all()  # level 0: one parent (BOS)
    assert (seen[1][0, :, 0] == [1, 0]).all()  # level 1's beams, best first, each its parent's code


@pytest.mark.parametrize("backend,precision", VARIANTS)
@pytest.mark.parametrize("task", ["rec", "retrieval"])
def test_variant_matches_eager(task, backend, precision, bundle, rec_gm, ret_gm):
    gm, queries = rec_gm if task == "rec" else ret_gm
    r = edge_gr.load(bundle(task, backend, precision), backend=backend)
    assert r.variant == f"{backend}-{precision}"
    got = [[h.item_id for h in hits] for hits in r.search_many(queries, 10, beam=20)]
    ref = [[i for i, _ in gm.search(q, 10, beam=20)] for q in queries]
    if precision == "fp32":
        assert got == ref
    else:
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)])
        assert overlap >= 0.9, overlap
    one = r.search(queries[0], 5, beam=20)  # single query == the batched one (int8: dynamic activation
    assert all(h.title for h in one)          # scales are per batch, so only fp32 is batch-independent)
    if precision == "fp32":
        assert [h.item_id for h in one] == got[0][:5]


def test_rec_fallbacks_and_bad_input(bundle, rec_gm):
    gm, queries = rec_gm
    r = edge_gr.load(bundle("rec", "onnxruntime", "fp32"))
    pop = r.search([], 5)
    assert [h.item_id for h in pop] == gm.popularity[:5] and all(np.isnan(h.score) for h in pop)
    assert [h.item_id for h in r.search(["nope", 7, None], 3)] == gm.popularity[:3]  # unknown ids dropped
    assert [h.item_id for h in r.search(queries[0] + ["nope"], 5)] == [h.item_id for h in r.search(queries[0], 5)]
    # exclude_seen on the device answers what the cloud model answers (one Searcher protocol)
    hist = queries[0]
    dev = r.search(hist, 5, beam=20, exclude_seen=True)
    assert not {h.item_id for h in dev} & set(hist)
    assert [h.item_id for h in dev] == [h.item_id for h in gm.search(hist, 5, beam=20, exclude_seen=True)]
    with pytest.raises(InputError, match="history"):
        r.search("some text")


def test_student_with_a_shorter_history_in_the_same_bundle(rec_gm, tmp_path):
    """A rec student reading only the newest 6 items (a NAS choice) ships beside the 12-item teacher: the runtime
    feeds each variant its own length, and both answer what their eager models answer."""
    from server.compress.distill import student_model
    from server.generative import GenerativeModel

    gm, queries = rec_gm
    short = GenerativeModel(student_model(gm, GRConfig(d_model=16, n_heads=2, max_len=6, n_enc_layers=1, n_dec_layers=1)), gm.ids,
                            gm.items, popularity=list(gm.popularity))
    short.model.eval()
    path = export_bundle(gm, tmp_path / "b", [("onnxruntime", "fp32"), ("onnxruntime", "int8", "student")], sources={"student": short})
    v = load_manifest(path).variant("onnxruntime-int8")
    assert v.static["max_len"] == 6 and load_manifest(path).runtime.max_len == 12
    r = edge_gr.load(path, variant="onnxruntime-fp32")
    assert r.max_len == 12 and [[h.item_id for h in hs] for hs in r.search_many(queries, 10)] == [[i for i, _ in gm.search(q, 10)] for q in queries]
    r.switch("onnxruntime-int8")
    assert r.max_len == 6
    got = [[h.item_id for h in hs] for hs in r.search_many(queries, 10)]
    ref = [[i for i, _ in short.search(q, 10)] for q in queries]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)]) >= 0.9
    # only the newest 6 items matter to the student
    assert [h.item_id for h in r.search(["i0", "i1", "i2"] + queries[0][-6:], 10)] == [h.item_id for h in r.search(queries[0][-6:], 10)]


def test_archive_and_switch(bundle, ret_gm, tmp_path):
    src = bundle("retrieval", "onnxruntime", "fp32")
    two = tmp_path / "two"
    export_bundle(ret_gm[0], two, [("onnxruntime", "fp32"), ("torch", "fp32")], archive=True)
    r = edge_gr.load(str(two) + ".tar", backend="onnxruntime")
    assert r.variants == ["onnxruntime-fp32", "torch-fp32"] and r.variant == "onnxruntime-fp32"
    before = r.search("beta gamma delta", 5)
    r.switch("torch-fp32")
    assert r.variant == "torch-fp32" and [h.item_id for h in r.search("beta gamma delta", 5)] == [h.item_id for h in before]
    # a variant that verifies but cannot run (an ONNX file declared as LiteRT): switch fails, the old one keeps serving
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    doc = json.loads((bad / "manifest.json").read_text())
    v = dict(doc["variants"][0], name="litert-broken", backend="litert", files={"program": doc["variants"][0]["files"]["encoder"]})
    doc["variants"].append(v)
    (bad / "manifest.json").write_text(json.dumps(doc))
    r2 = edge_gr.load(bad, backend="onnxruntime")
    with pytest.raises(BundleError, match="litert-broken"):
        r2.switch("litert-broken")
    assert r2.variant == "onnxruntime-fp32" and r2.search("beta gamma delta", 5)
    with pytest.raises(BundleError, match="no variant"):
        r2.switch("nope")


def test_corrupted_bundle_is_refused_before_loading(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle("rec", "onnxruntime", "int8"), b)
    dec = b / "variants" / "onnxruntime-int8" / "decoder.onnx"
    data = bytearray(dec.read_bytes())
    data[len(data) // 2] ^= 1
    dec.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx"):
        edge_gr.load(b)


def test_load_verifies_the_chosen_variant_and_reads_the_compact_index(ret_gm, tmp_path):
    """Loading hashes the shared files and the chosen variant only (another variant is checked when switched
    to); the IDs and titles come from index.safetensors, and a bundle without it (older) loads from JSON."""
    gm, queries = ret_gm
    b = export_bundle(gm, tmp_path / "b", [("onnxruntime", "fp32"), ("onnxruntime", "int8")])
    m = load_manifest(b)
    assert "index" in m.files
    want = [[h.item_id for h in hs] for hs in edge_gr.load(b, variant="onnxruntime-fp32").search_many(queries, 5)]
    dec = b / m.variant("onnxruntime-int8").files["decoder"].path
    data = bytearray(dec.read_bytes())
    data[len(data) // 2] ^= 1
    dec.write_bytes(bytes(data))
    r = edge_gr.load(b, variant="onnxruntime-fp32")  # the other variant's damage does not block this one
    hits = r.search(queries[0], 5)
    assert [h.item_id for h in hits] == want[0] and all(h.title == next(i.text for i in gm.items if i.id == h.item_id) for h in hits)
    with pytest.raises(BundleError, match="decoder.onnx"):
        r.switch("onnxruntime-int8")
    assert r.variant == "onnxruntime-fp32" and [h.item_id for h in r.search(queries[0], 5)] == want[0]
    with pytest.raises(BundleError, match="decoder.onnx"):
        load_manifest(b)  # a full verification still sees it
    # an older bundle (no index): same answers from ids.json + catalogue.jsonl
    doc = json.loads((b / "manifest.json").read_text())
    del doc["files"]["index"]
    (b / "manifest.json").write_text(json.dumps(doc))
    old = edge_gr.load(b, variant="onnxruntime-fp32")
    assert [[h.item_id for h in hs] for hs in old.search_many(queries, 5)] == want
    assert [h.title for h in old.search(queries[0], 5)] == [h.title for h in hits]


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("litert", marks=slow),
                                     pytest.param("executorch", marks=[slow, pytest.mark.xfail(
                                         reason="ExecuTorch's Python runtime (executorch.runtime) imports torch itself", strict=True)])])
def test_device_path_imports_no_torch(backend, bundle, ret_gm):
    path = bundle("retrieval", backend, "fp32")
    code = ("import sys, edge_gr; r = edge_gr.load(sys.argv[1], backend=sys.argv[2]); hits = r.search('beta gamma delta', 3); "
            "bad = [m for m in ('torch', 'server', 'device_sim') if m in sys.modules]; print(len(hits), bad)")
    out = subprocess.run([sys.executable, "-c", code, str(path), backend], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "3 []"


def test_missing_backend_says_how_to_install(bundle, monkeypatch):
    from edge_gr import backends

    monkeypatch.setattr(backends, "available", lambda name: False)
    with pytest.raises(edge_gr.BackendUnavailableError, match="pip install onnxruntime"):
        edge_gr.load(bundle("rec", "onnxruntime", "fp32"), backend="onnxruntime")
    with pytest.raises(edge_gr.BackendUnavailableError, match="none of the bundle's backends"):
        edge_gr.load(bundle("rec", "onnxruntime", "fp32"))


@pytest.fixture(scope="module")
def ret_runtime(bundle):
    return edge_gr.load(bundle("retrieval", "onnxruntime", "fp32"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.one_of(st.text(), st.text(alphabet=st.characters(codec=None, categories=None), max_size=50),
                   st.sampled_from(["", " ", "\x00\x01\x02", "\u202e\ud800x", "a" * 1_000_000, "é" * 10_001, "alpha " * 1500]),
                   st.binary(max_size=30), st.none(), st.integers()))
def test_fuzz_retrieval_queries_only_raise_input_error(ret_runtime, q):
    try:
        hits = ret_runtime.search(q, 5)
    except InputError:
        return
    assert len(hits) == 5 and all(isinstance(h, edge_gr.Hit) for h in hits)


def test_cli_export(rec_gm, tmp_path, capsys):
    from server.cli import main

    rec_gm[0].save(tmp_path / "ck")
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "bundle"), "--variants", "onnxruntime:int8", "--archive"]) == 0
    assert "onnxruntime-int8" in capsys.readouterr().out
    m = load_manifest(tmp_path / "bundle")
    assert [v.name for v in m.variants] == ["onnxruntime-int8"] and (tmp_path / "bundle.tar").is_file()


def test_battery_switching_on_a_real_bundle(ret_gm, tmp_path):
    """The policy built from a real exported bundle's manifest drives switches along a recorded
    battery trace; every answer during the switches is a valid top-k of catalogue ids."""
    from edge_gr.policy import DeviceState, VariantPolicy, VariantSwitcher

    path = export_bundle(ret_gm[0], tmp_path / "multi", [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torch", "fp32")])
    r = edge_gr.load(path, backend="onnxruntime")
    policy = VariantPolicy.from_bundle(r, with_sizes=True)
    assert policy.variants == ("onnxruntime-int8", "onnxruntime-fp32")  # torch-fp32 is another runtime: never switched to
    sw = VariantSwitcher(r, policy)
    catalogue = {d.id for d in ret_gm[0].items}
    trace = [0.95, 0.80, 0.55, 0.48, 0.40, 0.30, 0.18, 0.10, 0.22, 0.30, 0.52, 0.60, 0.90]
    served = []
    for t, b in enumerate(trace):
        served.append(sw.update(DeviceState(battery=b, t=float(t), charging=(b == 0.90))))
        for q in ret_gm[1][:3]:
            hits = sw.search(q, 5)
            assert 1 <= len(hits) <= 5 and all(h.item_id in catalogue for h in hits)
    assert served[0] == "onnxruntime-fp32" and "onnxruntime-int8" in served and served[-1] == "onnxruntime-fp32"
    assert sw.stats()["switches"] >= 2 and sw.stats()["failed_switches"] == 0
    assert r.variant == served[-1]


def test_device_extra_alone_loads_and_searches_a_bundle(bundle, ret_gm, tmp_path, device_python):
    """`pip install edge-gr[device]` into a clean venv (no torch, no flwr) runs a real bundle."""
    path = bundle("retrieval", "onnxruntime", "fp32")
    py, env = device_python
    script = (
        "import importlib.util, sys, edge_gr\n"
        "assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('flwr') is None\n"
        f"r = edge_gr.load({str(path)!r})\n"
        f"hits = r.search({ret_gm[1][0]!r}, k=3)\n"
        "print(len(hits), hits[0].item_id)\n"
    )
    res = subprocess.run([str(py), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    n, top = res.stdout.split()
    assert n == "3" and top == edge_gr.load(path).search(ret_gm[1][0], k=3)[0].item_id
