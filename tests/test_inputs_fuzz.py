"""Bad input never escapes as a traceback (issue #16): every public entry point that takes a caller's
value or a file answers, or raises an :class:`EdgeGRError` subclass (argparse's usage error: SystemExit 2).

Case counts (``max_examples``) are per test and stated beside each; the whole file takes 60-90 s on
2 cores (about half of it training and exporting the two tiny models). The cheap entry points (the checks of
:mod:`edge_gr.validate`, manifest parsing, the JSONL readers) get >= 2,000 cases each; the ones that
run a model get fewer (said where they are), each case a real search on a tiny trained checkpoint or an
exported ONNX Runtime bundle. The last section has one regression test per reviewer finding.
"""

import contextlib
import copy
import gzip
import io
import json
import numbers
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import edge_gr
from edge_gr.bundle import MANIFEST, BundleManifest, BundleWriter, RuntimeSpec, load_manifest
from edge_gr.errors import BundleError, DataError, EdgeGRError, FormatError, InputError, TrustError
from edge_gr.ids import SemanticIds
from edge_gr.validate import MAX_BEAM, MAX_K, check_beam, check_history, check_k, check_queries

N_ITEMS, N_DOCS = 12, 10


def _cheap(n: int):
    # no example database: thousands of cases would each cost file writes, and nothing here needs replaying
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory):
    """A scratch folder for the cases that write a file each: in memory where the machine has /dev/shm."""
    import tempfile

    shm = Path("/dev/shm")
    d = Path(tempfile.mkdtemp(prefix="edge-gr-fuzz-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path_factory.mktemp("fuzz")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- strategies -------------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.binary(max_size=8))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_flat = st.one_of(json_scalars, st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=4), json_scalars, max_size=3))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6)
_flat = st.one_of(st.lists(scalars, max_size=3), st.tuples(scalars, scalars), st.dictionaries(st.text(max_size=5), scalars, max_size=2),
                  st.frozensets(st.integers() | st.text(max_size=4), max_size=3))
anything = st.one_of(scalars, _flat, st.lists(_flat, max_size=2))  # two levels deep at most: flat strategies draw fast
ints = st.one_of(st.integers(-5, MAX_K + 5), st.integers(), st.sampled_from([0, -3, 10**9, 2**63, 10**5000]),
                 st.sampled_from([np.int64(5), np.int32(0), np.uint8(3)]))
k_values = st.one_of(ints, st.sampled_from([True, False, None, 1.0, 10.0, "10", np.bool_(True), np.float64(3)]), anything)
beam_values = st.one_of(st.none(), k_values)
texts = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec=None, categories=None), max_size=20),
                  st.sampled_from(["", " ", "\x00\x01", "\u202e\ud800x", "é" * 10_001, "alpha beta", "god"]), st.binary(max_size=20))


# The model-backed tests draw well-formed arguments 3 times in 4 (so most cases are real searches) and
# adversarial ones otherwise. (Not st.one_of(good, good, bad): one_of flattens nested one_ofs, so `bad`'s
# many branches would outweigh `good`.)
@st.composite
def mostly(draw, good, bad):
    return draw(bad) if draw(st.integers(0, 3)) == 0 else draw(good)


_good_k = st.integers(1, 40) | st.sampled_from([MAX_K, np.int64(5)])
fuzz_k = mostly(_good_k, k_values)
fuzz_beam = mostly(st.none() | st.integers(1, 64), beam_values)
fuzz_flag = mostly(st.booleans(), st.sampled_from([None, 0, "no"]))
_words = st.lists(st.sampled_from("alpha beta gamma delta w3 zeta unknownword".split()), min_size=1, max_size=6).map(" ".join)
fuzz_texts = mostly(_words, texts)


def _good_histories(ids):
    return st.lists(st.sampled_from(ids), max_size=14)


def _histories(ids):
    item = st.one_of(st.sampled_from(ids), st.text(max_size=6), scalars, st.lists(st.sampled_from(ids), max_size=2),
                     st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
    return st.one_of(st.lists(item, max_size=14), st.lists(st.sampled_from(ids), max_size=14).map(tuple), st.text(max_size=10), anything)


def _batches(one):
    """What a caller might pass to search_many: lists, tuples, generators, iterators, one query, junk."""
    return st.one_of(st.lists(one, max_size=4), st.lists(one, max_size=3).map(tuple), st.lists(one, max_size=3).map(lambda q: (x for x in q)),
                     st.lists(one, max_size=3).map(iter), one, st.none(), st.integers(), st.sets(st.text(max_size=3), max_size=2),
                     st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))


