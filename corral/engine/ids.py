"""Time-ordered UUIDs (UUIDv7 layout) for rows the engine creates.

Lists page by id; with time-ordered ids, "after the last id" is also "newer than", and B-tree inserts
stay at the right edge of the index instead of scattering like random UUIDv4.
"""

from __future__ import annotations

import os
import time
import uuid


def new_id() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76                      # version 7
    value |= ((rand >> 62) & 0xFFF) << 64   # rand_a (12 bits)
    value |= 0b10 << 62                     # variant
    value |= rand & ((1 << 62) - 1)         # rand_b (62 bits)
    return str(uuid.UUID(int=value))
