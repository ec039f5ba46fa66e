"""What an S3 server does, as its store learns it."""

from __future__ import annotations

from dataclasses import dataclass


# -- what the server does ------------------------------------------------------------

@dataclass
class ServerFeatures:
    """What this S3 server does, as far as its store has learnt: from the
    configuration at first, then from the server's answers (``S3Store.probe`` and
    the first uploads). Changed only under the store's lock."""

    checksum: bool | None = None     # keeps x-amz-checksum-sha256; None: not yet known
    tagging: bool = True             # keeps object tags, until it refuses them
    object_lock: bool = False        # the bucket has Object Lock (learnt by probe)
    list_proof: bool = True          # may list the bucket, until a listing is refused
    probed: bool = False             # probe() has run
