"""The sizes and counts that reads and writes are cut by, each with the measurement behind it.

One place, read at call time (``tuning.X``, never ``from ... import X``), so a test can
shrink every threshold at once and run each path on kilobytes. May import: nothing.
Imported by the engine's modules and the tools that plan reads the same way.
"""

from __future__ import annotations

import os

CHUNK_BYTES = 8 << 20  # unverified reads: large enough to amortise syscalls
# Verified reads hash each chunk right after reading it, while it is still in the core's L2
# (1 MiB per core here), so xxh3 does not re-read RAM. Smaller chunks pay more per-chunk
# Python and syscall overhead than they save: loading 1 GiB into a model, A/B in one
# process, the checksum cost was 20-30% at 512 KiB, 14-19% at 1 MiB, 24-30% at 8 MiB.
VERIFY_CHUNK_BYTES = 1 << 20
# Large tensors are copied into a staging buffer, hashed and written a chunk at a time, on
# the saving thread. Writing 1 GiB to tmpfs, CPU seconds (median of 6, loaded machine): hash
# and write from the tensor's memory 0.484; staged 0.520 (512 KiB), 0.506 (1 MiB), 0.519
# (2 MiB), 0.483 (4 MiB); staged with the writes on the writer thread 0.685 (2 MiB: the
# hand-offs cost more than they overlap on two busy cores).
WRITE_CHUNK_BYTES = 2 << 20
SMALL_WRITE_BYTES = 1 << 20  # tensors below this are gathered into one writev
SMALL_READ_BYTES = 1 << 20  # tensors below this are read in batches by one preadv
BATCH_BYTES = 8 << 20  # most bytes one batched read or write carries
MAX_IOV = min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024)
MAX_THREADS = 8
# Unverified reads (and verified ones of format 3, by block) split a large tensor into pieces
# of this size, so both cores and the disk's queue work on one tensor at once.
SPLIT_BYTES = 8 << 20
# Cold reads rely on the kernel's own read-ahead. posix_fadvise(WILLNEED) on each piece before
# reading it was slower (bench/block_ab.py, 513 MiB cold, medians of 5, 2 cores: verified
# 0.540 s with it vs 0.378 s without, unverified 0.495 vs 0.256; an earlier run 0.647 vs
# 0.267), as were 8 MiB verified requests (0.642 vs 0.647 s) and 4 threads (0.508 s, within
# noise), so none of them is used.
PARALLEL_MIN_BYTES = 4 << 20  # below this, thread start-up costs more than it saves
WRITE_AHEAD = 3  # runs of small tensors handed to the writer thread and not yet written
STAGING_BYTES = 64 << 20  # per pinned buffer when loading to a GPU
STAGING_BUFFERS = 2  # one being filled from the file while the other is copied to the device
# Object storage: every read is one ranged GET with a round trip of milliseconds, so reads
# ask for a whole tensor, block or run at once (up to this), on many threads: the time goes
# to waiting, not to the two cores. The first read of a file fetches this much, enough for
# the header of a few hundred tensors, and asks again only when the header is longer.
REMOTE_REQUEST_BYTES = 64 << 20
REMOTE_THREADS = 16
# A large tensor is split into ranged requests of this size (whole checksum blocks), the
# size AWS suggests for parallel byte-range GETs (8-16 MB): large enough that the round
# trip is small beside the transfer, small enough that one tensor fills many connections.
REMOTE_PIECE_BYTES = 16 << 20
HEAD_GUESS_BYTES = 64 << 10
