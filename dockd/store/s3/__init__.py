"""``s3://`` store: the store (``store.py``, whose doc says what it promises), its
credentials, its local digests and what it learns of its server."""

from .credentials import Credentials, load_credentials_file, resolve_credentials
from .digests import Digest, choose_part_size, digest_file, part_ranges
from .features import ServerFeatures
from .store import S3Store, classify

__all__ = [
    "Credentials", "Digest", "S3Store", "ServerFeatures", "choose_part_size", "classify", "digest_file",
    "load_credentials_file", "part_ranges", "resolve_credentials",
]
