"""Signed update metadata: who may publish a model version to a device, and which versions it may move to.

The registry signs every update package; the device checks the signatures *before it reads anything else*
of the package, then refuses downgrades, replays and expired metadata. The roles follow TUF (The Update
Framework): an offline **root** key set signs ``root`` metadata that names the keys of each role, with a
threshold and an expiry; the online **targets** key signs one ``release`` per package, naming the bundle
version, the version the device must hold (``from``), the sha256 of the package's ``update.json`` and
``manifest.json`` (which hold the sha256 of every other file) and an expiry. A rotated root is signed by a
threshold of the previous root's keys *and* of its own, so a device walks the chain 1 -> 2 -> ... from the
root it was provisioned with.

Why not python-tuf itself: TUF's client (``ngclient``) fetches a repository's metadata over HTTP and signs
canonical JSON; edge-gr devices install offline update packages (a folder, possibly side-loaded) and the
Kotlin core must verify the very same signatures without a canonical-JSON implementation. So the envelopes
are DSSE (the in-toto / Sigstore "Dead Simple Signing Envelope"): the signature covers the exact payload
bytes (PAE-encoded), verified with Ed25519 from the maintained ``cryptography`` package, and the Kotlin core
verifies them with the JDK's own Ed25519 (``android_demo/core``: ``Trust.kt``).

Device rules (:class:`TrustPolicy`, used by :class:`edge_gr.update.BundleStore` when given ``trust=``):

* every package carries ``release.json`` (and ``root/N.root.json`` for every root version the registry has);
* the release is signed by a threshold of the trusted root's ``targets`` keys, the root chain by its own rules;
* the release and the root must not have expired (the device's clock, ``now=`` in tests);
* the release's version must be newer than the one installed, unless the release is a **rollback order**
  (``rollback: true``) issued for exactly the version the device holds (``from``), so an order cannot be
  replayed on another device state; a rollback order must go to an *older* version;
* ``update.json`` and ``manifest.json`` must have the sha256 / size the release names.

>>> import datetime
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> k = Ed25519PrivateKey.generate()
>>> now = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
>>> root = sign_envelope(ROOT_TYPE, root_payload(1, {"root": [k], "targets": [k]}, expires=now + datetime.timedelta(days=365)), [k])
>>> rel = sign_envelope(RELEASE_TYPE, {"_type": "release", "spec": SPEC, "version": "v1.1", "from": "v1.0", "rollback": False,
...     "expires": iso(now + datetime.timedelta(days=30)), "update": {"sha256": "0" * 64, "size": 1},
...     "manifest": {"sha256": "0" * 64, "size": 1}}, [k])
>>> pol = TrustPolicy(parse_root(root))
>>> pol.check_release(rel, installed="v1.0", now=now)["version"]
'v1.1'
>>> pol.check_release(rel, installed="v1.2", now=now)
Traceback (most recent call last):
...
edge_gr.errors.TrustError: the signed release v1.1 is not newer than the installed v1.2 (downgrade refused). To fix: a rollback needs a signed rollback order: `edge-gr registry package --from v1.2 --to v1.1 --rollback --sign KEYS`
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .delta import parse_version
from .errors import BundleError, TrustError

__all__ = ["TrustPolicy", "TrustError", "Root", "parse_root", "verify_envelope", "sign_envelope", "root_payload", "pae", "keyid", "public_raw",
           "iso", "read_metadata", "ROOT_TYPE", "RELEASE_TYPE", "RELEASE", "ROOT_DIR", "SPEC", "MAX_METADATA"]

SPEC = 1
ROOT_TYPE = "application/vnd.edge-gr.root+json"
RELEASE_TYPE = "application/vnd.edge-gr.release+json"
RELEASE = "release.json"           # in every signed package
ROOT_DIR = "root"                  # package/root/<N>.root.json: every root version the registry has
MAX_METADATA = 1 << 20             # bytes: metadata larger than this is refused before parsing
_ROLES = ("root", "targets")
_HINT_KEYS = "this package was not signed by the registry this device trusts: ask its publisher, and do not install it"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a signature covers (type and payload, length-prefixed)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_raw: bytes) -> str:
    """A key's id: sha256 of its raw 32-byte Ed25519 public key, hex."""
    return hashlib.sha256(public_raw).hexdigest()


