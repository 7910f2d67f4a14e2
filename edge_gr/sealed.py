"""Encrypted model files at rest ("sealed" bundle files): AES-256-GCM with a data key from a :class:`KeyProvider`.

What is encrypted: every file of a variant (the graphs and their weights: ``encoder.onnx``,
``decoder.onnx``, ``step.onnx``, ``weights.bin``, ``model.pte``, ``model.tflite``, ``*.pt2``), when the
bundle is exported with ``encrypt=`` (``edge-gr export --encrypt-key FILE``). The shared files stay
clear: ``ids.json``, ``index.safetensors``, ``catalogue.jsonl``, ``tokenizer.json``, ``popularity.json``
(the device reads them before any model runs, and the catalogue is the app's own data), and the
manifest. A sealed ONNX fp32 variant has no ``weights.json`` (it is not weight-bound: a weights file
the device cannot decrypt-edit-encrypt is not rebuilt from deltas; updates ship it whole).

Each sealed file is ``AESGCM(key).encrypt(nonce, plaintext, aad)`` (ciphertext + 16-byte tag) with

* a 256-bit data key, named by a key id (``new_key`` writes one; the id is not secret),
* a fresh random 96-bit nonce per file (the manifest records it),
* associated data ``b"edge-gr-sealed/1\\0" + <path in the bundle> + b"\\0" + <key id>``, so a
  ciphertext moved to another path of the bundle, or relabelled with another key id, fails its tag.

The manifest entry of a sealed file holds the *ciphertext's* sha256 and size (the bundle's usual
integrity check runs first, on what is on disk) plus ``"sealed": {"alg": "AES-256-GCM", "key_id",
"nonce"}``. The device decrypts into memory (:func:`unseal_entry`) and hands the bytes to the
backend: no plaintext model file is written on the device. A missing key, a wrong key or an
altered ciphertext is a :class:`~edge_gr.errors.SealedError` (:class:`~edge_gr.errors.MissingKeyError`)
saying what to do, never a bare ``InvalidTag``.

Key files are one line, ``edge-gr-data-key 1 <key id> <base64 key>``, mode 0600; the same line
(several joined by ``;``) can be the value of an environment variable (:class:`EnvKeyProvider`).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> k = new_key(d / "data.key", key_id="demo-1")
>>> oct((d / "data.key").stat().st_mode & 0o777)
'0o600'
>>> ct, info = seal(b"model bytes", k, "variants/x/model.pte")
>>> info["alg"], info["key_id"], len(ct)
('AES-256-GCM', 'demo-1', 27)
>>> unseal(ct, info, "variants/x/model.pte", FileKeyProvider(d / "data.key"))
b'model bytes'
>>> try:
...     unseal(ct, info, "variants/y/model.pte", k)        # the same bytes at another path: refused
... except SealedError as e:
...     print(e.message)
variants/y/model.pte cannot be decrypted with data key 'demo-1': wrong key, or the file was altered or moved
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

from .errors import InputError, MissingKeyError, SealedError
from .fsutil import git_work_tree

__all__ = ["KeyProvider", "DataKey", "FileKeyProvider", "EnvKeyProvider", "new_key", "load_key", "seal", "unseal", "seal_file",
           "unseal_entry", "data_key", "aad", "ALGORITHM", "KEY_BYTES", "NONCE_BYTES", "KEY_FORMAT", "KEY_ENV"]

ALGORITHM = "AES-256-GCM"
KEY_BYTES = 32     # 256-bit data keys
NONCE_BYTES = 12   # 96-bit nonces, fresh (random) for every file
KEY_FORMAT = "edge-gr-data-key"
KEY_FORMAT_VERSION = 1
KEY_ENV = "EDGE_GR_DATA_KEY"  # EnvKeyProvider's default variable
_AAD_TAG = b"edge-gr-sealed/1\0"
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LOAD_HINT = ("pass key_provider= to edge_gr.load, e.g. edge_gr.sealed.FileKeyProvider('data.key') or "
              f"EnvKeyProvider() with ${KEY_ENV} set, holding the key the bundle was exported with")


@runtime_checkable
class KeyProvider(Protocol):
    """Where the device gets data keys: ``key(key_id)`` returns the 32-byte key, or raises :class:`MissingKeyError`."""

    def key(self, key_id: str) -> bytes: ...


@dataclass(frozen=True)
class DataKey:
    """One data key and its id. It is also a :class:`KeyProvider` holding only itself; its repr hides the key."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self):
        _check_id(self.key_id)
        _check_secret(self.secret, f"data key {self.key_id!r}")

    def key(self, key_id: str) -> bytes:
        if key_id != self.key_id:
            raise MissingKeyError(f"the bundle needs data key {key_id!r}; the key given is {self.key_id!r}", hint=_LOAD_HINT)
        return self.secret

    def line(self) -> str:
        """The key as one text line (the key file's content, an :class:`EnvKeyProvider` value)."""
        return f"{KEY_FORMAT} {KEY_FORMAT_VERSION} {self.key_id} {base64.b64encode(self.secret).decode()}"


