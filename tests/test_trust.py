"""Signed updates (issue "Trust"): a device with a trust anchor installs only packages the registry's targets key signed,
never a downgrade or replay without a signed rollback order, never expired metadata; keys rotate through root metadata.
Every refusal leaves the device on the version it had, still loadable."""

import base64
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_gr.delta import file_sha256
from edge_gr.errors import TrustError, UpdateError
from edge_gr.trust import RELEASE_TYPE, sign_envelope
from edge_gr.update import BundleStore
from server.keys import KeyFolderError, Signer, init_keys, rotate

REPO = Path(__file__).resolve().parents[1]
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory, update_registry):
    root = tmp_path_factory.mktemp("trust")
    reg = update_registry  # conftest: the tiny v1.0 -> v1.1 (LoRA) -> v1.2 (new items) registry of test_update
    keys = root / "keys"
    init_keys(keys)
    signer = Signer(keys)
    pk = {}
    for name, (a, b, rb) in {"full": (None, "v1.0", False), "p1": ("v1.0", "v1.1", False), "p2": ("v1.1", "v1.2", False),
                             "down": ("v1.2", "v1.0", False), "order": ("v1.2", "v1.0", True), "order11": ("v1.1", "v1.0", True)}.items():
        pk[name], _ = reg.bundle_package(a, b, root / name, signer=signer, rollback=rb)
    pk["unsigned"], _ = reg.bundle_package(None, "v1.0", root / "unsigned")
    return reg, keys, pk, root


def _store(tmp_path, keys, **kw) -> BundleStore:
    return BundleStore(tmp_path / "dev", trust=keys / "root.json", **kw)


def _refused(store: BundleStore, pkg, match: str, version: str | None):
    with pytest.raises(TrustError, match=match):
        store.install(pkg)
    assert store.current() == version
    if version is not None:
        store.load().search(["i1"], k=3)  # still serving its model


def test_signed_updates_install_and_every_step_is_verified(world, tmp_path):
    reg, keys, pk, _ = world
    store = _store(tmp_path, keys)
    for name, v in (("full", "v1.0"), ("p1", "v1.1"), ("p2", "v1.2")):
        assert store.install(pk[name]).to_version == v
    assert store.current() == "v1.2" and len(store.load().search(["i1", "i2"], k=3)) == 3


def test_unsigned_forged_and_wrong_key_packages_are_refused(world, tmp_path):
    reg, keys, pk, root = world
    store = _store(tmp_path, keys)
    _refused(store, pk["unsigned"], "release.json is missing", None)
    store.install(pk["full"])
    # a self-consistent forgery: v1.1's package with NaN weights; update.json re-hashed, the release kept
    forged = tmp_path / "forged"
    shutil.copytree(pk["p1"], forged)
    doc = json.loads((forged / "update.json").read_text())
    target = next(iter(doc["files"])) if doc["files"] else None
    for s in doc["steps"]:  # poison every delta tensor file, then fix its hash so only the signature can tell
        p = forged / s["file"]
        b = bytearray(p.read_bytes())
        b[-8:] = np.full(2, np.nan, np.float32).tobytes()
        p.write_bytes(bytes(b))
        s["sha256"], s["size"] = file_sha256(p), p.stat().st_size
    (forged / "update.json").write_text(json.dumps(doc))
    assert doc["steps"] or target, "the package should carry something to forge"
    _refused(store, forged, "not the one its signed release names", "v1.0")
    # the same forgery, re-signed with an attacker's own key set (its own root.json too)
    evil = tmp_path / "evil-keys"
    init_keys(evil)
    (forged / "release.json").unlink()
    shutil.rmtree(forged / "root")
    bad = Signer(evil)
    info = {n: {"sha256": file_sha256(forged / n), "size": (forged / n).stat().st_size} for n in ("update.json", "manifest.json")}
    (forged / "release.json").write_text(json.dumps(bad.sign_release(to="v1.1", frm="v1.0", update=info["update.json"],
                                                                      manifest=info["manifest.json"])))
    shutil.copytree(evil / "roots", forged / "root")
    _refused(store, forged, "valid signature", "v1.0")
    # a device provisioned with another registry's root refuses the genuine package
    other = BundleStore(tmp_path / "dev2", trust=evil / "root.json")
    _refused(other, pk["full"], "valid signature", None)
    # an altered release payload (version bumped) no longer matches its signature
    tampered = tmp_path / "tampered"
    shutil.copytree(pk["p1"], tampered)
    env = json.loads((tampered / "release.json").read_text())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["expires"] = "2099-01-01T00:00:00Z"
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (tampered / "release.json").write_text(json.dumps(env))
    _refused(store, tampered, "valid signature", "v1.0")
    for junk in ("", "[1]", '{"payloadType": 3}', "{" * 100_000):
        (tampered / "release.json").write_text(junk)
        _refused(store, tampered, "release.json", "v1.0")
    assert store.install(pk["p1"]).to_version == "v1.1"  # the genuine one still goes in


