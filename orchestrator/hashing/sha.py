"""The sha256 constructor behind orch's small digests (keys, values, code, parameter texts): the
digests are sha256 either way; which implementation makes them is a question of speed only.

Importing hashlib loads OpenSSL's libcrypto: 11.4 M instructions, about 3% of a fully cached run of
200 stages. CPython's own sha256 (`_sha256`; `_sha2` from 3.12) imports for 0.4 M but is slower per
digest (1.04 against 0.40 µs for 300 bytes, where OpenSSL uses the CPU's SHA extensions). So a
process starts with the builtin one, and a planning of more than OPENSSL_FROM_NODES nodes (some 3-5
digests each) switches to OpenSSL's, which then pays for its import. So does hashing contents (a
file, an object's bytes: hashing.files, values.hash_bytes), where OpenSSL is 4-5x faster; once it
is loaded every digest might as well use it.
"""

from __future__ import annotations

__all__ = ["OPENSSL_FROM_NODES", "new", "use_openssl"]

import sys

try:  # by version: a failed import searches every sys.path entry (some 0.1 ms at every start)
    if sys.version_info >= (3, 12):
        from _sha2 import sha256 as new  # (HACL*)
    else:
        from _sha256 import sha256 as new
except ImportError:  # a Python configured without its builtin hashes: hashlib's (OpenSSL's)
    from hashlib import sha256 as new

#: Nodes past which a planning switches to OpenSSL: its import (~2.3 ms) is won back after ~3,500
#: small digests, i.e. ~700-1,000 nodes; below this the builtin one is never more than ~1 ms slower.
OPENSSL_FROM_NODES = 600


def use_openssl():
    """Make `new` OpenSSL's sha256 from now on (for every caller of `sha.new`), and return it; once
    switched, a test and a return (it is called for every file and object hashed)."""
    global new, _openssl
    if _openssl is None:
        from hashlib import sha256

        new = _openssl = sha256
    return _openssl


_openssl = None  # hashlib.sha256 once use_openssl() loaded it
