"""The registry's signing keys: generation, rotation, and signing of update packages (``edge-gr keys ...``).

A key folder (never inside a git work tree: :func:`init_keys` refuses one)::

    KEYS/
      root.key            Ed25519 private key of the root role (PEM, PKCS#8, mode 0600; encrypted with
                          $EDGE_GR_KEY_PASSPHRASE when it is set). Keep it offline: it only signs root metadata.
      targets.key         the online key that signs each package's release.json
      root.json           the newest root metadata (DSSE envelope): what devices are provisioned with
      roots/N.root.json   every root version (packages carry them so devices walk rotations 1 -> 2 -> ...)
      retired/            keys replaced by `rotate`, kept until their roots have expired

The device side (verification, version rules) is :mod:`edge_gr.trust`; this module only signs.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "keys"
>>> init_keys(d).version, rotate(d, "targets").version
(1, 2)
>>> sorted(p.name for p in (d / "roots").iterdir())
['1.root.json', '2.root.json']
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from edge_gr.errors import EdgeGRError
from edge_gr.fsutil import git_work_tree
from edge_gr.trust import RELEASE_TYPE, ROOT_TYPE, SPEC, Root, iso, keyid, parse_root, public_raw, root_payload, sign_envelope

__all__ = ["KeyFolderError", "init_keys", "rotate", "Signer", "show", "release_payload", "PASSPHRASE_ENV"]

PASSPHRASE_ENV = "EDGE_GR_KEY_PASSPHRASE"
ROLES = ("root", "targets")


class KeyFolderError(EdgeGRError):
    """A key folder is missing, incomplete or unreadable ."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    pw = os.environ.get(PASSPHRASE_ENV)
    enc = serialization.BestAvailableEncryption(pw.encode()) if pw else serialization.NoEncryption()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pw = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=pw.encode() if pw else None)
    except FileNotFoundError:
        raise KeyFolderError(f"{path} does not exist", hint="create the key folder with `edge-gr keys init --dir DIR`") from None
    except (TypeError, ValueError) as e:
        raise KeyFolderError(f"cannot read the private key {path} ({e})",
                        hint=f"set ${PASSPHRASE_ENV} to the passphrase it was written with (or unset it for an unencrypted key)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFolderError(f"{path} is not an Ed25519 key", hint="create keys with `edge-gr keys init`")
    return key


def _new_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _write_root(folder: Path, env: dict) -> Root:
    root = parse_root(env)
    (folder / "roots").mkdir(exist_ok=True)
    text = json.dumps(env, indent=1)
    for path in (folder / "roots" / f"{root.version}.root.json", folder / "root.json"):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return root


def init_keys(folder: str | os.PathLike, *, expires_days: int = 365, allow_in_repo: bool = False) -> Root:
    """Create a root key, a targets key and root metadata version 1 in a new ``folder``; returns the root."""
    folder = Path(folder).absolute()
    if (folder / "root.json").exists() or (folder.exists() and any(folder.iterdir())):
        raise KeyFolderError(f"{folder} already holds files; init would overwrite keys",
                        hint="pick a new folder, or `edge-gr keys rotate --dir` to replace a key")
    repo = git_work_tree(folder)
    if repo is not None and not allow_in_repo:
        raise KeyFolderError(f"{folder} is inside the git work tree {repo}: private keys must never be committed",
                        hint="keep keys outside any repository (e.g. ~/.edge-gr/keys or a hardware token's mount)")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    keys = {role: _new_key() for role in ROLES}
    for role, k in keys.items():
        _write_private(folder / f"{role}.key", k)
    payload = root_payload(1, {r: [k] for r, k in keys.items()}, expires=_now() + datetime.timedelta(days=expires_days))
    return _write_root(folder, sign_envelope(ROOT_TYPE, payload, [keys["root"]]))


def _current(folder: Path, roles: tuple[str, ...] = ROLES) -> tuple[Root, dict]:
    """root.json and the private keys of ``roles`` (signing a release needs only the online targets key)."""
    try:
        root = parse_root(folder / "root.json")
    except EdgeGRError as e:
        raise KeyFolderError(f"{folder} has no valid root.json ({e.message})", hint="create it with `edge-gr keys init --dir DIR`") from None
    keys = {role: _read_private(folder / f"{role}.key") for role in roles}
    return root, keys


def rotate(folder: str | os.PathLike, role: str, *, expires_days: int = 365) -> Root:
    """Replace the key of ``role`` (``root`` or ``targets``) and write root metadata version N+1, signed by the old
    root key and (for a root rotation) the new one; the old key moves to ``retired/``. Returns the new root."""
    if role not in ROLES:
        raise KeyFolderError(f"no role {role!r}", hint=f"rotate one of {', '.join(ROLES)}")
    folder = Path(folder)
    root, keys = _current(folder)
    new = dict(keys)
    new[role] = _new_key()
    payload = root_payload(root.version + 1, {r: [k] for r, k in new.items()},
                           expires=_now() + datetime.timedelta(days=expires_days))
    signers = [keys["root"]] + ([new["root"]] if role == "root" else [])
    env = sign_envelope(ROOT_TYPE, payload, signers)
    (folder / "retired").mkdir(exist_ok=True)
    shutil.copy2(folder / f"{role}.key", folder / "retired" / f"{role}.v{root.version}.key")
    _write_private(folder / f"{role}.key", new[role])
    return _write_root(folder, env)


def show(folder: str | os.PathLike) -> dict:
    """What ``root.json`` says: version, expiry, key ids per role (no private material)."""
    root = parse_root(Path(folder) / "root.json")
    return {"version": root.version, "expires": iso(root.expires),
            "roles": {r: {"keyids": list(ids), "threshold": t} for r, (ids, t) in root.roles.items()}}


def release_payload(*, to: str, frm: str | None, update: dict, manifest: dict, expires_days: float, rollback: bool,
                    root_version: int) -> dict:
    """The ``signed`` part of a package's release.json (see :mod:`edge_gr.trust`)."""
    now = _now()
    return {"_type": "release", "spec": SPEC, "version": to, "from": frm, "rollback": bool(rollback), "issued": iso(now),
            "expires": iso(now + datetime.timedelta(days=expires_days)), "update": dict(update), "manifest": dict(manifest),
            "root_version": root_version}


class Signer:
    """Signs update packages with a key folder's targets key; ``Registry.bundle_package(..., signer=Signer(DIR))``."""

    def __init__(self, folder: str | os.PathLike, *, expires_days: float = 30.0):
        self.folder = Path(folder)
        self.root, keys = _current(self.folder, ("targets",))  # the root key may stay offline
        self._targets = keys["targets"]
        self.expires_days = expires_days
        kid = keyid(public_raw(self._targets))
        if kid not in self.root.roles["targets"][0]:
            raise KeyFolderError(f"{self.folder / 'targets.key'} is not the targets key root.json names",
                            hint="restore the key that matches root.json, or `edge-gr keys rotate --role targets`")

    def roots(self) -> list[Path]:
        """Every root version's file (what a package carries)."""
        return sorted((self.folder / "roots").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))

    def sign_release(self, *, to: str, frm: str | None, update: dict, manifest: dict, rollback: bool = False) -> dict:
        payload = release_payload(to=to, frm=frm, update=update, manifest=manifest, expires_days=self.expires_days,
                                  rollback=rollback, root_version=self.root.version)
        return sign_envelope(RELEASE_TYPE, payload, [self._targets])
