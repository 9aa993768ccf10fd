"""Signed bundles: `kit bundle keygen|sign`, and `verify`/`import --trusted-keys` telling who
signed a bundle and that nothing changed since. The signature survives pack and import; a
change to any file after signing fails verification; a private key never enters a bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import kit_cli
from kit import bundle as bundle_mod, signing
from kit.errors import KitError
from kit.results import VerificationFailed, archive
from synthetic_bundle import make_bundle


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    alice, alice_pub, alice_fp = signing.generate_key(tmp_path / "keys" / "alice", "alice@lab")
    mallory, mallory_pub, _ = signing.generate_key(tmp_path / "keys" / "mallory", "alice@lab")
    trusted = tmp_path / "trusted_keys"
    trusted.write_text(f"# people whose bundles we accept\n\n{alice_pub.read_text().split(' alice@lab')[0]} Alice Example\n")
    return {"alice": alice, "alice_fp": alice_fp, "mallory": mallory, "trusted": trusted}


@pytest.fixture
def signed(tmp_path, keys) -> Path:
    b = make_bundle(tmp_path / "res")
    signing.sign(b, keys["alice"])
    return b


def trust(keys) -> signing.Trust:
    return signing.load_trusted(keys["trusted"])


# -- the command line ------------------------------------------------------------------------------
def test_keygen_sign_verify_with_trusted_keys(tmp_path):
    key = tmp_path / "k" / "me"
    key.parent.mkdir()
    proc = kit_cli("bundle", "keygen", str(key), "--comment", "me@lab", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (key.stat().st_mode & 0o777) == 0o600 and key.with_suffix(".pub").read_text().endswith(" me@lab\n")
    assert kit_cli("bundle", "keygen", str(key), timeout=120).returncode == 2  # never replaced
    b = make_bundle(tmp_path / "res")
    proc = kit_cli("bundle", "sign", str(b), "--key", str(key), timeout=120)
    assert proc.returncode == 0 and "signed:" in proc.stdout, proc.stderr
    fp = signing.check(b).fingerprint

    proc = kit_cli("bundle", "verify", str(b), timeout=120)
    assert proc.returncode == 0 and f"signed by key {fp}" in proc.stdout and "signer not checked" in proc.stdout
    trusted = tmp_path / "trusted"
    trusted.write_text(key.with_suffix(".pub").read_text().replace("me@lab", "Me Myself"))
    proc = kit_cli("bundle", "verify", str(b), "--trusted-keys", str(trusted), timeout=120)
    assert proc.returncode == 0 and f"signed by Me Myself ({fp})" in proc.stdout, proc.stderr
    proc = kit_cli("bundle", "verify", str(b), env={"KIT_TRUSTED_KEYS": str(trusted)}, timeout=120)
    assert proc.returncode == 0 and "signed by Me Myself" in proc.stdout
    js = json.loads(kit_cli("bundle", "verify", str(b), "--trusted-keys", str(trusted), "--json", timeout=120).stdout)
    sig = js["bundles"][0]["signature"]
    assert js["ok"] and sig["state"] == "trusted" and sig["signer"] == "Me Myself" and sig["fingerprint"] == fp


def test_unsigned_bundle(tmp_path, keys):
    b = make_bundle(tmp_path / "res")
    proc = kit_cli("bundle", "verify", str(b), timeout=120)
    assert proc.returncode == 0 and "(ok; unsigned)" in proc.stdout
    proc = kit_cli("bundle", "verify", str(b), "--trusted-keys", str(keys["trusted"]), timeout=120)
    assert proc.returncode == 1 and "the bundle is unsigned, and trusted keys were given" in proc.stderr


def test_unknown_key_is_not_trusted(tmp_path, keys):
    b = make_bundle(tmp_path / "res")
    signing.sign(b, keys["mallory"])  # same comment as Alice's key: a bundle cannot claim a name
    assert signing.check(b).state == "valid"
    proc = kit_cli("bundle", "verify", str(b), "--trusted-keys", str(keys["trusted"]), timeout=120)
    assert proc.returncode == 1 and "which is not a trusted key" in proc.stderr and "Alice" not in proc.stdout


def test_trusted_keys_directory(tmp_path, keys, signed):
    d = tmp_path / "trusted.d"
    d.mkdir()
    (d / "alice.pub").symlink_to(keys["alice"].with_name("alice.pub"))  # the user's own files may be links
    (d / "README").write_text("not a key, not read\n")
    c = signing.check(signed, signing.load_trusted(d))
    assert c.state == "trusted" and c.signer == "alice@lab"


@pytest.mark.parametrize("content,why", [
    ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ bob\n", "only ssh-ed25519 keys"),
    ("ssh-ed25519 notbase64!! bob\n", "not a valid public key"),
    ("# only comments\n", "no trusted keys found"),
    ("justoneword\n", "not a public key line"),
])
def test_bad_trusted_keys_file_is_one_line_exit_2(tmp_path, signed, content, why):
    f = tmp_path / "trusted"
    f.write_text(content)
    proc = kit_cli("bundle", "verify", str(signed), "--trusted-keys", str(f), timeout=120)
    assert proc.returncode == 2 and why in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert str(f) in proc.stderr


# -- any change after signing ------------------------------------------------------------------------
def _all_files(b: Path) -> list[str]:
    return sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()
                  and p.name != bundle_mod.SIGNATURE)


def test_every_file_is_covered(tmp_path, keys):
    """Change any one file (or change it and re-stamp the manifest to match): verify fails."""
    base = make_bundle(tmp_path / "base")
    signing.sign(base, keys["alice"])
    names = _all_files(base)
    assert "manifest.json" in names and "logs/launcher.log" in names
    for i, rel in enumerate(names):
        for restamp in (False, True):
            b = Path(shutil.copytree(base, tmp_path / f"c{i}{restamp:d}" / base.name))
            with (b / rel).open("ab") as f:
                f.write(b" ")
            if restamp and rel != "manifest.json":  # what a forger would do: make the checksums match again
                m = bundle_mod.read_manifest(b)
                bundle_mod.Bundle(path=b, manifest=m).finalize(m.status, m.reason)
            v, sig = archive.verify_signed(b, trust(keys))
            assert not v.ok, (rel, restamp)
            if restamp or rel == "manifest.json":
                assert sig.state == "bad" and "manifest.json changed after the bundle was signed" in sig.detail


def test_added_and_removed_files_fail(signed, keys):
    (signed / "logs" / "extra.log").write_text("added later\n")
    v, sig = archive.verify_signed(signed, trust(keys))
    assert sig.state == "trusted" and any("not listed in the manifest" in p for p in v.problems)
    (signed / "logs" / "extra.log").unlink()
    (signed / "metrics.json").unlink()
    v, _ = archive.verify_signed(signed, trust(keys))
    assert any("listed in the manifest but missing" in p for p in v.problems)


def _edit_signature(b: Path, **changes) -> None:
    doc = json.loads((b / bundle_mod.SIGNATURE).read_text())
    doc.update(changes)
    (b / bundle_mod.SIGNATURE).write_text(json.dumps(doc))


def test_forged_signature_files(signed, keys, tmp_path):
    doc = json.loads((signed / bundle_mod.SIGNATURE).read_text())
    other = make_bundle(tmp_path / "other")
    signing.sign(other, keys["mallory"])
    mallory = json.loads((other / bundle_mod.SIGNATURE).read_text())
    cases = {
        "later signed_at": ({"signed_at": "2030-01-01T00:00:00+00:00"}, "does not match"),
        "swapped key": ({"public_key": mallory["public_key"], "fingerprint": mallory["fingerprint"]}, "does not match"),
        "claimed fingerprint": ({"fingerprint": keys["alice_fp"], "public_key": mallory["public_key"]}, "fingerprint"),
        "signature of another bundle": ({k: mallory[k] for k in mallory}, "manifest.json changed"),
        "extra field": ({"signer": "Alice"}, "exactly the string fields"),
        "not a string": ({"signature": 5}, "exactly the string fields"),
        "bad base64": ({"signature": "@@@"}, "malformed"),
        "other algorithm": ({"algorithm": "rsa"}, "unknown signature format"),
    }
    for name, (changes, why) in cases.items():
        (signed / bundle_mod.SIGNATURE).write_text(json.dumps(doc))
        _edit_signature(signed, **changes)
        c = signing.check(signed, trust(keys))
        assert c.state == "bad" and why in c.detail, (name, c)
        assert archive.verify_signed(signed)[1].state == "bad"  # bad with or without trusted keys
    (signed / bundle_mod.SIGNATURE).write_text("[" * 100_000)
    assert signing.check(signed).state == "bad"


def test_signature_file_that_is_a_link_or_fifo_is_not_followed(signed, tmp_path):
    real = tmp_path / "elsewhere.json"
    shutil.move(signed / bundle_mod.SIGNATURE, real)
    (signed / bundle_mod.SIGNATURE).symlink_to(real)
    c = signing.check(signed)
    assert c.state == "bad" and "cannot read" in c.detail
    (signed / bundle_mod.SIGNATURE).unlink()
    os.mkfifo(signed / bundle_mod.SIGNATURE)
    c = signing.check(signed)  # returns (a FIFO is opened non-blocking, then refused)
    assert c.state == "bad" and "not a regular file" in c.detail


# -- pack and import ----------------------------------------------------------------------------------
def test_signature_survives_pack_and_import(signed, keys, tmp_path):
    arc = archive.pack(signed, tmp_path)
    with tarfile.open(arc) as t:
        assert f"{signed.name}/{bundle_mod.SIGNATURE}" in t.getnames()
    v, sig = archive.verify_archive(arc, trust=trust(keys))
    assert v.ok and sig.state == "trusted" and sig.signer == "Alice Example"
    proc = kit_cli("bundle", "import", str(arc), "--into", str(tmp_path / "in"),
                   "--trusted-keys", str(keys["trusted"]), timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = tmp_path / "in" / signed.name
    assert (imported / bundle_mod.SIGNATURE).read_bytes() == (signed / bundle_mod.SIGNATURE).read_bytes()
    proc = kit_cli("bundle", "verify", str(imported), "--trusted-keys", str(keys["trusted"]), timeout=120)
    assert proc.returncode == 0 and "signed by Alice Example" in proc.stdout
    # and packed again from the imported copy
    again = archive.pack(imported, tmp_path / "again")
    assert archive.verify_archive(again, trust=trust(keys))[1].state == "trusted"


def test_import_refuses_bad_and_untrusted_signatures(signed, keys, tmp_path):
    arc = archive.pack(signed, tmp_path)
    unsigned = archive.pack(make_bundle(tmp_path / "u"), tmp_path)
    with pytest.raises(VerificationFailed) as e:
        archive.import_archive(unsigned, tmp_path / "in", trust=trust(keys))
    assert "unsigned" in e.value.problems[0]
    assert archive.import_archive(unsigned, tmp_path / "in")  # no trusted keys asked for: imported
    other = tmp_path / "other"
    other.write_text(keys["mallory"].with_name("mallory.pub").read_text())
    with pytest.raises(VerificationFailed, match="does not verify") as e:
        archive.import_archive(arc, tmp_path / "in2", trust=signing.load_trusted(other))
    assert "not a trusted key" in e.value.problems[0] and not (tmp_path / "in2" / signed.name).exists()
    # a re-stamped bundle inside the archive: refused even without trusted keys
    forged = Path(shutil.copytree(signed, tmp_path / "forged" / signed.name))
    (forged / "metrics.json").write_text('{"summary": {"sec_per_iter": 0.001}, "iterations": []}\n')
    m = bundle_mod.read_manifest(forged)
    bundle_mod.Bundle(path=forged, manifest=m).finalize(m.status)
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        archive.pack(forged, tmp_path / "out2")
    bad_arc = tmp_path / "forged.tar.gz"
    with tarfile.open(bad_arc, "w:gz") as t:
        t.add(forged, arcname=forged.name)
    with pytest.raises(VerificationFailed) as e:
        archive.import_archive(bad_arc, tmp_path / "in3")
    assert "manifest.json changed after the bundle was signed" in e.value.problems[0]


# -- keys -------------------------------------------------------------------------------------------------
def test_private_key_never_enters_a_bundle(tmp_path, keys):
    b = make_bundle(tmp_path / "res")
    inside = b / "logs" / "key"
    shutil.copy(keys["alice"], inside)
    with pytest.raises(KitError, match="private key lies inside the bundle"):
        signing.sign(b, inside)
    inside.unlink()
    signing.sign(b, keys["alice"])
    secret = keys["alice"].read_bytes()
    body = b"".join(secret.splitlines()[1:-1])
    arc = archive.pack(b, tmp_path)
    import gzip
    raw = gzip.decompress(arc.read_bytes())
    assert body[:40] not in raw and b"PRIVATE KEY" not in raw
    assert set(json.loads((b / bundle_mod.SIGNATURE).read_text())) == {
        "format", "algorithm", "public_key", "fingerprint", "manifest_sha256", "signed_at", "signature"}


def test_sign_refuses_a_bundle_that_does_not_verify(tmp_path, keys):
    b = make_bundle(tmp_path / "res")
    (b / "metrics.json").write_text("{}")
    proc = kit_cli("bundle", "sign", str(b), "--key", str(keys["alice"]), timeout=120)
    assert proc.returncode == 2 and "does not verify" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (b / bundle_mod.SIGNATURE).exists()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_openssh_keys_from_ssh_keygen(tmp_path):
    """Keys made by ssh-keygen sign bundles (with a passphrase too); fingerprints agree with ssh-keygen -l."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-C", "carol@site", "-f", str(key)],
                   check=True)
    b = make_bundle(tmp_path / "res")
    proc = kit_cli("bundle", "sign", str(b), "--key", str(key), timeout=120)
    assert proc.returncode == 2 and "KIT_SIGNING_PASSPHRASE" in proc.stderr  # no terminal to ask on
    proc = kit_cli("bundle", "sign", str(b), "--key", str(key), env={"KIT_SIGNING_PASSPHRASE": "wrong"}, timeout=120)
    assert proc.returncode == 2 and "check the passphrase" in proc.stderr
    proc = kit_cli("bundle", "sign", str(b), "--key", str(key), env={"KIT_SIGNING_PASSPHRASE": "pass phrase"},
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True).stdout
    c = signing.check(b, signing.load_trusted(Path(f"{key}.pub")))
    assert c.state == "trusted" and c.signer == "carol@site" and c.fingerprint == listed.split()[1]
    ecdsa = tmp_path / "id_ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True)
    proc = kit_cli("bundle", "sign", str(b), "--key", str(ecdsa), timeout=120)
    assert proc.returncode == 2 and "not Ed25519" in proc.stderr and proc.stderr.count("\n") == 1