class FileKeyProvider:
    """Keys from key files (``new_key``'s format); a folder given stands for its ``*.key`` files. Read at each call."""

    def __init__(self, *paths: str | os.PathLike):
        if not paths:
            raise InputError("FileKeyProvider needs at least one key file or folder", hint="pass the data key file, e.g. data.key")
        self.paths = [Path(p) for p in paths]

    def keys(self) -> dict[str, DataKey]:
        out: dict[str, DataKey] = {}
        for p in self.paths:
            for f in (sorted(p.glob("*.key")) if p.is_dir() else [p]):
                k = load_key(f)
                out.setdefault(k.key_id, k)
        return out

    def key(self, key_id: str) -> bytes:
        keys = self.keys()
        if key_id not in keys:
            raise MissingKeyError(f"the bundle needs data key {key_id!r}, which none of {[str(p) for p in self.paths]} holds "
                                  f"(they hold {sorted(keys) or 'none'})", hint=_LOAD_HINT)
        return keys[key_id].secret

    def __repr__(self) -> str:
        return f"FileKeyProvider({', '.join(repr(str(p)) for p in self.paths)})"


class EnvKeyProvider:
    """Keys from an environment variable (default ``$EDGE_GR_DATA_KEY``) holding key lines joined by ``;``. Read at each call."""

    def __init__(self, var: str = KEY_ENV):
        self.var = var

    def key(self, key_id: str) -> bytes:
        raw = os.environ.get(self.var)
        if not raw:
            raise MissingKeyError(f"the bundle needs data key {key_id!r} and ${self.var} is not set", hint=_LOAD_HINT)
        keys = {}
        for n, part in enumerate(p for p in re.split(r"[;\n]", raw) if p.strip()):
            k = _parse_line(part, f"${self.var} (key {n + 1})")
            keys.setdefault(k.key_id, k)
        if key_id not in keys:
            raise MissingKeyError(f"the bundle needs data key {key_id!r}; ${self.var} holds {sorted(keys)}", hint=_LOAD_HINT)
        return keys[key_id].secret

    def __repr__(self) -> str:
        return f"EnvKeyProvider({self.var!r})"


def _check_id(key_id) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise InputError(f"bad data key id {key_id!r}", hint="use 1-64 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit)")


def _check_secret(secret, what: str) -> None:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != KEY_BYTES:
        n = len(secret) if isinstance(secret, (bytes, bytearray)) else type(secret).__name__
        raise SealedError(f"{what} is not a {KEY_BYTES * 8}-bit key (got {n} {'bytes' if isinstance(n, int) else ''})".rstrip(),
                          hint="make one with edge_gr.sealed.new_key(path)")