def test_downgrade_and_replay_are_refused_unless_a_signed_rollback_order(world, tmp_path):
    reg, keys, pk, _ = world
    store = _store(tmp_path, keys)
    for name in ("full", "p1", "p2"):
        store.install(pk[name])
    _refused(store, pk["down"], "downgrade refused", "v1.2")
    _refused(store, pk["full"], "not newer", "v1.2")                 # replay of the first package
    _refused(store, pk["p1"], "not newer", "v1.2")                   # replay of a delta
    _refused(store, pk["order11"], "for a device at v1.1", "v1.2")   # a rollback order issued for another state
    with pytest.raises(TrustError, match="needs a signed rollback order"):
        store.switch("v1.1")                                          # a kept older version: local switch refused too
    assert store.current() == "v1.2"
    assert store.install(pk["order"]).to_version == "v1.0"           # the signed order for v1.2 -> v1.0
    assert store.current() == "v1.0"
    _refused(store, pk["order"], "for a device at v1.2", "v1.0")     # the order cannot be replayed
    store.install(pk["p1"])                                          # forward again: v1.0 -> v1.1 is newer
    assert store.current() == "v1.1"


def test_expired_metadata_is_refused(world, tmp_path):
    reg, keys, pk, _ = world
    later = datetime.datetime.now(datetime.timezone.utc) + 31 * DAY   # packages are signed for 30 days
    store = _store(tmp_path, keys, clock=lambda: later)
    _refused(store, pk["full"], "expired", None)
    much_later = datetime.datetime.now(datetime.timezone.utc) + 400 * DAY  # the root itself (365 days)
    store = BundleStore(tmp_path / "dev3", trust=keys / "root.json", clock=lambda: much_later)
    _refused(store, pk["full"], "root metadata .* expired", None)


def test_key_rotation_is_adopted_and_the_old_key_stops_working(world, tmp_path):
    reg, keys0, pk, root = world
    keys = tmp_path / "keys"
    shutil.copytree(keys0, keys)
    store = _store(tmp_path, keys)                     # provisioned with root v1
    store.install(pk["full"])
    old_signer = Signer(keys)
    rotate(keys, "targets")                             # root v2: a new targets key, signed by the root key
    rotate(keys, "root")                                # root v3: a new root key, signed by the old and the new one
    new_signer = Signer(keys)
    p1, _ = reg.bundle_package("v1.0", "v1.1", tmp_path / "p1", signer=new_signer)
    stripped = tmp_path / "p1-no-roots"                 # without the rotations the device cannot trust the new key
    shutil.copytree(p1, stripped)
    shutil.rmtree(stripped / "root")
    _refused(store, stripped, "valid signature", "v1.0")
    assert store.install(p1).to_version == "v1.1"
    assert store.trust_policy().root.version == 3
    assert BundleStore(store.root, trust=keys0 / "root.json").trust_policy().root.version == 3  # kept across restarts
    old, _ = reg.bundle_package("v1.1", "v1.2", tmp_path / "old", signer=old_signer)  # signed with the retired key
    _refused(store, old, "valid signature", "v1.1")
    # a rotation not signed by the previous root is not adopted
    evil = tmp_path / "evil"
    init_keys(evil)
    fake = tmp_path / "fake-rotation"
    shutil.copytree(p1, fake)
    env = json.loads((evil / "root.json").read_text())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["version"] = 4
    from cryptography.hazmat.primitives import serialization

    k = serialization.load_pem_private_key((evil / "root.key").read_bytes(), None)
    (fake / "root" / "4.root.json").write_text(json.dumps(sign_envelope(env["payloadType"], payload, [k])))
    with pytest.raises(TrustError, match="previous root's keys"):
        store.install(fake)
    assert store.trust_policy().root.version == 3 and store.current() == "v1.1"