def _replayable(qs):
    """``qs`` for several callers: a generator / iterator is read once here and each caller gets a fresh generator."""
    if not hasattr(qs, "__next__"):
        return lambda: qs
    items = list(qs)
    return lambda: (x for x in items)


def _valid_int(v, hi: int) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and 1 <= int(v) <= hi


# -- the shared checks: 2,000 cases per entry point ----------------------------------------------------
@_cheap(2000)  # 2,000 cases, each through check_k and check_beam
@given(k=k_values, beam=beam_values, n=st.one_of(st.none(), st.integers(1, 10**6)))
def test_fuzz_check_k_and_beam(k, beam, n):
    try:
        out = check_k(k, n)
    except InputError as e:
        assert not _valid_int(k, MAX_K) and "To fix" in str(e)
    else:
        assert _valid_int(k, MAX_K) and type(out) is int and 1 <= out <= min(int(k), n or MAX_K)
    kk = out if _valid_int(k, MAX_K) else 1
    try:
        b = check_beam(beam, kk)
    except InputError:
        assert beam is not None and not _valid_int(beam, MAX_BEAM)
    else:
        assert type(b) is int and kk <= b <= MAX_BEAM and (beam is None or _valid_int(beam, MAX_BEAM))


@_cheap(2000)  # 2,000 cases, each through check_queries for both tasks
@given(qs=st.one_of(_batches(_histories(["i1", "i2", "i3"])), _batches(texts)))
def test_fuzz_check_queries(qs):
    again = _replayable(qs)
    try:
        out = check_queries(again(), "rec")
    except InputError:
        pass
    else:
        assert isinstance(out, list) and all(isinstance(h, list) and all(isinstance(i, str) for i in h) for h in out)
    try:
        out = check_queries(again(), "retrieval")
    except InputError:
        pass
    else:
        assert isinstance(out, list) and all(isinstance(q, str) and q.strip() for q in out)


# -- manifest parsing: >= 2,000 cases each --------------------------------------------------------------
def _mini_bundle(out: Path) -> Path:
    ids = SemanticIds(["a", "b"], np.array([[0, 0], [0, 1]]), (1, 2))
    with BundleWriter(out, task="rec", model_version="v1", runtime=RuntimeSpec("rec", (1, 2), 4, 8), meta={"k": 1}) as w:
        ids.save(w.root / "ids.json")
        w.add_file("ids", "ids.json", w.root / "ids.json")
        w.add_file("catalogue", "catalogue.jsonl", b'{"id": "a", "title": "A"}\n{"id": "b", "title": "B"}\n')
        w.add_file("popularity", "popularity.json", b'["b", "a"]')
        (w.root / "variants" / "x").mkdir(parents=True)
        (w.root / "variants" / "x" / "model.bin").write_bytes(b"\1" * 100)
        w.add_variant("onnxruntime-fp32", "onnxruntime", "fp32", {"program": "variants/x/model.bin"}, static={"batch": 1})
    return out


@pytest.fixture(scope="module")
def mini(fast_dir):
    b = _mini_bundle(fast_dir / "mini")
    return b, json.loads((b / MANIFEST).read_text())


_REPLACEMENTS = json_values | st.sampled_from(["24017", "evil", "retrieval", -1, 10**30, True, 1.5, [], {}])
_ACTIONS = st.sampled_from(["replace", "replace", "delete", "add"])


@st.composite
def mutated(draw, base: dict):
    """``base`` with 1-3 random edits: a value replaced by any JSON value, a key deleted or added, a list entry grown.
    (Strategies are built once, outside: building them per draw would cost more than the parsing under test.)"""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        parent, key, node = None, None, doc
        while isinstance(node, (dict, list)) and node:
            i = draw(st.integers(0, len(node) - 1))
            key = sorted(node)[i] if isinstance(node, dict) else i
            parent, node = node, node[key]
            if draw(st.integers(0, 2)) == 0:
                break
        if parent is None:
            continue
        action = draw(_ACTIONS)
        if action == "replace":
            parent[key] = draw(_REPLACEMENTS)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return doc


