"""Signed bundles: who produced a bundle, and that nothing in it changed since.

A signature is an Ed25519 signature (the ``cryptography`` package) over the bundle's
``manifest.json``, which holds the sha256 and size of every other file: verifying the
signature and then the manifest's checksums (:func:`kit.bundle.verify`) covers every file.
It is stored beside the manifest as ``signature.json``::

    {"format": "kit-bundle-signature/1", "algorithm": "ed25519",
     "public_key": "ssh-ed25519 AAAA...", "fingerprint": "SHA256:...",
     "manifest_sha256": "...", "signed_at": "2026-12-03T15:00:00+00:00",
     "signature": "<base64 of 64 bytes>"}

The signed message is :data:`DOMAIN` followed by the canonical JSON (sorted keys, no spaces)
of every field but ``signature``, so the key, the manifest's digest and the time are all
covered. The private key is never written into a bundle (signing refuses a key that lies
inside the bundle, and a bundle with any file its manifest does not list).

Keys are OpenSSH Ed25519 keys, as ``ssh-keygen -t ed25519`` writes them (or
:func:`generate_key`, ``kit bundle keygen``): people already have them, already exchange
their ``.pub`` lines, and ``ssh-keygen -lf KEY.pub`` prints the same fingerprint as the kit.
A passphrase-protected key is read with ``$KIT_SIGNING_PASSPHRASE`` or a prompt on a terminal.
Trusted keys are a file of ``ssh-ed25519 AAAA... NAME`` lines (like ``authorized_keys``;
blank and ``#`` lines skipped) or a directory of ``*.pub`` files; NAME is who the recipient
says the key belongs to, and is what ``verify`` reports. A bundle never names its own signer.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kit import bundle as bundle_mod, bundle_reader
from kit.bundle_reader import BundleReadError
from kit.errors import KitError

FORMAT = "kit-bundle-signature/1"
DOMAIN = b"kit-bundle-signature/1\n"
PASSPHRASE_ENV = "KIT_SIGNING_PASSPHRASE"
MAX_SIGNATURE_BYTES = 16 << 10
MAX_MANIFEST_BYTES = 64 << 20
MAX_KEY_BYTES = 64 << 10
_FIELDS = ("format", "algorithm", "public_key", "fingerprint", "manifest_sha256", "signed_at")
_ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,15}([+-][0-9]{2}:[0-9]{2}|Z)", re.ASCII)
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


# -- keys -----------------------------------------------------------------------------------------
def public_line(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...``: the OpenSSH one-line form."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it (unpadded base64 of the key blob's sha256)."""
    blob = base64.b64decode(public_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _read_small(path: Path, cap: int, what: str, *, follow: bool = False) -> bytes:
    """A regular file's bytes (never a FIFO or device), at most ``cap``, through the bundle
    reader's opener; through a symbolic link only with ``follow`` (the user's own key files,
    never a bundle's)."""
    try:
        return bundle_reader.read_capped(path, cap, follow_links=follow)
    except BundleReadError as e:
        raise KitError(f"cannot read the {what}: {e.why}", where=str(path), fix=f"name a readable {what} file") from None


def _passphrase(path: Path) -> bytes:
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if sys.stdin.isatty():
        return getpass.getpass(f"passphrase for {path}: ").encode()
    raise KitError("the key is protected by a passphrase", where=str(path),
                   fix=f"set {PASSPHRASE_ENV} or run in a terminal to be asked for it")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from an OpenSSH (``ssh-keygen -t ed25519``) or PKCS#8 PEM file."""
    data = _read_small(path, MAX_KEY_BYTES, "private key", follow=True)
    loader = (serialization.load_ssh_private_key if b"BEGIN OPENSSH PRIVATE KEY" in data
              else serialization.load_pem_private_key)
    try:
        try:
            key = loader(data, None)
        except TypeError:  # encrypted: ask for the passphrase
            key = loader(data, _passphrase(path))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KitError(f"not a usable private key ({e})", where=str(path),
                       fix="name an Ed25519 key from `kit bundle keygen` or `ssh-keygen -t ed25519` "
                           "(check the passphrase)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KitError(f"a {type(key).__name__.removesuffix('PrivateKey') or 'non-Ed25519'} key, not Ed25519",
                       where=str(path), fix="bundles are signed with Ed25519 keys: `ssh-keygen -t ed25519`")
    return key


def generate_key(path: Path, comment: str = "") -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: ``path`` (OpenSSH private key, mode 0600, encrypted with
    ``$KIT_SIGNING_PASSPHRASE`` when set) and ``path.pub``; never replaces an existing file.
    Returns both paths and the key's fingerprint."""
    if any(c in comment for c in "\r\n") or not comment.isprintable():
        raise KitError("the comment has control characters", where="--comment", fix="use one plain line")
    pub_path = path.with_name(path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    phrase = os.environ.get(PASSPHRASE_ENV)
    enc = (serialization.BestAvailableEncryption(phrase.encode()) if phrase else serialization.NoEncryption())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc)
    public = (public_line(key.public_key()) + (f" {comment}" if comment else "") + "\n").encode()
    written: list[Path] = []
    try:
        for target, data, mode in ((path, private, 0o600), (pub_path, public, 0o644)):
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            except FileExistsError:
                raise KitError("already exists", where=str(target), fix="choose another path; keys are never replaced") from None
            except OSError as e:
                raise KitError(f"cannot write ({e.strerror})", where=str(target), fix="choose a writable path") from None
            written.append(target)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return path, pub_path, fingerprint(key.public_key())


@dataclass(frozen=True)
class TrustedKey:
    name: str  # who the recipient says the key is
    fingerprint: str
    key: Ed25519PublicKey
    source: str  # file:line


@dataclass(frozen=True)
class Trust:
    """The keys a recipient trusts, by fingerprint, and where they came from."""
    keys: dict[str, TrustedKey]
    source: str


def _parse_public(line: str, where: str) -> tuple[Ed25519PublicKey, str]:
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise KitError("not a public key line", where=where, fix="write `ssh-ed25519 AAAA... NAME` (a .pub line)")
    if parts[0] != "ssh-ed25519":
        raise KitError(f"a {parts[0][:40]!r} key; only ssh-ed25519 keys are accepted", where=where,
                       fix="list Ed25519 keys (`ssh-keygen -t ed25519`)")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KitError(f"not a valid public key ({e})", where=where, fix="copy the whole .pub line") from None
    assert isinstance(key, Ed25519PublicKey)
    return key, parts[2].strip() if len(parts) > 2 else ""


def load_trusted(path: Path) -> Trust:
    """Trusted keys from a file of ``.pub`` lines or a directory of ``*.pub`` files."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(".pub"))
    elif path.exists():
        files = [path]
    else:
        raise KitError("no such file or directory", where=str(path), fix="name a file of ssh-ed25519 lines or a directory of .pub files")
    keys: dict[str, TrustedKey] = {}
    for f in files:
        try:
            text = _read_small(f, 1 << 20, "trusted keys", follow=True).decode("utf-8")
        except UnicodeDecodeError:
            raise KitError("not UTF-8 text", where=str(f), fix="a trusted-keys file holds ssh-ed25519 lines") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, name = _parse_public(line.strip(), f"{f}:{n}")
            fp = fingerprint(key)
            keys.setdefault(fp, TrustedKey(name=name or f.name, fingerprint=fp, key=key, source=f"{f}:{n}"))
    if not keys:
        raise KitError("no trusted keys found", where=str(path), fix="add `ssh-ed25519 AAAA... NAME` lines (or .pub files)")
    return Trust(keys=keys, source=str(path))


# -- signing and checking ---------------------------------------------------------------------------
def _message(fields: dict[str, str]) -> bytes:
    return DOMAIN + json.dumps({k: fields[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def sign(bundle_dir: Path, key_path: Path) -> "SignatureCheck":
    """Sign a finished, verified bundle with the private key at ``key_path``; write ``signature.json``."""
    if not bundle_dir.is_dir():
        raise KitError("not a directory", where=str(bundle_dir), fix="name a bundle directory written by `kit run`")
    if key_path.resolve().is_relative_to(bundle_dir.resolve()):
        raise KitError("the private key lies inside the bundle", where=str(key_path),
                       fix="keep private keys outside bundles (a bundle is shared)")
    v = bundle_mod.verify(bundle_dir)
    if not v.ok:
        raise KitError(f"not signed: the bundle does not verify ({len(v.problems)} problem(s))", where=str(bundle_dir),
                       fix=f"see `kit bundle verify {bundle_dir}`; only a finished, intact bundle is signed")
    key = load_private_key(key_path)
    manifest = _read_small(bundle_dir / bundle_mod.MANIFEST, MAX_MANIFEST_BYTES, "manifest")
    pub = key.public_key()
    fields = {"format": FORMAT, "algorithm": "ed25519", "public_key": public_line(pub), "fingerprint": fingerprint(pub),
              "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
              "signed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    doc = {**fields, "signature": base64.b64encode(key.sign(_message(fields))).decode()}
    bundle_mod.atomic_write(bundle_dir / bundle_mod.SIGNATURE, json.dumps(doc, indent=2) + "\n")
    return check(bundle_dir)


State = Literal["unsigned", "bad", "valid", "trusted", "untrusted"]


@dataclass(frozen=True)
class SignatureCheck:
    """What ``signature.json`` says: unsigned; bad (malformed, or the manifest changed since);
    valid (the signature matches its own key; no trusted keys given); trusted (by a trusted
    key, ``signer`` is its name); untrusted (valid, but not by a trusted key)."""
    state: State
    fingerprint: str | None = None
    signer: str | None = None
    signed_at: str | None = None
    detail: str = ""
    trust_given: bool = False

    def describe(self) -> str:
        if self.state == "unsigned":
            return "unsigned"
        if self.state == "bad":
            return f"BAD SIGNATURE: {self.detail}"
        if self.state == "trusted":
            return f"signed by {self.signer} ({self.fingerprint}) at {self.signed_at}"
        if self.state == "untrusted":
            return f"signed by an unknown key {self.fingerprint} at {self.signed_at} ({self.detail})"
        return f"signed by key {self.fingerprint} at {self.signed_at} (signer not checked: pass --trusted-keys)"

    def to_json(self) -> dict[str, str | None]:
        """For ``kit bundle verify --json``: state, fingerprint, signer (trusted name), signed_at, detail."""
        return {"state": self.state, "fingerprint": self.fingerprint, "signer": self.signer,
                "signed_at": self.signed_at, "detail": self.detail or None}

    def problem(self, bundle_dir: Path | str) -> str | None:
        """One problem line (naming the file) when this fails verification, else None."""
        where = f"{bundle_dir}/{bundle_mod.SIGNATURE}"
        if self.state == "bad":
            return f"{where}: bad signature: {self.detail}"
        if self.trust_given and self.state == "unsigned":
            return f"{where}: missing: the bundle is unsigned, and trusted keys were given"
        if self.trust_given and self.state == "untrusted":
            return f"{where}: signed by {self.fingerprint}, which is not a trusted key ({self.detail})"
        return None


def _bad(detail: str, **kw) -> SignatureCheck:
    return SignatureCheck(state="bad", detail=detail, **kw)


def check(bundle_dir: Path, trust: Trust | None = None) -> SignatureCheck:
    """Check ``bundle_dir``'s signature against its manifest (and ``trust``, when given).
    The manifest's checksums of the other files are :func:`kit.bundle.verify`'s part."""
    given = trust is not None
    sig_path = bundle_dir / bundle_mod.SIGNATURE
    if not os.path.lexists(sig_path):
        return SignatureCheck(state="unsigned", trust_given=given)
    try:
        raw = _read_small(sig_path, MAX_SIGNATURE_BYTES, "signature")
        manifest = _read_small(bundle_dir / bundle_mod.MANIFEST, MAX_MANIFEST_BYTES, "manifest")
    except KitError as e:
        return _bad(str(e).removeprefix(f"{sig_path}: "), trust_given=given)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _bad("signature.json is not valid JSON", trust_given=given)
    if not isinstance(doc, dict) or set(doc) != {*_FIELDS, "signature"} or \
            not all(isinstance(doc[k], str) and len(doc[k]) <= 200 for k in doc):
        return _bad(f"signature.json must hold exactly the string fields {', '.join((*_FIELDS, 'signature'))}",
                    trust_given=given)
    if doc["format"] != FORMAT or doc["algorithm"] != "ed25519":
        return _bad(f"unknown signature format (expected {FORMAT}, ed25519)", trust_given=given)
    if not _ISO_TIME.fullmatch(doc["signed_at"]) or not _HEX64.fullmatch(doc["manifest_sha256"]):
        return _bad("malformed signed_at or manifest_sha256", trust_given=given)
    try:
        key, _ = _parse_public(doc["public_key"], "public_key")
        sig = base64.b64decode(doc["signature"], validate=True)
    except (KitError, binascii.Error):
        return _bad("malformed public key or signature", trust_given=given)
    fp = fingerprint(key)
    if fp != doc["fingerprint"]:
        return _bad("the fingerprint does not match the public key", trust_given=given)
    kw = {"fingerprint": fp, "signed_at": doc["signed_at"], "trust_given": given}
    if hashlib.sha256(manifest).hexdigest() != doc["manifest_sha256"]:
        return _bad("manifest.json changed after the bundle was signed", **kw)
    try:
        key.verify(sig, _message(doc))
    except InvalidSignature:
        return _bad("the signature does not match (signature.json was altered or forged)", **kw)
    if trust is None:
        return SignatureCheck(state="valid", **kw)
    known = trust.keys.get(fp)
    if known is None:
        return SignatureCheck(state="untrusted", detail=f"not in {trust.source}", **kw)
    return SignatureCheck(state="trusted", signer=known.name, **kw)
