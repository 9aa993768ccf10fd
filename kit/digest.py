"""sha256 of files and streams, in one place (bundles, images, archives).

Streaming: memory stays flat whatever the size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def sha256_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    """The hex sha256 and the byte count of a stream of chunks."""
    h = hashlib.sha256()
    size = 0
    for block in chunks:
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def sha256_file(path: Path, chunk: int = CHUNK) -> tuple[str, int]:
    """The hex sha256 and size of a file."""
    with Path(path).open("rb") as f:
        return sha256_chunks(iter(lambda: f.read(chunk), b""))
