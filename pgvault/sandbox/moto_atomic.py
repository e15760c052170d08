"""moto_server with S3's conditional writes atomic, as Amazon S3's are. Run by path
(``python moto_atomic.py -H 127.0.0.1 -p PORT``): it imports moto only, not pgvault.

Why: moto 5.2 answers ``If-None-Match: *`` by looking the key up and then writing it
(``moto/s3/responses.py`` ``put_object``, and the same in ``_key_response_post`` for
CompleteMultipartUpload), with no lock, and its server handles requests on threads. Two
conditional PUTs that arrive together can then both succeed — CI saw it: two winners of eight
racing threads. Amazon S3 documents the opposite ("the first write to finish succeeds", the
others get 412 PreconditionFailed or 409 ConditionalRequestConflict), and that guarantee is what
``Site.create_exclusive`` relies on. So the sandbox's S3 holds one lock around every
*conditional* write; plain PUTs and everything else run as before, in parallel.
"""
from __future__ import annotations

import sys
import threading

from moto.s3 import responses
from moto.server import main

_LOCK = threading.Lock()


def _atomic_when_conditional(method):
    def wrapper(self, *args, **kwargs):
        if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
            with _LOCK:
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)
    wrapper.__wrapped__ = method
    return wrapper


responses.S3Response.put_object = _atomic_when_conditional(responses.S3Response.put_object)
responses.S3Response._key_response_post = _atomic_when_conditional(responses.S3Response._key_response_post)

if __name__ == "__main__":
    main(sys.argv[1:])
