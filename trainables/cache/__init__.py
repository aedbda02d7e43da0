"""Content-addressed cache for expensive trial stages, shared by every node of a sweep.

An entry lives at ``<root>/cache/<stage>/<key>/``: the files a stage's ``compute`` wrote
plus ``_MANIFEST.json`` (size and sha256 of every file). Readers trust an entry only
through its manifest, which is published last, and check every file against it before
use, so a half-written or damaged entry is never loaded.

Single flight: the first caller that needs a missing key takes a lease
(``<root>/cache/<stage>/<key>.lease``) and computes; the others poll for the manifest.
The owner refreshes the lease's heartbeat from a background thread. A waiter breaks a
lease whose heartbeat it has watched stand still for ``lease_s`` seconds of its own
clock (so clock skew between nodes does not matter), or at once when the owner ran on
the same host and its process is gone, then computes the entry itself.

Guarantees differ by filesystem:

* Local paths (including NFS-style shared mounts) take the lease with an exclusive
  create (``O_CREAT | O_EXCL``) and publish by renaming a fully written staging
  directory into place, so both steps are atomic.
* Other ``pyarrow.fs`` filesystems (``s3://``, ``gs://``, …) have no exclusive create.
  A caller writes its lease, waits ``settle_s`` and reads it back; it owns the lease
  only if its own token is still there. Two callers whose check-then-write steps are
  further apart than ``settle_s`` could both believe they own it; the cost is a
  duplicate computation, never a corrupt read, because each file is uploaded before
  the manifest and a single object write is atomic. Entries are downloaded, and
  verified while downloading, into a local scratch folder.
"""

from trainables.cache.keys import FORMAT_VERSION, KEY_HEX_CHARS, stage_key
from trainables.cache.stage_cache import CacheResult, StageCache
from trainables.cache.stores import MANIFEST_NAME

__all__ = ["FORMAT_VERSION", "KEY_HEX_CHARS", "MANIFEST_NAME", "CacheResult", "StageCache", "stage_key"]