_RAW_MANIFESTS = st.one_of(st.binary(max_size=64), st.integers(1, 200_000).map(lambda n: b"[" * n),
                           st.sampled_from([b"\xff\xfe{", b"1" * 5000, b'{"format": "edge-gr-bundle", "format_version": true}']))
_STRATEGIES: dict = {}


@_cheap(2000)  # 2,000 cases, each through BundleManifest.from_dict (+ check_runnable) and load_manifest (parse + verify)
@given(data=st.data())
def test_fuzz_manifest_parsing(mini, data):
    b, base = mini
    if "docs" not in _STRATEGIES:
        _STRATEGIES["docs"] = st.one_of(mutated(base), mutated(base), json_values)
    doc = data.draw(_STRATEGIES["docs"])
    try:
        m = BundleManifest.from_dict(doc)
    except BundleError:
        pass
    else:
        assert m.task in ("rec", "retrieval") and all(type(f.size) is int for f in m.all_files())
        try:
            m.check_runnable()
        except BundleError:
            pass
    (b / MANIFEST).write_bytes(json.dumps(doc).encode() if data.draw(st.booleans()) else data.draw(_RAW_MANIFESTS))
    try:
        load_manifest(b)
    except BundleError:
        pass


# -- the JSONL readers: 2,000 files, each read by all four readers ----------------------------------------
_LINE_KEYS = ["id", "text", "meta", "qid", "relevant", "user", "item", "timestamp", "texts"]
jsonl_records = st.dictionaries(st.sampled_from(_LINE_KEYS), json_flat | st.sampled_from([10**400, "x", ["d1"], 1e308, "d1", 1]), max_size=5)
jsonl_lines = st.one_of(jsonl_records.map(json.dumps), json_flat.map(json.dumps), st.text(max_size=20),
                        st.integers(1, 5000).map(lambda n: "[" * n), st.just('{"n": ' + "9" * 5000 + "}"))


@pytest.fixture(scope="module")
def jsonl_dir(fast_dir):
    (fast_dir / "jsonl").mkdir()
    return fast_dir / "jsonl"


@_cheap(2000)  # 2,000 files x 4 readers
@given(lines=st.lists(jsonl_lines, max_size=4), raw=st.one_of(st.none(), st.binary(max_size=40)), gz=st.booleans())
def test_fuzz_jsonl_readers(jsonl_dir, lines, raw, gz):
    from server.data.jsonl import read_doc_texts, read_interactions, read_items, read_queries

    data = raw if raw is not None else "\n".join(lines).encode("utf-8", "surrogatepass")
    p = jsonl_dir / ("f.jsonl.gz" if gz else "f.jsonl")
    p.write_bytes(gzip.compress(data) if gz and raw is None else data)  # gz + raw bytes: a damaged gzip file
    for read in (read_items, read_queries, read_interactions, lambda q: read_doc_texts(q, {"d1", "1"})):
        try:
            read(p)
        except DataError:
            pass


# -- tiny models and bundles (shared by the model-backed fuzzing and the regression tests) -------------------
@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention on a loaded 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(one_thread, fast_dir):
    from server.data.base import Item, Query, RecData, RetrievalData
    from server.export.bundle import export_bundle
    from server.model import GRConfig
    from server.semantic_ids import build_ids
    from server.train import TrainConfig, train_rec, train_retrieval

    root = fast_dir / "models"
    items = [Item(f"i{j}", f"item {j}") for j in range(N_ITEMS)]
    rec = RecData("toy", items, {f"u{u}": [f"i{(u + t) % N_ITEMS}" for t in range(6)] for u in range(20)})
    rids = build_ids([i.id for i in items], np.random.default_rng(0).normal(size=(N_ITEMS, 4)).astype("float32"), levels=(3, 3))
    train = TrainConfig(epochs=1, batch_size=32, lr=5e-3, eval_queries=4, beam=5, patience=50, progress=False, warmup_steps=1)
    rec_gm, _ = train_rec(rec.split(), rec.items, rids, GRConfig(d_model=16, n_heads=2, max_len=6, dropout=0.0, n_enc_layers=1,
                                                                 n_dec_layers=1), train)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    docs = [Item(f"d{j}", " ".join(words[(j + t) % len(words)] for t in range(4)) + f" w{j}") for j in range(N_DOCS)]
    qs = [Query(f"q{j}", " ".join(d.text.split()[1:3]), frozenset({d.id})) for j, d in enumerate(docs)]
    tids = build_ids([d.id for d in docs], np.random.default_rng(0).normal(size=(N_DOCS, 4)).astype("float32"), levels=(4,))
    ret_gm, _ = train_retrieval(RetrievalData("toy", docs, train=qs, test=qs, valid=qs), tids,
                                GRConfig(d_model=16, n_heads=2, max_len=8, dropout=0.0, n_enc_layers=1, n_dec_layers=1), train,
                                vocab_size=60, index_windows=1)
    out = {}
    for task, gm in (("rec", rec_gm), ("retrieval", ret_gm)):
        out[task] = {"gm": gm, "ckpt": gm.save(root / f"{task}-ckpt"), "bundle": export_bundle(gm, root / f"{task}-bundle", [("onnxruntime", "fp32")])}
        out[task]["r"] = edge_gr.load(out[task]["bundle"], threads=1)
    return out


