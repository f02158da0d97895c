"""Cache locations and file helpers shared by the exporter, the runtime and the recipes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from shadow_edge.errors import ChecksumError

CACHE_ENV = "SHADOW_EDGE_CACHE"


def cache_dir() -> Path:
    """Return the root for slow derived artifacts (converted models, trained adapters).

    `SHADOW_EDGE_CACHE` overrides the default `~/.cache/shadow-edge`.
    """
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "shadow-edge"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise ChecksumError unless the file's sha256 equals `expected`."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 is {actual}, expected {expected}. The file is corrupt or a "
            "different version; delete it and run the command again."
        )
