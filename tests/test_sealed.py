"""Encrypted model files at rest (edge_gr.sealed): a real ONNX Runtime bundle exported clear and sealed from one tiny
model, then round trip, tamper, wrong / missing key, swapped files. LiteRT (a 20-60 s export) is ``slow``."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_gr
from edge_gr.bundle import MANIFEST, BundleManifest, load_manifest, write_archive
from edge_gr.errors import BundleError, InputError, MissingKeyError, SealedError
from edge_gr.sealed import (DataKey, EnvKeyProvider, FileKeyProvider, KeyProvider, load_key, new_key, seal, unseal)
from server.data.base import Item, RecData
from server.export.bundle import export_bundle
from server.model import GRConfig
from server.semantic_ids import build_ids
from server.train import TrainConfig, train_rec

N_ITEMS = 30
VARIANTS = [("onnxruntime", "fp32"), ("torch", "fp32")]  # fp32 ONNX: graphs + external weights.bin; torch: .pt2 from BytesIO


@pytest.fixture(scope="module")
def gm():
    items = [Item(f"i{j}", f"item {j}") for j in range(N_ITEMS)]
    d = RecData("toy", items, {f"u{u}": [f"i{(u + (1 + u % 2) * t) % N_ITEMS}" for t in range(12)] for u in range(60)})
    ids = build_ids([f"i{j}" for j in range(N_ITEMS)], np.random.default_rng(0).normal(size=(N_ITEMS, 8)).astype("float32"), levels=(4, 4))
    g, _ = train_rec(d.split(), d.items, ids, GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=2),
                     TrainConfig(epochs=2, batch_size=32, lr=5e-3, eval_queries=10, beam=10, patience=50, progress=False, warmup_steps=10))
    return g


@pytest.fixture(scope="module")
def built(gm, tmp_path_factory):
    """(clear bundle, sealed bundle, key file, DataKey), exported once."""
    d = tmp_path_factory.mktemp("sealed")
    key = new_key(d / "data.key")
    clear = export_bundle(gm, d / "clear", VARIANTS)
    sealed = export_bundle(gm, d / "sealed", VARIANTS, encrypt=d / "data.key")
    return clear, sealed, d / "data.key", key


QUERIES = [[f"i{j}", f"i{j + 1}", f"i{j + 2}"] for j in range(0, 24, 3)]


def _top(r, k=10):
    return [[(h.item_id, round(h.score, 4)) for h in hs] for hs in r.search_many(QUERIES, k=k)]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(root: Path, fn) -> None:
    doc = json.loads((root / MANIFEST).read_text())
    fn(doc)
    (root / MANIFEST).write_text(json.dumps(doc))


def test_manifest_seals_the_variant_files_only(built):
    clear, sealed, _, key = built
    mc, ms = load_manifest(clear), load_manifest(sealed)
    for role, f in ms.files.items():  # IDs, index, catalogue, popularity: clear, byte for byte the clear bundle's
        assert f.sealed is None and f.sha256 == mc.files[role].sha256
    nonces = set()
    for v in ms.variants:
        assert "weight_map" not in v.files  # a sealed weights file is not rebuilt from deltas: no weight map shipped
        assert not (sealed / f"variants/{v.name}/weights.json").exists()
        for f in v.files.values():
            assert f.sealed.alg == "AES-256-GCM" and f.sealed.key_id == key.key_id and len(bytes.fromhex(f.sealed.nonce)) == 12
            nonces.add((f.path, f.sealed.nonce))
            data = (sealed / f.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size  # the manifest pins the ciphertext
    assert len({n for _, n in nonces}) == len(nonces)  # a fresh nonce per file
    onnx = ms.variant("onnxruntime-fp32").files
    assert set(onnx) == {"encoder", "decoder", "step", "weights"}
    assert b"pytorch" in (clear / onnx["encoder"].path).read_bytes() and b"pytorch" not in (sealed / onnx["encoder"].path).read_bytes()
    raw = json.loads((clear / MANIFEST).read_text())  # a clear manifest has no "sealed" field (older readers, the Kotlin core)
    assert all("sealed" not in f for v in raw["variants"] for f in v["files"].values())
    assert BundleManifest.from_dict(ms.to_dict()) == ms


@pytest.mark.parametrize("variant", ["onnxruntime-fp32", "torch-fp32"])
def test_round_trip_same_answers_as_the_clear_bundle(built, variant, monkeypatch):
    clear, sealed, key_file, key = built
    ref = _top(edge_gr.load(clear, variant=variant))
    assert _top(edge_gr.load(sealed, variant=variant, key_provider=FileKeyProvider(key_file))) == ref
    assert _top(edge_gr.load(sealed, variant=variant, key_provider=FileKeyProvider(key_file.parent))) == ref  # a key folder
    monkeypatch.setenv("EDGE_GR_DATA_KEY", f"{new_key(key_file.parent / 'other.key').line()};{key.line()}")
    (key_file.parent / "other.key").unlink()
    assert _top(edge_gr.load(sealed, variant=variant, key_provider=EnvKeyProvider())) == ref


def test_archive_auto_backend_and_switch(built, tmp_path):
    _, sealed, _, key = built
    tar = write_archive(sealed, tmp_path / "b.tar")
    r = edge_gr.load(tar, key_provider=key)  # a DataKey is a KeyProvider for itself
    assert isinstance(key, KeyProvider) and r.variant == "onnxruntime-fp32"
    before = _top(r)
    r.switch("torch-fp32")  # the provider given to load opens the other variant too
    assert r.variant == "torch-fp32" and [[i for i, _ in q] for q in _top(r)] == [[i for i, _ in q] for q in before]


def test_no_key_provider_or_missing_key_is_a_clear_error(built, tmp_path, monkeypatch):
    _, sealed, _, key = built
    with pytest.raises(MissingKeyError, match=f"encrypted .*{key.key_id}.* no key provider was given") as e:
        edge_gr.load(sealed)
    assert "key_provider=" in e.value.hint
    other = new_key(tmp_path / "other.key")
    with pytest.raises(MissingKeyError, match=f"needs data key '{key.key_id}'.*they hold \\['{other.key_id}'\\]"):
        edge_gr.load(sealed, key_provider=FileKeyProvider(tmp_path / "other.key"))
    with pytest.raises(MissingKeyError, match="no data key file"):
        edge_gr.load(sealed, key_provider=FileKeyProvider(tmp_path / "nope.key"))
    monkeypatch.delenv("EDGE_GR_DATA_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="EDGE_GR_DATA_KEY is not set"):
        edge_gr.load(sealed, key_provider=EnvKeyProvider())

    class Dict:  # a provider that raises KeyError, or returns a short key
        def __init__(self, d):
            self.d = d

        def key(self, key_id):
            return self.d[key_id]

    with pytest.raises(MissingKeyError, match="does not have"):
        edge_gr.load(sealed, key_provider=Dict({}))
    with pytest.raises(SealedError, match="not a 256-bit key"):
        edge_gr.load(sealed, key_provider=Dict({key.key_id: b"short"}))


def test_wrong_key_is_refused_without_a_raw_invalid_tag(built):
    _, sealed, _, key = built
    impostor = DataKey(key.key_id, bytes(32))  # same id, other key
    with pytest.raises(SealedError, match="cannot be decrypted with data key .*wrong key, or the file was altered") as e:
        edge_gr.load(sealed, variant="onnxruntime-fp32", key_provider=impostor)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no InvalidTag chained into the traceback
    assert "export" in e.value.hint


def test_tampered_ciphertext_is_refused_by_sha256_then_by_the_tag(built, tmp_path):
    _, sealed, _, key = built
    b = _copy(sealed, tmp_path / "b")
    rel = load_manifest(b).variant("onnxruntime-fp32").files["weights"].path
    data = bytearray((b / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / rel).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256") as e:  # the bundle's integrity check runs first
        edge_gr.load(b, variant="onnxruntime-fp32", key_provider=key)
    assert not isinstance(e.value, SealedError)

    def fix(doc):  # an attacker who also rewrites the manifest: only the GCM tag is left to catch it
        for v in doc["variants"]:
            for f in v["files"].values():
                if f["path"] == rel:
                    f["sha256"] = hashlib.sha256(data).hexdigest()

    _rewrite(b, fix)
    with pytest.raises(SealedError, match=f"{rel} cannot be decrypted"):
        edge_gr.load(b, variant="onnxruntime-fp32", key_provider=key)


def test_swapped_files_are_refused(built, tmp_path):
    """Two sealed files swapped, the manifest entries (sha256, size, nonce) swapped with them: integrity passes,
    the associated data (the file's path) does not."""
    _, sealed, _, key = built
    b = _copy(sealed, tmp_path / "b")
    files = load_manifest(b).variant("onnxruntime-fp32").files
    enc, dec = files["encoder"].path, files["decoder"].path
    a, c = (b / enc).read_bytes(), (b / dec).read_bytes()
    (b / enc).write_bytes(c)
    (b / dec).write_bytes(a)

    def swap(doc):
        v = next(v for v in doc["variants"] if v["name"] == "onnxruntime-fp32")
        e, d = v["files"]["encoder"], v["files"]["decoder"]
        for k in ("sha256", "size", "sealed"):
            e[k], d[k] = d[k], e[k]

    _rewrite(b, swap)
    load_manifest(b)  # every sha256 matches
    with pytest.raises(SealedError, match="wrong key, or the file was altered or moved"):
        edge_gr.load(b, variant="onnxruntime-fp32", key_provider=key)


def test_seal_binds_path_and_key_id():
    k = DataKey("k1", bytes(range(32)))
    ct, info = seal(b"weights", k, "variants/a/weights.bin")
    assert unseal(ct, info, "variants/a/weights.bin", k) == b"weights"
    with pytest.raises(SealedError, match="altered or moved"):
        unseal(ct, info, "variants/b/weights.bin", k)
    k2 = DataKey("k2", k.secret)  # the same key under another id: the id is bound too
    with pytest.raises(SealedError, match="altered or moved"):
        unseal(ct, {**info, "key_id": "k2"}, "variants/a/weights.bin", k2)
    with pytest.raises(SealedError, match="opens AES-256-GCM only"):
        unseal(ct, {**info, "alg": "ChaCha20"}, "variants/a/weights.bin", k)
    assert seal(b"weights", k, "p")[1]["nonce"] != seal(b"weights", k, "p")[1]["nonce"]
    assert "secret" not in repr(k) and repr(k.secret) not in repr(k)


def test_new_key_file(tmp_path):
    p = tmp_path / "data.key"
    k = new_key(p)
    assert p.stat().st_mode & 0o777 == 0o600 and load_key(p) == k and k.key_id.startswith("dk-")
    with pytest.raises(InputError, match="never overwritten"):
        new_key(p)
    assert load_key(p) == k
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(InputError, match="git work tree"):
        new_key(repo / "keys" / "data.key")
    with pytest.raises(InputError, match="bad data key id"):
        new_key(tmp_path / "x.key", key_id="no spaces")
    (tmp_path / "bad.key").write_text("edge-gr-data-key 1 k1 AAAA\n")
    with pytest.raises(SealedError, match="not a 256-bit key"):
        load_key(tmp_path / "bad.key")
    (tmp_path / "v9.key").write_text("edge-gr-data-key 9 k1 AAAA\n")
    with pytest.raises(SealedError, match="version '9'"):
        load_key(tmp_path / "v9.key")


def test_manifest_sealed_record_is_checked(built):
    _, sealed, _, _ = built
    doc = json.loads((sealed / MANIFEST).read_text())
    doc["variants"][0]["files"]["encoder"]["sealed"]["extra"] = 1
    with pytest.raises(BundleError, match=r"variants\[0\].files.encoder.sealed has unknown fields \['extra'\]"):
        BundleManifest.from_dict(doc)
    doc["variants"][0]["files"]["encoder"]["sealed"] = "AES"
    with pytest.raises(BundleError, match=r"variants\[0\].files.encoder.sealed must be an object"):
        BundleManifest.from_dict(doc)


def test_cli_export_encrypt_key(gm, tmp_path):
    from server.cli import main

    new_key(tmp_path / "data.key")
    gm.save(tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b"), "--variants", "torch:fp32",
                 "--encrypt-key", str(tmp_path / "data.key")]) == 0
    assert all(f.sealed for f in load_manifest(tmp_path / "b").variant("torch-fp32").files.values())
    assert edge_gr.load(tmp_path / "b", key_provider=FileKeyProvider(tmp_path / "data.key")).search(["i1", "i2"], k=3)
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "c"), "--variants", "torch:fp32",
                 "--encrypt-key", str(tmp_path / "missing.key")]) == 2
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_litert_round_trip(gm, tmp_path):
    key = new_key(tmp_path / "data.key")
    clear = export_bundle(gm, tmp_path / "clear", [("litert", "fp32")])
    sealed = export_bundle(gm, tmp_path / "sealed", [("litert", "fp32")], encrypt=key)
    assert load_manifest(sealed).variant("litert-fp32").files["program"].sealed is not None
    assert _top(edge_gr.load(sealed, key_provider=key)) == _top(edge_gr.load(clear))