def test_cli_keys_package_and_device_install(world, tmp_path):
    reg, _, pk, root = world
    run = lambda *a: subprocess.run([sys.executable, "-m", "server.cli", *a], cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    keys = tmp_path / "k"
    r = run("keys", "init", "--dir", str(keys))
    assert r.returncode == 0, r.stderr
    assert (keys / "root.key").stat().st_mode & 0o077 == 0               # private keys are 0600
    r = run("keys", "init", "--dir", str(REPO / ".cache" / "keys-in-repo"))
    assert r.returncode == 2 and "git work tree" in r.stderr and "Traceback" not in r.stderr
    assert not (REPO / ".cache" / "keys-in-repo").exists()
    out = {}
    for name, extra in (("full", []), ("p1", ["--from", "v1.0"])):
        to = "v1.0" if name == "full" else "v1.1"
        r = run("registry", "package", "--registry", str(reg.root), "--to", to, *extra, "--out", str(tmp_path / name), "--sign", str(keys))
        assert r.returncode == 0 and "signed" in r.stdout, r.stderr
        out[name] = tmp_path / name
    dev = ["--store", str(tmp_path / "dev"), "--trust", str(keys / "root.json")]
    r = run("device", "install", str(pk["full"]), *dev)                   # signed by another key folder
    assert r.returncode == 2 and "valid signature" in r.stderr and "Traceback" not in r.stderr
    for name in ("full", "p1"):
        r = run("device", "install", str(out[name]), *dev)
        assert r.returncode == 0 and "signature verified" in r.stdout, r.stderr
    r = run("device", "install", str(out["full"]), *dev)                   # a replayed old package
    assert r.returncode == 2 and "not newer" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("device", "status", "--store", str(tmp_path / "dev"))
    assert json.loads(r.stdout)["current"] == "v1.1"
    r = run("registry", "package", "--registry", str(reg.root), "--to", "v1.1", "--from", "v1.0", "--out", str(tmp_path / "x"),
            "--rollback", "--sign", str(keys))
    assert r.returncode == 2 and "older" in r.stderr


def test_key_folder_errors_are_ours(tmp_path):
    with pytest.raises(KeyFolderError, match="keys init"):
        Signer(tmp_path / "none")
    init_keys(tmp_path / "k")
    with pytest.raises(KeyFolderError, match="already holds"):
        init_keys(tmp_path / "k")
    with pytest.raises(KeyFolderError, match="no role"):
        rotate(tmp_path / "k", "snapshot")
    shutil.move(tmp_path / "k" / "root.key", tmp_path / "root.key.offline")  # the offline root key is not needed to sign
    assert Signer(tmp_path / "k").sign_release(to="v1.0", frm=None, update={"sha256": "0" * 64, "size": 1},
                                              manifest={"sha256": "0" * 64, "size": 1})["signatures"]
    (tmp_path / "k" / "targets.key").write_text("junk")
    with pytest.raises(KeyFolderError, match="cannot read"):
        Signer(tmp_path / "k")
    assert issubclass(TrustError, UpdateError)
    assert RELEASE_TYPE.endswith("+json")