def _parse_line(text: str, where: str) -> DataKey:
    parts = text.split()
    if len(parts) != 4 or parts[0] != KEY_FORMAT:
        raise SealedError(f"{where} is not an {KEY_FORMAT} line", hint="make a key with edge_gr.sealed.new_key(path)")
    if parts[1] != str(KEY_FORMAT_VERSION):
        raise SealedError(f"{where} is an {KEY_FORMAT} of version {parts[1]!r}; this edge-gr reads version {KEY_FORMAT_VERSION}",
                          hint="update edge-gr, or make a key with this version's edge_gr.sealed.new_key")
    try:
        secret = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        raise SealedError(f"{where}: the key is not base64", hint="copy the key file again (it was damaged)") from None
    try:
        return DataKey(parts[2], secret)
    except InputError as e:
        raise SealedError(f"{where}: {e.message}", hint="copy the key file again (it was damaged)") from None
    except SealedError as e:
        raise SealedError(f"{where}: {e.message}", hint="copy the key file again (it was damaged)") from None


def load_key(path: str | os.PathLike) -> DataKey:
    """Read a key file written by :func:`new_key` (:class:`MissingKeyError` if it is not there)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise MissingKeyError(f"no data key file at {p}", hint="check the path, or make one with edge_gr.sealed.new_key(path)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SealedError(f"data key file {p} cannot be read ({getattr(e, 'strerror', None) or e})",
                          hint="check the file's permissions, or copy it again") from None
    return _parse_line(text.strip(), f"data key file {p}")


def new_key(path: str | os.PathLike, key_id: str | None = None) -> DataKey:
    """Make a fresh 256-bit data key and write it to ``path`` (mode 0600, created exclusively: never overwrites).

    ``key_id`` defaults to ``dk-`` + 16 hex digits of a hash of the key (it names the key in manifests; not secret).
    Refuses a path inside a git work tree (a key must never be committed)."""
    p = Path(path)
    repo = git_work_tree(p.resolve().parent)
    if repo is not None:
        raise InputError(f"{p} is inside the git work tree {repo}: a data key must never be committed",
                         hint="write it outside any repository (e.g. ~/.config/edge-gr/data.key) or in a secret store")
    secret = secrets.token_bytes(KEY_BYTES)
    k = DataKey(key_id or "dk-" + hashlib.sha256(b"edge-gr data key id\0" + secret).hexdigest()[:16], secret)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{p} exists; a data key is never overwritten (bundles sealed with it would be lost)",
                         hint="choose another path, or move the old key away yourself") from None
    except OSError as e:
        raise InputError(f"cannot create {p} ({e.strerror or e})", hint="check that its folder exists and is writable") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(k.line() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return k


def data_key(encrypt) -> DataKey:
    """What ``export_bundle(encrypt=...)`` takes, as a :class:`DataKey`: a DataKey, a key file path, or ``(KeyProvider, key_id)``."""
    if isinstance(encrypt, DataKey):
        return encrypt
    if isinstance(encrypt, (str, os.PathLike)):
        return load_key(encrypt)
    if isinstance(encrypt, tuple) and len(encrypt) == 2 and isinstance(encrypt[1], str):
        provider, key_id = encrypt
        return DataKey(key_id, provider.key(key_id))
    raise InputError(f"encrypt= takes a DataKey, a key file path or (KeyProvider, key_id), not {type(encrypt).__name__}",
                     hint="e.g. encrypt=edge_gr.sealed.load_key('data.key')")


def aad(path: str, key_id: str) -> bytes:
    """The associated data of a sealed file: binds its ciphertext to its path in the bundle and its key id."""
    return _AAD_TAG + path.encode("utf-8") + b"\0" + key_id.encode("utf-8")


def _aesgcm(secret: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as e:  # a SealedError, not BackendUnavailableError: load(backend="auto") must not try the next backend
        raise SealedError(f"encrypted bundle files need the `cryptography` package ({e})",
                          hint="`pip install cryptography==50.0.2` (it is in edge-gr[device])") from None
    return AESGCM(bytes(secret))


def seal(data: bytes, key: DataKey, path: str) -> tuple[bytes, dict]:
    """Encrypt ``data`` that will live at ``path`` (POSIX, relative to the bundle root); returns (ciphertext+tag, manifest info)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    ct = _aesgcm(key.secret).encrypt(nonce, bytes(data), aad(path, key.key_id))
    return ct, {"alg": ALGORITHM, "key_id": key.key_id, "nonce": nonce.hex()}


