"""SHA-256 of a file (the SAM-2 weight report, the pseudo-label pools' teacher record)."""
from __future__ import annotations

import hashlib
import os
from typing import Union


def sha256_of_file(path: Union[str, os.PathLike], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks of ``chunk_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