def _check_hits(hits, k) -> None:
    event("answered")  # `pytest --hypothesis-show-statistics` shows how many cases were real searches
    assert isinstance(hits, list) and len(hits) <= int(k) and all(isinstance(h, edge_gr.Hit) for h in hits)


def _searchers(models, task):
    return [("cloud", models[task]["gm"]), ("device", models[task]["r"])]


# -- model-backed fuzzing: 250 cases per test, each test driving 2 searchers (cloud + device) -------------------
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 250 cases x cloud + device
@given(data=st.data(), k=fuzz_k, beam=fuzz_beam, exclude=fuzz_flag)
def test_fuzz_rec_search(models, data, k, beam, exclude):
    ids = [f"i{j}" for j in range(N_ITEMS)]
    q = data.draw(mostly(_good_histories(ids), _histories(ids) | texts))
    for _, s in _searchers(models, "rec"):
        try:
            hits = s.search(q, k, beam=beam, exclude_seen=exclude)
        except InputError:
            continue
        assert _valid_int(k, MAX_K) and (beam is None or _valid_int(beam, MAX_BEAM)) and isinstance(exclude, bool)
        _check_hits(hits, k)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 250 cases x cloud + device
@given(data=st.data(), k=fuzz_k, beam=fuzz_beam)
def test_fuzz_rec_search_many(models, data, k, beam):
    ids = [f"i{j}" for j in range(N_ITEMS)]
    qs = data.draw(mostly(st.lists(_good_histories(ids), max_size=4), _batches(mostly(_good_histories(ids), _histories(ids)))))
    again = _replayable(qs)  # one generator cannot feed two searchers
    for _, s in _searchers(models, "rec"):
        try:
            out = s.search_many(again(), k, beam=beam)
        except InputError:
            continue
        assert _valid_int(k, MAX_K) and (beam is None or _valid_int(beam, MAX_BEAM)) and len(out) == len(list(again()))
        for hits in out:
            _check_hits(hits, k)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 250 cases x cloud + device
@given(q=mostly(_words, texts | anything), k=fuzz_k, beam=fuzz_beam)
def test_fuzz_retrieval_search(models, q, k, beam):
    for _, s in _searchers(models, "retrieval"):
        try:
            hits = s.search(q, k, beam=beam)
        except InputError:
            continue
        assert _valid_int(k, MAX_K) and (beam is None or _valid_int(beam, MAX_BEAM)) and isinstance(q, (str, bytes))
        _check_hits(hits, k)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 250 cases x cloud + device
@given(qs=mostly(st.lists(_words, max_size=4), _batches(fuzz_texts)), k=fuzz_k, beam=fuzz_beam)
def test_fuzz_retrieval_search_many(models, qs, k, beam):
    again = _replayable(qs)
    for _, s in _searchers(models, "retrieval"):
        try:
            out = s.search_many(again(), k, beam=beam)
        except InputError:
            continue
        assert _valid_int(k, MAX_K) and (beam is None or _valid_int(beam, MAX_BEAM)) and len(out) == len(list(again()))
        for hits in out:
            _check_hits(hits, k)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 200 cases x rank + rank_texts + server.search
