"""Whole-checkpoint tools behind the CLI: inspect, verify, diff, convert.

One job per module: ``inspection`` (summary from headers), ``verification`` (every checksum,
``torchzip`` for the CRC-32s of a torch zip), ``diffing`` (keys, shapes, dtypes and state;
``diff_streams`` reads both sides, ``diff_values`` compares numbers, ``diff_report`` holds the
result) and ``conversion`` (any kind -> one statevault file).

May import: ``loading``, ``saving``, ``reports``, ``readers``, ``engine``, ``fileformat``,
``statevault.errors``. May be imported by: the public package only.
"""
