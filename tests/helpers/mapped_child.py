"""One process holding a checkpoint loaded with mmap=True, for the page-sharing tests.

Run as ``python -m tests.helpers.mapped_child PATH``: loads PATH mapped and verified (so
every page is touched), prints ``ready``, then, for each line read on stdin, prints one JSON
line with what the file's mappings cost this process (``/proc/self/smaps``, bytes); exits
at the end of stdin. The parent measures only while every child still holds its mapping.
"""

from __future__ import annotations

import json
import os
import sys

import statevault

FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty")


def file_mapping_usage(path: str) -> dict[str, int]:
    """The FIELDS summed over this process's mappings of ``path``, in bytes."""
    target = os.path.realpath(path)
    totals = dict.fromkeys(FIELDS, 0)
    inside = False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            first, _, rest = line.partition(" ")
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = rest.rstrip("\n").split()[-1:] == [target]
                continue
            name = first.rstrip(":")
            if inside and name in totals:
                totals[name] += int(rest.split()[0]) * 1024
    return totals


def main(path: str) -> None:
    state = statevault.load(path, mmap=True)  # verified: every page is read once
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(file_mapping_usage(path)), flush=True)
    del state


if __name__ == "__main__":
    main(sys.argv[1])