def test_cli_data_key_search_and_an_encrypted_install(gm, tmp_path, capsys):
    """`edge-gr keys data-key` -> `export --encrypt-key` -> `search --key` / `BundleStore(key_provider=)` install + load."""
    from edge_gr.delta import file_sha256, write_json_atomic
    from edge_gr.update import BundleStore
    from server.cli import main

    assert main(["keys", "data-key", "--out", str(tmp_path / "d.key")]) == 0
    assert main(["keys", "data-key", "--out", str(tmp_path / "d.key")]) == 2          # never overwritten
    gm.save(tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b"), "--variants", "torch:fp32",
                 "--encrypt-key", str(tmp_path / "d.key"), "--model-version", "v1.0"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "b"), "--history", "i1", "i2", "-k", "3", "--key", str(tmp_path / "d.key")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["search", str(tmp_path / "b"), "--history", "i1", "-k", "3"]) == 2      # no key: one line, exit 2
    assert "key" in capsys.readouterr().err
    # a full update package of the encrypted bundle (as Registry.bundle_package lays it out)
    pkg = tmp_path / "pkg"
    shutil.copytree(tmp_path / "b", pkg / "files")
    shutil.move(pkg / "files" / MANIFEST, pkg / MANIFEST)
    (pkg / "files" / ".edge-gr-output").unlink(missing_ok=True)
    m = json.loads((pkg / MANIFEST).read_text())
    files = {f.path: {"sha256": f.sha256, "size": f.size} for f in BundleManifest.from_dict(m).all_files()}
    write_json_atomic(pkg / "update.json", {"format": "edge-gr-update", "format_version": 2, "kind": "bundle", "from": None,
                                            "to": m["model_version"], "manifest": {"sha256": file_sha256(pkg / MANIFEST),
                                                                                   "size": (pkg / MANIFEST).stat().st_size},
                                            "files": files, "steps": [], "rebuild": [], "tensors": {}})
    with pytest.raises(MissingKeyError):
        BundleStore(tmp_path / "dev0").install(pkg)                                  # the smoke run cannot decrypt
    store = BundleStore(tmp_path / "dev", key_provider=FileKeyProvider(tmp_path / "d.key"))
    store.install(pkg)
    assert store.load().search(["i1", "i2"], k=3)
