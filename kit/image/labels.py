"""The image labels the kit reads back, and the check of the recipe's self-hash.

- ``org.kit.recipe.sha256``: the sha256 of the definition file itself, computed over its
  text with this label's value blanked (``HASH_PLACEHOLDER``); ``verify_hash`` checks a
  definition file against it (``kit image inspect`` of a SIF, whose def it carries).
- ``org.kit.provides``: directories an image brings, space-separated (``kit image build
  --dsf`` sets ``/opt/dsf``); the container runtimes never bind a host directory over them
  (``provided_dirs`` says which entries count: an image is untrusted input).

A base-level module (ARCHITECTURE.md): the runtimes read these names, the image builder
writes them.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

RECIPE_HASH_LABEL = "org.kit.recipe.sha256"
HASH_PLACEHOLDER = "-" * 64
PROVIDES_LABEL = "org.kit.provides"


def verify_hash(text: str) -> bool:
    """Whether a definition file's ``org.kit.recipe.sha256`` label matches its text."""
    m = re.search(rf"^\s*{re.escape(RECIPE_HASH_LABEL)} ([0-9a-f]{{64}})\s*$", text, re.M)
    if not m:
        return False
    blank = text.replace(m.group(1), HASH_PLACEHOLDER, 1)
    return hashlib.sha256(blank.encode()).hexdigest() == m.group(1)


#: where a container sees the host's files, not the image's (default binds, kernel file systems)
HOST_OWNED = ("/home", "/root", "/tmp", "/var/tmp", "/run", "/proc", "/sys", "/dev", "/mnt", "/media", "/srv")


def provided_dirs(value: str) -> tuple[list[str], list[str]]:
    """The directories an ``org.kit.provides`` label names that count, and those that do not.

    An entry counts only as a normalised absolute path at least two components deep
    (``/opt/dsf``): never ``/``, a top-level directory (``/tmp``, ``/home``), a path with ``..``
    or ``.`` or a doubled or trailing ``/``, and nothing under the directories a container
    runtime binds from the host by default or the kernel provides (``HOST_OWNED``: Singularity
    binds ``$HOME`` and ``/tmp``, so a host file there would be read as the image's). Anything
    broader would let an image's label keep the bundle, the site's binds or a host checkout
    from being bound."""
    good: list[str] = []
    bad: list[str] = []
    for d in str(value).split():
        ok = (d.startswith("/") and not d.startswith("//") and posixpath.normpath(d) == d and d.count("/") >= 2
              and not any(d == h or d.startswith(h + "/") for h in HOST_OWNED))
        (good if ok else bad).append(d)
    return good, bad