@given(data=st.data(), k=fuzz_k, beam=fuzz_beam, bs=mostly(st.integers(1, 3), st.integers(-2, 300) | k_values))
def test_fuzz_cloud_rank_and_api(models, data, k, beam, bs):
    import server

    rec, ret = models["rec"]["gm"], models["retrieval"]["gm"]
    for call in (lambda: rec.rank(data.draw(mostly(st.lists(_good_histories(["i1", "i2"]), max_size=5), _batches(_histories(["i1", "i2"])))),
                                  k, beam=beam, batch_size=bs),
                 lambda: ret.rank_texts(data.draw(mostly(st.lists(_words, max_size=5), _batches(fuzz_texts))), k, beam=beam, batch_size=bs),
                 lambda: server.search(data.draw(mostly(st.sampled_from([rec, ret]), st.sampled_from([None, 3, "no/such"]))),
                                       data.draw(st.one_of(fuzz_texts, _good_histories(["i1", "i2"]), _histories(["i1"]))), k, beam=beam)):
        try:
            out = call()
        except (InputError, FormatError):  # FormatError: server.search given a path that holds no checkpoint
            continue
        event("answered")
        assert _valid_int(k, MAX_K) and isinstance(out, list)


@pytest.fixture(scope="module")
def bad_paths(models, fast_dir):
    """Checkpoint-like and bundle-like folders that are damaged in the ways a copy or an editor damages them."""
    root = fast_dir / "bad"
    out = {}
    for name, header in (("not-utf8", b"\xff\xfe\x00{"), ("not-json", b"{"), ("deep", b"[" * 100_000), ("list", b"[]"),
                         ("no-config", json.dumps({"format": "edge-gr-checkpoint", "version": 1}).encode()),
                         ("bad-config", None)):
        d = shutil.copytree(models["rec"]["ckpt"], root / name)
        if header is None:
            doc = json.loads((d / "edge_gr_model.json").read_text())
            doc["config"]["levels"], doc["config"]["bogus"] = "x", 1
            header = json.dumps(doc).encode()
        (d / "edge_gr_model.json").write_bytes(header)
        out[name] = d
    d = shutil.copytree(models["retrieval"]["ckpt"], root / "bad-tokenizer")
    (d / "tokenizer.json").write_bytes(b"\x00garbage")
    out["bad-tokenizer"] = d
    b = shutil.copytree(models["rec"]["bundle"], root / "bundle-no-ids")
    doc = json.loads((b / MANIFEST).read_text())
    del doc["files"]["ids"], doc["files"]["index"]
    (b / MANIFEST).write_text(json.dumps(doc))
    out["bundle-no-ids"] = b
    (root / "a-file").write_text("x")
    out["a-file"] = root / "a-file"
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 100 CLI runs (each builds the parser, loads a model)
@given(data=st.data())
def test_fuzz_cli_search(models, bad_paths, data):
    from server.cli import main

    good = [str(models[t][w]) for t in ("rec", "retrieval") for w in ("ckpt", "bundle")]
    path = data.draw(mostly(st.sampled_from(good), st.sampled_from([str(p) for p in bad_paths.values()] + ["/no/such"])))
    argv = ["search", path]
    if data.draw(st.booleans()):
        argv.append(data.draw(mostly(_words, st.text(max_size=20) | st.sampled_from(["-x", ""]))))
    elif data.draw(st.integers(0, 4)) > 0:
        argv += ["--history", *data.draw(st.lists(st.one_of(st.sampled_from(["i1", "i2", "i3"]), st.text(max_size=5)), max_size=4))]
    for flag in ("-k", "--beam"):
        if data.draw(st.booleans()):
            argv += [flag, data.draw(mostly(st.integers(1, 20).map(str), st.integers(-10, 600).map(str) | st.integers().map(str) | st.text(max_size=4)))]
    if data.draw(st.booleans()):
        argv.append("--exclude-seen")
    if data.draw(st.integers(0, 9)) == 0:
        argv += ["--user", data.draw(st.text(max_size=5))]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: a usage error
            rc = e.code
            assert rc == 2
    assert rc in (0, 2), (argv, err.getvalue())
    event(f"exit {rc}")
    assert "Traceback" not in err.getvalue()
    if rc == 2 and "usage:" not in err.getvalue():
        assert err.getvalue().startswith("edge-gr: error: ") and err.getvalue().count("\n") == 1, err.getvalue()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)  # 100 loads of a mutated real bundle + a search
