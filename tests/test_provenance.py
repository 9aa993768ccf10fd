"""The software inventory: taken where the command runs, reused only while nothing it
depends on has changed."""

from __future__ import annotations

import os

from kit.runtimes import get


def test_inventory_is_reused_until_a_path_directory_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(site))  # on the inventory Python's sys.path
    host = get("host")
    first = host.inspect_software()
    assert first["inventory"]["cached"] is False and first["torch"]
    again = host.inspect_software()
    assert again["inventory"] == {"cached": True, "key": first["inventory"]["key"]}
    assert again["packages"] == first["packages"]
    # "installing a package": a new entry in a directory on sys.path changes its mtime
    (site / "newpkg-1.0.dist-info").mkdir()
    os.utime(site, ns=(0, os.stat(site).st_mtime_ns + 1_000_000_000))
    fresh = host.inspect_software()
    assert fresh["inventory"]["cached"] is False and fresh["inventory"]["key"] != first["inventory"]["key"]


def test_no_key_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    host = get("host")
    monkeypatch.setattr(type(host), "software_key", lambda self: None)
    assert host.inspect_software()["inventory"] == {"cached": False, "key": None}
    assert not (tmp_path / "cache").exists()
