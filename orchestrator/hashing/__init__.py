"""Hashing: what a thing's hash is. Pure functions of their inputs (files are read, never written,
except the caches that only save time), one module per kind of thing:

- values: the canonical tagged encoding behind every key, parameter hash and trace;
- sha: which sha256 makes the small digests (the same digests either way);
- files: streamed content hashes of files and trees, stat signatures;
- statcache: file hashes remembered by (size, mtime_ns, inode);
- fingerprints: the code of a stage and of the project code it uses (astnodes: its tree walks);
- scriptdeps: the project files an external script imports.

Golden digests in tests/test_hashing.py pin every encoding: a change there invalidates caches.
"""

import os

from .files import hash_dir, hash_file, hash_file_signed, hash_path, stat_signature
from .fingerprints import MAX_CONST_BYTES, Fingerprinter
from .statcache import RACY_NS, StatCache, is_racy
from .values import MAX_DEPTH, VALUE_PREFIX, encode, hash_bytes, hash_value

#: orch's own package (a real path): never the user's project code, wherever it is installed.
ORCH_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

__all__ = ["ORCH_PACKAGE_DIR", "encode", "hash_value", "hash_bytes", "hash_file", "hash_file_signed", "hash_dir", "hash_path", "stat_signature",
           "StatCache", "is_racy", "Fingerprinter", "VALUE_PREFIX", "MAX_DEPTH", "MAX_CONST_BYTES", "RACY_NS"]