@given(data=st.data())
def test_fuzz_load_a_mutated_real_bundle(models, fast_dir, data):
    task = data.draw(st.sampled_from(["rec", "retrieval"]))
    src = models[task]["bundle"]
    base = json.loads((src / MANIFEST).read_text())
    b = fast_dir / f"mutated-{task}"
    if not b.exists():
        shutil.copytree(src, b)
    (b / MANIFEST).write_text(json.dumps(data.draw(mutated(base))))
    try:
        r = edge_gr.load(b)
        r.search(["i1", "i2"] if r.task == "rec" else "alpha beta", 3)
    except EdgeGRError:
        pass


# -- one regression test per reviewer finding (issue #16, 2026-12-01) ------------------------------------------
def test_server_search_checks_k_and_beam(models):
    import server

    for task, q in (("rec", ["i1", "i2"]), ("retrieval", "alpha beta")):
        gm = models[task]["gm"]
        for k, beam, match in ((None, None, "k must be an integer"), (0, 0, "k must be at least 1"), (-3, None, "k must be at least 1"),
                               (5, 0, "beam must be at least 1"), (True, None, "got bool"), (5, 10**6, "over the limit"),
                               (10**9, None, "over the limit")):
            with pytest.raises(InputError, match=match):
                server.search(gm, q, k=k, beam=beam)
    with pytest.raises(InputError, match="over the limit"):  # was: an attempt to allocate 7.45 GiB
        server.search(models["retrieval"]["gm"], "god", k=10**9)
    with pytest.raises(InputError, match="over the limit"):
        server.search("no/such/checkpoint", "god", k=10**9)  # refused before the path is even read


def test_history_of_lists_is_an_input_error(models):
    for _, s in _searchers(models, "rec"):
        with pytest.raises(InputError, match="history item 0 is a list"):  # was: TypeError unhashable type (cloud)
            s.search([["i1", "i2"], ["i3"]], 3)
        with pytest.raises(InputError, match="query 1: history item 0"):
            s.search_many([["i1"], [["i1"]]], 3)
        # documented: non-str scalars are unknown ids, dropped like them (the device always did so)
        assert [h.item_id for h in s.search(["i1", 7, None], 3)] == [h.item_id for h in s.search(["i1"], 3)]


def test_search_many_takes_lists_and_generators_only(models):
    for task, qs in (("rec", [["i1"], ["i2", "i3"]]), ("retrieval", ["alpha beta", "gamma"])):
        for _, s in _searchers(models, task):
            for bad in (None, 5, "alpha", {"a": 1}):
                with pytest.raises(InputError, match="search_many takes a list"):  # was: TypeError / IndexError
                    s.search_many(bad, 3)
            assert s.search_many((q for q in qs), 3) == s.search_many(qs, 3) == s.search_many(tuple(qs), 3)
            assert s.search_many([], 3) == []


