"""The I/O engine: storage, atomic writes, parallel verified reads, memory and device staging.

Knows byte ranges and digests, never statevault's metadata. May import: ``fileformat``
(except its metadata codec), ``statevault.errors``. Imported by ``saving``, ``readers``,
``loading`` and ``tools``; never imports them. One job per module: ``storage`` (where bytes
live, atomic commit), ``writer``, ``reader``, ``staging`` (device copies), ``verified`` (the
read-hash-compare loop), ``memory``, ``tuning``, ``workers`` (threads kept across calls),
``scan`` (whole-file hashing), ``target`` and ``temps`` (local-disk save rules), ``ties``,
``progress``.
"""
