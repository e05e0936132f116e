"""What keelflow's storage format 1 looked like, to write journals an older release left behind."""

from __future__ import annotations

import struct
import zlib


def to_format_1(payloads: list[bytes]) -> bytes:
    """A journal of format 1: each record framed as ``<length:u32><crc32:u32><payload>``."""
    return b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in payloads)
