"""The layer cache: which compressed blob a layer became when it was pushed, remembered across runs.

`--layer-cache PATH` names a JSON file. When the registry output has to (re)compress a layer (a filter rewrote it,
the source held it uncompressed, or the wanted compression differs), it records the result under

    (diffid of the layer as pushed, the run's filter chain, compression)

with the blob's digest, size, media type and every registry/repository it was pushed to. On a later identical push
a hit lets the output skip compressing and uploading: it checks the blob is still in the destination (HEAD) or
mounts it from a repository of the same registry that holds it, and reuses the digest. A stale entry (the registry
forgot the blob) only costs that check: the layer is compressed and uploaded as if there were no entry.

Only blobs that occystrap compressed itself are recorded, so a hit gives exactly the bytes that recompressing would
give (the compressor is deterministic) and a push's digests do not depend on the cache.

The file is read once when the run starts; entries are updated in memory under a lock (safe for -j and -J threads)
and written at the end of the run: merged with what is on disk at that moment (another process may have written
meanwhile), under an advisory lock on PATH.lock, to a temporary file renamed over PATH, so readers never see half a
file. A missing, unreadable or foreign file is an empty cache (with a warning), never a failed push.
"""

import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import threading
import time

LOG = logging.getLogger(__name__)

FORMAT = 'occystrap-layer-cache'
VERSION = 1
MAX_LOCATIONS = 32   # per blob; the most recently used are kept


@dataclasses.dataclass(frozen=True)
class CachedBlob:
    """A blob recorded in the cache: its digest, size, media type and the (registry, repository) pairs holding it."""

    digest: str
    size: int
    media_type: str
    locations: tuple = ()

    def repositories_in(self, registry):
        """The repositories of `registry` (host[:port]) this blob was pushed to, most recent first."""
        return [repo for reg, repo in self.locations if reg == registry]


def cache_key(diffid, compression, filters=()):
    """The cache key of an uncompressed layer: its diffid, the compression, and the ordered filter specifications."""
    return json.dumps([diffid, compression, [str(f) for f in filters]], separators=(',', ':'))


class LayerCache:
    """A thread-safe map from (diffid, compression, filters) to the blob a push produced.

    `path` None makes a cache that lives only for the run (the registry output still uses it so that two images
    sharing a layer compress it once).
    """

    def __init__(self, path=None, warn=None):
        self.path = os.path.abspath(path) if path else None
        self._warn = warn or LOG.warning
        self._lock = threading.Lock()
        self._dirty = set()
        self._entries = self._read() if self.path else {}

    def __len__(self):
        with self._lock:
            return len(self._entries)

    def lookup(self, diffid, compression, filters=()):
        """The CachedBlob recorded for this layer, or None."""
        with self._lock:
            entry = self._entries.get(cache_key(diffid, compression, filters))
        return _to_blob(entry) if entry else None

    def record(self, diffid, compression, filters, digest, size, media_type, registry, repository):
        """Remember that the layer with `diffid`, compressed as `compression` after `filters`, is blob `digest`
        in `repository` of `registry`."""
        key = cache_key(diffid, compression, filters)
        location = [registry, repository]
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry['digest'] != digest:
                entry = {'diffid': diffid, 'compression': compression, 'filters': [str(f) for f in filters],
                         'digest': digest, 'size': size, 'media_type': media_type, 'locations': []}
                self._entries[key] = entry
            locations = [loc for loc in entry['locations'] if loc != location]
            entry['locations'] = [location] + locations[:MAX_LOCATIONS - 1]
            entry['used'] = int(time.time())
            self._dirty.add(key)

    def save(self):
        """Write the entries recorded in this run to the file, merged with what is on disk now.

        Does nothing for a run-only cache or when nothing was recorded. Returns True when the file was written.
        """
        if not self.path:
            return False
        with self._lock:
            if not self._dirty:
                return False
            ours = {key: json.loads(json.dumps(self._entries[key])) for key in self._dirty}
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        with open(self.path + '.lock', 'a') as lock_file:
            # Serialises read-merge-write with other occystrap processes sharing the file.
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                merged = self._read(quiet=True)
                for key, entry in ours.items():
                    theirs = merged.get(key)
                    if theirs is not None and theirs.get('digest') == entry['digest']:
                        extra = [loc for loc in theirs.get('locations', []) if loc not in entry['locations']]
                        entry['locations'] = (entry['locations'] + extra)[:MAX_LOCATIONS]
                    merged[key] = entry
                payload = {'format': FORMAT, 'version': VERSION, 'entries': merged}
                fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(self.path), suffix='.tmp',
                                           dir=directory)
                try:
                    with os.fdopen(fd, 'w') as out:
                        json.dump(payload, out, indent=1, sort_keys=True)
                        out.flush()
                        os.fsync(out.fileno())
                    os.rename(tmp, self.path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        with self._lock:
            for key, entry in merged.items():
                self._entries.setdefault(key, entry)
            for key in ours:
                self._dirty.discard(key)
        LOG.info('layer cache %s: %d entries written (%d from this run)', self.path, len(merged), len(ours))
        return True

    def _read(self, quiet=False):
        """The valid entries of the file; an absent file is empty, a broken one is empty with a warning."""
        try:
            with open(self.path) as f:
                payload = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            if not quiet:
                self._warn('ignoring layer cache %s: %s' % (self.path, e))
            return {}
        if not isinstance(payload, dict) or payload.get('format') != FORMAT or payload.get('version') != VERSION \
                or not isinstance(payload.get('entries'), dict):
            if not quiet:
                self._warn('ignoring layer cache %s: not an occystrap layer cache (version %d)' % (self.path, VERSION))
            return {}
        return {key: entry for key, entry in payload['entries'].items() if _valid(entry)}


def _valid(entry):
    if not isinstance(entry, dict):
        return False
    if not isinstance(entry.get('digest'), str) or ':' not in entry['digest']:
        return False
    if not isinstance(entry.get('size'), int) or not isinstance(entry.get('media_type'), str):
        return False
    locations = entry.get('locations')
    return isinstance(locations, list) and all(
        isinstance(loc, list) and len(loc) == 2 and all(isinstance(part, str) for part in loc) for loc in locations)


def _to_blob(entry):
    return CachedBlob(entry['digest'], entry['size'], entry['media_type'],
                      tuple((reg, repo) for reg, repo in entry['locations']))