def iso(t: datetime.datetime) -> str:
    """UTC time as metadata writes it (``2026-12-01T00:00:00Z``)."""
    return t.astimezone(datetime.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(s, what: str) -> datetime.datetime:
    try:
        return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        raise TrustError(f"{what} has no valid expiry ({s!r})", hint=_HINT_KEYS) from None


def public_raw(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def root_payload(version: int, roles: Mapping[str, Sequence], *, expires: datetime.datetime,
                 thresholds: Mapping[str, int] | None = None) -> dict:
    """The ``signed`` part of root metadata: ``roles`` maps ``root`` / ``targets`` to keys (private or public)."""
    keys, out = {}, {}
    for role in _ROLES:
        ids = []
        for k in roles[role]:
            raw = public_raw(k)
            keys[keyid(raw)] = {"keytype": "ed25519", "public": raw.hex()}
            ids.append(keyid(raw))
        out[role] = {"keyids": sorted(set(ids)), "threshold": int((thresholds or {}).get(role, 1))}
    return {"_type": "root", "spec": SPEC, "version": int(version), "expires": iso(expires), "keys": keys, "roles": out}


def sign_envelope(payload_type: str, payload: dict, keys: Iterable) -> dict:
    """A DSSE envelope of ``payload`` (JSON) signed by every Ed25519 private key in ``keys``."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    sigs = [{"keyid": keyid(public_raw(k)), "sig": base64.b64encode(k.sign(pae(payload_type, body))).decode()} for k in keys]
    return {"payloadType": payload_type, "payload": base64.b64encode(body).decode(), "signatures": sigs}


def _envelope(doc, payload_type: str, what: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    try:
        assert isinstance(doc, dict), "not an object"
        if doc.get("payloadType") != payload_type:
            raise TrustError(f"{what} is a {doc.get('payloadType')!r} envelope, not {payload_type}", hint=_HINT_KEYS)
        body = base64.b64decode(doc["payload"], validate=True)
        sigs = [(str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in doc["signatures"]]
        assert isinstance(doc["signatures"], list)
    except TrustError:
        raise
    except (AssertionError, KeyError, TypeError, ValueError, binascii.Error) as e:
        raise TrustError(f"{what} is not a signed envelope ({type(e).__name__}: {e})", hint=_HINT_KEYS) from None
    return body, sigs


def verify_envelope(doc: dict, payload_type: str, keys: Mapping[str, bytes], threshold: int, *, what: str) -> dict:
    """The payload of a DSSE envelope signed by at least ``threshold`` distinct keys of ``keys`` (id -> raw public key)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    body, sigs = _envelope(doc, payload_type, what)
    good = set()
    for kid, sig in sigs:
        if kid in good or kid not in keys:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(keys[kid]).verify(sig, pae(payload_type, body))
        except (InvalidSignature, ValueError):
            continue
        good.add(kid)
    if len(good) < max(1, threshold):
        raise TrustError(f"{what} has {len(good)} valid signature(s) of a trusted key, {max(1, threshold)} needed "
                         f"(forged, altered after signing, or signed by a key this device does not trust)", hint=_HINT_KEYS)
    try:
        payload = json.loads(body.decode("utf-8"))
        assert isinstance(payload, dict), "not an object"
    except (UnicodeDecodeError, json.JSONDecodeError, AssertionError) as e:
        raise TrustError(f"{what} is signed but its payload is not a JSON object ({e})", hint=_HINT_KEYS) from None
    return payload


@dataclass(frozen=True)
class Root:
    """Verified root metadata: its version, expiry, keys and roles, and the envelope it came in."""

    version: int
    expires: datetime.datetime
    keys: dict           # keyid -> raw public key
    roles: dict          # role -> (keyids, threshold)
    envelope: dict

    def role_keys(self, role: str) -> tuple[dict, int]:
        ids, threshold = self.roles[role]
        return {k: self.keys[k] for k in ids if k in self.keys}, threshold

    def check_expiry(self, now: datetime.datetime) -> None:
        if now >= self.expires:
            raise TrustError(f"the trusted root metadata (version {self.version}) expired on {iso(self.expires)}",
                             hint="install the app update that ships a newer root.json, or ask the publisher to rotate "
                                  "(`edge-gr keys rotate`) and publish a package that carries it")


def _root_fields(payload: dict, what: str) -> tuple[int, datetime.datetime, dict, dict]:
    try:
        assert payload.get("_type") == "root" and payload.get("spec") == SPEC, f"type {payload.get('_type')!r} spec {payload.get('spec')!r}"
        version = payload["version"]
        assert isinstance(version, int) and not isinstance(version, bool) and version >= 1, f"version {version!r}"
        keys = {}
        for kid, k in payload["keys"].items():
            raw = bytes.fromhex(k["public"])
            assert k["keytype"] == "ed25519" and len(raw) == 32 and keyid(raw) == kid, f"key {kid[:12]}"
            keys[kid] = raw
        roles = {}
        for role in _ROLES:
            r = payload["roles"][role]
            t = r["threshold"]
            assert isinstance(t, int) and 1 <= t <= len(r["keyids"]), f"{role} threshold {t!r}"
            roles[role] = (tuple(str(x) for x in r["keyids"]), t)
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise TrustError(f"{what} is not valid root metadata ({type(e).__name__}: {e})", hint=_HINT_KEYS) from None
    return version, _parse_time(payload.get("expires"), what), keys, roles


def _self_signed(doc: dict, what: str) -> Root:
    """A root verified by its own root keys (a provisioned trust anchor; also the second half of a rotation)."""
    body, _ = _envelope(doc, ROOT_TYPE, what)
    try:
        unverified = json.loads(body.decode("utf-8"))
        assert isinstance(unverified, dict)
    except (UnicodeDecodeError, json.JSONDecodeError, AssertionError):
        raise TrustError(f"{what} is not valid root metadata (payload not a JSON object)", hint=_HINT_KEYS) from None
    version, expires, keys, roles = _root_fields(unverified, what)
    ids, threshold = roles["root"]
    payload = verify_envelope(doc, ROOT_TYPE, {k: keys[k] for k in ids if k in keys}, threshold, what=what)
    version, expires, keys, roles = _root_fields(payload, what)
    return Root(version, expires, keys, roles, doc)


def parse_root(doc: dict | str | Path, *, what: str = "root.json") -> Root:
    """A root envelope (dict, JSON text or file) checked against its own root keys: the device's trust anchor."""
    if isinstance(doc, Path):
        what = str(doc)
        doc = read_metadata(doc, what)
    elif isinstance(doc, str):
        doc = _loads(doc, what)
    return _self_signed(doc, what)


def _loads(text: str, what: str):
    if len(text) > MAX_METADATA:
        raise TrustError(f"{what} is larger than {MAX_METADATA} bytes", hint=_HINT_KEYS)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise TrustError(f"{what} is not JSON ({type(e).__name__})", hint=_HINT_KEYS) from None


def read_metadata(path: Path, what: str):
    """A metadata file as JSON (bounded in size); every failure is a :class:`TrustError`."""
    try:
        if path.stat().st_size > MAX_METADATA:
            raise TrustError(f"{what} is larger than {MAX_METADATA} bytes", hint=_HINT_KEYS)
        return _loads(path.read_text(encoding="utf-8"), what)
    except FileNotFoundError:
        raise TrustError(f"{what} is missing: this package is not signed", hint=_HINT_KEYS) from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrustError(f"cannot read {what} ({type(e).__name__}: {e})", hint=_HINT_KEYS) from None


class TrustPolicy:
    """What a device trusts: a root (provisioned, or rotated from it). See the module docstring for the rules.

    >>> TrustPolicy.from_file  # doctest: +ELLIPSIS
    <bound method TrustPolicy.from_file of <class 'edge_gr.trust.TrustPolicy'>>
    """

    def __init__(self, root: Root):
        self.root = root

    @classmethod
    def from_file(cls, path: str | Path) -> "TrustPolicy":
        """The policy of a provisioned ``root.json`` (as ``edge-gr keys init`` writes it)."""
        return cls(parse_root(Path(path)))

    def rotate(self, newer: Sequence[dict], *, now: datetime.datetime) -> list[Root]:
        """Walk root versions newer than the trusted one (each signed by the previous root's threshold and its own);
        returns the roots adopted, the last one trusted from now on. Versions must follow one another (N, N+1, ...)."""
        adopted = []
        by_version = {}
        for i, doc in enumerate(newer):
            body, _ = _envelope(doc, ROOT_TYPE, f"root metadata #{i} of the package")
            try:
                v = json.loads(body.decode("utf-8")).get("version")
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                raise TrustError(f"root metadata #{i} of the package is not JSON", hint=_HINT_KEYS) from None
            if isinstance(v, int) and v > self.root.version:
                by_version[v] = doc
        while self.root.version + 1 in by_version:
            v = self.root.version + 1
            what = f"root metadata version {v}"
            ids, threshold = self.root.roles["root"]
            verify_envelope(by_version[v], ROOT_TYPE, {k: self.root.keys[k] for k in ids if k in self.root.keys}, threshold,
                            what=f"{what} (signatures of the previous root's keys)")
            new = _self_signed(by_version[v], what)
            if new.version != v:
                raise TrustError(f"{what} says version {new.version}", hint=_HINT_KEYS)
            self.root = new
            adopted.append(new)
        if by_version and max(by_version) > self.root.version:
            raise TrustError(f"the package's root metadata skips from version {self.root.version} to {min(by_version)}",
                             hint="the registry must ship every root version (`edge-gr keys rotate` keeps them)")
        self.root.check_expiry(now)
        return adopted

    def check_release(self, doc: dict, *, installed: str | None, now: datetime.datetime) -> dict:
        """The verified release payload, if the device at ``installed`` may install it (else :class:`TrustError`)."""
        self.root.check_expiry(now)
        keys, threshold = self.root.role_keys("targets")
        rel = verify_envelope(doc, RELEASE_TYPE, keys, threshold, what="the package's release.json")
        try:
            assert rel.get("_type") == "release" and rel.get("spec") == SPEC, f"type {rel.get('_type')!r}"
            version, frm, rollback = rel["version"], rel["from"], rel["rollback"]
            parse_version(version)
            if frm is not None:
                parse_version(frm)
            assert isinstance(rollback, bool), "rollback not a boolean"
            for part in ("update", "manifest"):
                assert isinstance(rel[part]["sha256"], str) and isinstance(rel[part]["size"], int), part
        except (AssertionError, KeyError, TypeError, BundleError) as e:
            raise TrustError(f"the signed release.json is malformed ({type(e).__name__}: {e})", hint=_HINT_KEYS) from None
        expires = _parse_time(rel.get("expires"), "the signed release.json")
        if now >= expires:
            raise TrustError(f"the signed release of {version} expired on {iso(expires)} (replayed or stale metadata)",
                             hint="ask the registry for a fresh package (`edge-gr registry package ... --sign KEYS`)")
        if rollback:
            if installed is None or frm != installed:
                raise TrustError(f"the signed rollback order to {version} is for a device at {frm}, this device has {installed}",
                                 hint=f"ask the registry for a rollback order from {installed} (`--rollback --from {installed}`)")
            if parse_version(version) >= parse_version(installed):
                raise TrustError(f"the rollback order goes from {installed} to {version}, which is not older",
                                 hint="a rollback order must name an older version; newer ones are plain updates")
            return rel
        if installed is not None:
            if parse_version(version) <= parse_version(installed):
                raise TrustError(f"the signed release {version} is not newer than the installed {installed} (downgrade refused)",
                                 hint=f"a rollback needs a signed rollback order: `edge-gr registry package --from {installed} "
                                      f"--to {version} --rollback --sign KEYS`")
            if frm is not None and frm != installed:
                raise TrustError(f"the signed release {version} is for a device at {frm}, this device has {installed}",
                                 hint=f"ask the registry for a package from {installed} (`edge-gr registry package --from "
                                      f"{installed} --to V --sign KEYS`)")
        elif frm is not None:
            raise TrustError(f"the signed release {version} is a delta from {frm}, and this device has no bundle",
                             hint="install a full package (no --from)")
        return rel