def test_cli_search_bad_k_and_beam_exit_2(models, capsys):
    from server.cli import main

    for task, q in (("rec", ["--history", "i1"]), ("retrieval", ["alpha beta"])):
        for where in ("ckpt", "bundle"):
            path = str(models[task][where])
            for extra, match in ((["-k", "0", "--beam", "0"], "k must be at least 1"), (["-k", "-5"], "k must be at least 1"),
                                 (["-k", "3", "--beam", "0"], "beam must be at least 1"), (["-k", "100000"], "over the limit")):
                assert main(["search", path, *q, *extra]) == 2  # was: a torch traceback / exit 0 with results for -k -5
                err = capsys.readouterr().err
                assert err.startswith("edge-gr: error: ") and match in err and "Traceback" not in err
            assert main(["search", path, *q, "-k", "2"]) == 0
            assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_corrupted_checkpoint_files_are_format_errors(bad_paths, capsys):
    from server.cli import main
    from server.generative import GenerativeModel

    for name, match in (("not-utf8", "is corrupted"), ("not-json", "is corrupted"), ("deep", "nested too deeply"),
                        ("list", "expected edge-gr-checkpoint"), ("no-config", "'config' is missing"),
                        ("bad-config", "not a model config"), ("bad-tokenizer", "not a tokenizer")):
        with pytest.raises(FormatError, match=match):  # was: UnicodeDecodeError / RecursionError / KeyError / TypeError
            GenerativeModel.load(bad_paths[name])
        assert main(["search", str(bad_paths[name]), "alpha"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edge-gr: error: ") and err.count("\n") == 1 and "Traceback" not in err


def _edit_manifest(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / MANIFEST).read_text())
    edit(doc)
    (dst / MANIFEST).write_text(json.dumps(doc))
    return dst


def test_malformed_manifests_are_bundle_errors_naming_the_field(models, tmp_path):
    rec, ret = models["rec"]["bundle"], models["retrieval"]["bundle"]

    def drop(*roles):
        return lambda d: [d["files"].pop(r) for r in roles]

    def set_task(t, runtime=True):
        def edit(d):
            d["task"] = t
            if runtime:
                d["runtime"]["task"] = t
                for v in d["variants"]:
                    v["source"].get("config", {}).pop("task", None)
        return edit

    def size_as_string(d):
        d["files"]["catalogue"]["size"] = str(d["files"]["catalogue"]["size"])

    cases = [(rec, drop("ids", "index"), "needs files.ids"), (rec, drop("catalogue"), "needs files.catalogue"),
             (ret, drop("tokenizer"), "needs files.tokenizer"),
             (rec, set_task("retrieval"), "a retrieval bundle needs files.tokenizer"),  # was: KeyError 'tokenizer'
             (rec, set_task("retrieval", runtime=False), "runtime.task is 'rec' but task is 'retrieval'"),
             (rec, set_task("evil"), "task is 'evil'"),  # was: loaded
             (rec, size_as_string, "files.catalogue.size must be an integer, got str"),  # was: "has 24017 bytes, the manifest says 24017"
             (rec, lambda d: d["variants"][0].update(precision="fp8"), "variants[0].precision"),
             (rec, lambda d: d["runtime"].update(levels=[3, "3"]), "runtime.levels[1]"),
             (rec, lambda d: d.update(format_version=True), "format version True"),
             (rec, lambda d: d["variants"].append(d["variants"][0]), "used by two variants"),
             (rec, lambda d: d["runtime"].update(levels=[n + 1 for n in d["runtime"]["levels"]]), "but the semantic IDs have levels")]
    for n, (src, edit, match) in enumerate(cases):
        b = _edit_manifest(src, tmp_path / f"b{n}", edit)
        with pytest.raises(BundleError, match=match.replace("[", r"\[").replace("]", r"\]")) as e:
            edge_gr.load(b)
        assert "To fix" in str(e.value)
    deep = shutil.copytree(rec, tmp_path / "deep")
    (deep / MANIFEST).write_bytes(b"[" * 100_000)  # was: RecursionError
    with pytest.raises(BundleError, match="nested too deeply"):
        edge_gr.load(deep)


def test_cli_search_of_a_bundle_missing_a_role_exits_2(bad_paths, capsys):
    from server.cli import main

    assert main(["search", str(bad_paths["bundle-no-ids"]), "--history", "i1"]) == 2
    err = capsys.readouterr().err
    assert "needs files.ids" in err and "Traceback" not in err


def test_jsonl_reader_findings(tmp_path):
    from server.data.jsonl import read_interactions, read_items

    for body, match in ((b"[" * 100_000, "nested too deeply"), (b'{"id": ' + b"9" * 5000 + b', "text": "x"}', "malformed JSON"),
                        (b'{"id": "a", "text": "x", "meta": [1]}', "'meta' has type list")):
        (tmp_path / "i.jsonl").write_bytes(body)
        with pytest.raises(DataError, match=match):  # was: RecursionError / ValueError / a list as meta
            read_items(tmp_path / "i.jsonl")
    (tmp_path / "x.jsonl").write_text('{"user": "u", "item": "a", "timestamp": ' + "9" * 400 + "}\n")
    with pytest.raises(DataError, match="not a finite number"):  # was: OverflowError
        read_interactions(tmp_path / "x.jsonl")
    (tmp_path / "i.jsonl.gz").write_bytes(gzip.compress(b'{"id": "a", "text": "x"}\n')[:-6])
    with pytest.raises(DataError, match="cannot be read"):  # was: EOFError from gzip
        read_items(tmp_path / "i.jsonl.gz")


def test_check_history_keeps_only_item_ids():
    assert check_history(("a", 1, None, "b", b"c")) == ["a", "b"]
    with pytest.raises(InputError, match="not text"):
        check_history("a")
    with pytest.raises(InputError, match="got set"):
        check_history({"a"})


def test_checkpoint_header_sizes_are_bounded(models, tmp_path):
    """A header that describes a model far larger than its weights (or absurd fields) is refused before allocating."""
    import shutil

    from server.generative import GenerativeModel

    src = Path(models["rec"]["ckpt"])
    for field, value in (("d_model", 1 << 14), ("n_items", 10 ** 8), ("n_enc_layers", 10 ** 6), ("levels", [0, 4]), ("n_heads", 7)):
        ck = tmp_path / f"ck-{field}"
        shutil.copytree(src, ck)
        h = json.loads((ck / "edge_gr_model.json").read_text())
        h["config"][field] = value
        (ck / "edge_gr_model.json").write_text(json.dumps(h))
        with pytest.raises(FormatError, match="config|MB"):
            GenerativeModel.load(ck)


@_cheap(2000)  # 2,000 cases
@given(data=st.data())
def test_fuzz_signed_metadata(data):
    """Release / root envelopes, well-formed or not: only TrustError comes out (never a decoding or crypto error)."""
    import base64

    from edge_gr.trust import RELEASE_TYPE

    pol, now = _TRUST
    payload = data.draw(st.one_of(st.binary(max_size=64), st.just(json.dumps({"_type": "release", "spec": 1}).encode())))
    env = data.draw(st.one_of(
        st.fixed_dictionaries({"payloadType": st.sampled_from([RELEASE_TYPE, "x", ""]),
                               "payload": st.one_of(st.just(base64.b64encode(payload).decode()), st.text(max_size=20)),
                               "signatures": st.one_of(st.lists(st.fixed_dictionaries({"keyid": st.text(max_size=8) | st.sampled_from(list(pol.root.keys)),
                                                                                        "sig": st.text(max_size=12)}), max_size=3),
                                                       st.integers(), st.none())}),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)))
    installed = data.draw(st.sampled_from([None, "v1.0", "v2.3", "bad"]))
    try:
        pol.check_release(env, installed=installed, now=now)
    except TrustError:
        return
    raise AssertionError(f"an unsigned envelope was accepted: {env!r:.200}")