def unseal(data: bytes, info: Mapping, path: str, keys: KeyProvider | None) -> bytes:
    """Decrypt and authenticate the sealed file at ``path`` (``info``: its manifest ``sealed`` record) with a key of ``keys``."""
    alg, key_id, nonce = info.get("alg"), info.get("key_id"), info.get("nonce")
    if alg != ALGORITHM:
        raise SealedError(f"{path} is encrypted with {alg!r}; this edge-gr opens {ALGORITHM} only",
                          hint="update edge-gr on the device, or re-export the bundle with this version")
    if keys is None:
        raise MissingKeyError(f"{path} is encrypted ({ALGORITHM}, data key {key_id!r}) and no key provider was given", hint=_LOAD_HINT)
    try:
        nonce_b = bytes.fromhex(nonce)
        assert len(nonce_b) == NONCE_BYTES
    except (TypeError, ValueError, AssertionError):
        raise SealedError(f"manifest.json: the nonce of {path} is not {NONCE_BYTES} bytes of hex",
                          hint="re-export the bundle with `edge-gr export --encrypt-key FILE`") from None
    try:
        secret = keys.key(key_id)
    except SealedError:
        raise
    except (KeyError, LookupError):
        raise MissingKeyError(f"{path} needs data key {key_id!r}, which the key provider {keys!r} does not have",
                              hint=_LOAD_HINT) from None
    if secret is None:
        raise MissingKeyError(f"{path} needs data key {key_id!r}, which the key provider {keys!r} does not have", hint=_LOAD_HINT)
    _check_secret(secret, f"the key provider's data key {key_id!r}")
    from cryptography.exceptions import InvalidTag

    try:
        return _aesgcm(secret).decrypt(nonce_b, bytes(data), aad(path, key_id))
    except InvalidTag:
        raise SealedError(f"{path} cannot be decrypted with data key {key_id!r}: wrong key, or the file was altered or moved",
                          hint="check that the key provider holds the key this bundle was exported with; "
                               "if it does, copy the whole bundle again or re-export it") from None


def seal_file(root: str | os.PathLike, rel: str, key: DataKey) -> dict:
    """Encrypt ``root/rel`` in place (ciphertext to a temp file, then renamed over it); returns the manifest info.

    Meant for the export side: the exporter wrote the plaintext file there a moment before."""
    p = Path(root) / rel
    ct, info = seal(p.read_bytes(), key, rel)
    tmp = p.with_name(f".{p.name}.sealing")
    tmp.write_bytes(ct)
    os.replace(tmp, p)
    return info


def unseal_entry(root: str | os.PathLike, entry, keys: KeyProvider | None) -> bytes:
    """The plaintext of a sealed manifest entry (a :class:`~edge_gr.bundle.FileEntry` with ``sealed``), read from ``root``.

    Verify the entry (size, sha256 of the ciphertext) first, as :func:`edge_gr.load` does."""
    info = entry.sealed if isinstance(entry.sealed, Mapping) else vars(entry.sealed)
    p = Path(root) / entry.path
    try:
        data = p.read_bytes()
    except OSError as e:
        from .errors import BundleError

        raise BundleError(f"{entry.path} of the bundle {root} cannot be read ({e.strerror or e})",
                          hint="copy the whole bundle again") from None
    return unseal(data, info, entry.path, keys)