def _trust_fixture():
    import datetime

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_gr.trust import ROOT_TYPE, TrustPolicy, parse_root, root_payload, sign_envelope

    k = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    root = sign_envelope(ROOT_TYPE, root_payload(1, {"root": [k], "targets": [k]}, expires=now + datetime.timedelta(days=9)), [k])
    return TrustPolicy(parse_root(root)), now


_TRUST = _trust_fixture()


def test_source_checks_its_queries(models):
    """``GenerativeModel.source`` (what the shard router feeds the first decoder step) checks queries like search."""
    for task, bad in (("rec", "i1"), ("rec", [None]), ("rec", [[["i1"]]]), ("retrieval", [3]), ("retrieval", None), ("retrieval", "one")):
        with pytest.raises(InputError):
            models[task]["gm"].source(bad)
    assert tuple(models["rec"]["gm"].source([["i1", "i2"]]).shape) == (1, models["rec"]["gm"].model.cfg.max_len)


def test_cli_findings_of_the_review_are_one_line_errors(tmp_path, capsys):
    """`registry publish --metrics '{bad'` (was a raw JSONDecodeError), `fl run --phones 0` (hung > 120 s),
    `--registry /etc/passwd`: each exits 2 at once with one line."""
    from server.cli import main

    for argv in (["registry", "publish", "--registry", str(tmp_path / "R"), "--checkpoint", str(tmp_path), "--metrics", "{bad"],
                 ["registry", "publish", "--registry", str(tmp_path / "R"), "--checkpoint", str(tmp_path), "--metrics", "[1]"],
                 ["registry", "list", "--registry", "/etc/passwd"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("edge-gr: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "R").exists()
    for argv in (["fl", "run", "--phones", "0"], ["fl", "run", "--rounds", "-1"], ["fleet", "simulate", "--phones", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "at least 1" in capsys.readouterr().err
