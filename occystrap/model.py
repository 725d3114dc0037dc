"""The image data model that every input, filter and output shares.

An Image is a config plus an ordered list of Layers (bottom first). A Layer answers its diffid, its uncompressed
size and bytes, and, while no filter has changed it, the compressed Blob it came from. Keeping that origin is what
lets a registry-to-registry copy send the original blob untouched (or mount it) and lets the directory output move
a finished temporary file into place. Transformations return new values instead of editing in place.
"""

import dataclasses
import json
import os
import threading
from typing import Callable, Optional

from occystrap import oci, streams
from occystrap.errors import CorruptImageError
# The media types and their helpers live in occystrap.oci; these names stay importable from here.
from occystrap.oci import (MANIFEST_LIST_TYPES, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER_GZIP,  # noqa: F401
                           MEDIA_DOCKER_LAYER_TAR, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_CONFIG,
                           MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_ZSTD,
                           MEDIA_OCI_MANIFEST, compression_of_media_type, layer_media_type)


@dataclasses.dataclass(frozen=True)
class BlobLocation:
    """Where a blob lives in a registry, so a push to the same registry can mount it instead of uploading."""

    registry: str      # host[:port] as used to reach it
    repository: str


@dataclasses.dataclass(frozen=True)
class Blob:
    """A stored (usually compressed) blob: digest, media type, size and a way to read its raw bytes.

    `opener()` returns an unverified stream of the raw bytes; use `open_verified()` to have the digest checked at
    end of stream.
    """

    digest: str
    media_type: str
    size: Optional[int]
    opener: Callable
    location: Optional[BlobLocation] = None

    @property
    def compression(self):
        return compression_of_media_type(self.media_type)

    def open_verified(self):
        return streams.HashingReader(self.opener(), expected=self.digest, what='blob %s' % self.digest,
                                     expected_size=self.size)


class Layer:
    """A filesystem changeset (a tar stream) in an image.

    `diffid` is the digest of the uncompressed tar; for layers from a source it is the value the image config
    promises and is verified when the data is read. `origin` is the compressed Blob the layer came from, or None once
    a filter has rewritten it. `created_by` is the history command, for display.
    """

    def __init__(self, diffid=None, origin=None, created_by=None, size=None, path=None):
        self._diffid = diffid
        self.origin = origin
        self.created_by = created_by
        self._size = size
        self._path = path            # an uncompressed, verified tar file on disk, once we have one
        self._owns_path = False
        self._lock = threading.Lock()

    def __repr__(self):
        return '<Layer %s>' % (self._diffid or (self.origin.digest if self.origin else '?'))

    @property
    def diffid(self):
        """The digest of the uncompressed tar (computed by materializing when no one told us)."""
        if self._diffid is None:
            self.materialize()
        return self._diffid

    @property
    def size(self):
        """The uncompressed size in bytes (materializes the layer when not known)."""
        if self._size is None:
            self.materialize()
        return self._size

    @property
    def path(self):
        """The verified uncompressed tar file, if this layer has been materialized."""
        return self._path

    def open(self):
        """A stream of the uncompressed tar. Digests are verified at end of stream when streaming from the origin."""
        if self._path is not None:
            return open(self._path, 'rb')
        if self.origin is None:
            raise CorruptImageError('layer %s has no data' % self._diffid)
        if self._diffid is not None and self.origin.digest == self._diffid:
            # An uncompressed blob is its own diffid: one hash checks both.
            return self.origin.open_verified()
        return streams.HashingReader(streams.inflating_reader(self.origin.open_verified()), expected=self._diffid,
                                     what='layer %s' % (self._diffid or self.origin.digest))

    def materialize(self, workdir=None):
        """Make sure the uncompressed tar is in a verified file on disk and return its path.

        Thread safe and done once: concurrent callers wait for the first. The file goes into `workdir` (default: the
        system temporary directory) under a temporary name.
        """
        with self._lock:
            if self._path is not None:
                return self._path
            if self.origin is None:
                raise CorruptImageError('layer %s has no data' % self._diffid)
            with streams.temporary_file(workdir, 'layer-', '.tar') as (out, tmp), self.open() as reader:
                size = streams.copy_verified(reader, out)
            self._diffid = reader.digest
            self._size = size
            self._path = tmp
            self._owns_path = True
            return tmp

    def place(self, dest):
        """Move the materialized file to `dest` (rename when possible) and keep reading from there.

        Returns True when the placement was a zero-copy rename.
        """
        with self._lock:
            if self._path is None:
                raise RuntimeError('layer must be materialized before it is placed')
            if self._owns_path:
                renamed = streams.move_file(self._path, dest)
            else:
                streams.copy_file(self._path, dest)
                renamed = False
            self._path = dest
            self._owns_path = False
            return renamed

    def release(self):
        """Delete a temporary materialized file we own."""
        with self._lock:
            if self._owns_path and self._path and os.path.exists(self._path):
                os.unlink(self._path)
            if self._owns_path:
                self._path = None
                self._owns_path = False

    @classmethod
    def from_file(cls, path, diffid=None, created_by=None, owned=False):
        """A layer whose uncompressed tar is already in a file; the diffid is computed when not given."""
        if diffid is None:
            diffid = streams.sha256_file(path)
        layer = cls(diffid=diffid, created_by=created_by, size=os.path.getsize(path), path=path)
        layer._owns_path = owned
        return layer


@dataclasses.dataclass
class Image:
    """One image in the pipeline: where it came from, its config and its layers (bottom first).

    `config_bytes` are the exact bytes the source had, so that an unchanged image keeps its config digest.
    """

    name: str                         # repository name, e.g. 'library/ubuntu'
    tag: Optional[str]
    config_bytes: bytes
    layers: list
    source: str = ''                  # human description of where it came from
    manifest_digest: Optional[str] = None
    manifest_media_type: Optional[str] = None
    config_media_type: str = MEDIA_OCI_CONFIG
    annotations: dict = dataclasses.field(default_factory=dict)
    manifest_bytes: Optional[bytes] = None   # the source manifest as stored, so an unchanged push keeps its digest
    registry: Optional[str] = None           # host[:port] of the registry it was pulled from, which `name` omits

    def __post_init__(self):
        self.config = oci.load_json_object(self.config_bytes, 'image config of %s' % self.reference)

    @property
    def reference(self):
        return '%s:%s' % (self.name, self.tag) if self.tag else self.name

    @property
    def qualified_name(self):
        """The name with the registry it came from, as skopeo and docker name a pulled image ('host:5000/app',
        'docker.io/library/busybox'); just `name` for images that came from no registry."""
        if not self.registry:
            return self.name
        hub = self.registry in ('docker.io', 'index.docker.io', 'registry-1.docker.io')
        host = 'docker.io' if hub else self.registry
        if host == 'docker.io' and '/' not in self.name:
            return 'docker.io/library/' + self.name
        return '%s/%s' % (host, self.name)

    @property
    def config_digest(self):
        return oci.digest_of(self.config_bytes)

    @property
    def diffids(self):
        """The config's rootfs.diff_ids (empty when the config has none; inputs have validated them)."""
        rootfs = self.config.get('rootfs')
        diff_ids = rootfs.get('diff_ids') if isinstance(rootfs, dict) else None
        return list(diff_ids) if isinstance(diff_ids, list) else []

    @property
    def history(self):
        """The config's history entries (only the ones that are JSON objects)."""
        history = self.config.get('history')
        return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []

    @property
    def platform(self):
        """'os/architecture[/variant]' as the config says (fields that are not strings count as missing)."""
        os_name, architecture, variant = (self.config.get(key) for key in ('os', 'architecture', 'variant'))
        parts = [os_name if isinstance(os_name, str) else '', architecture if isinstance(architecture, str) else '']
        if variant and isinstance(variant, str):
            parts.append(variant)
        return '/'.join(parts)

    def replace(self, layers=None, config=None):
        """A new Image with other layers and/or config; rootfs.diff_ids follow the layers.

        The config bytes are re-serialized only when something changed, so unchanged images keep their digest.
        """
        layers = list(self.layers if layers is None else layers)
        new_config = json.loads(json.dumps(config if config is not None else self.config))
        new_diffids = [layer.diffid for layer in layers]
        new_config.setdefault('rootfs', {'type': 'layers'})['diff_ids'] = new_diffids
        if new_config == self.config:
            config_bytes = self.config_bytes
        else:
            config_bytes = json.dumps(new_config, separators=(',', ':'), sort_keys=True).encode()
        return dataclasses.replace(self, layers=layers, config_bytes=config_bytes, manifest_digest=None,
                                   manifest_media_type=None, manifest_bytes=None) \
            if config_bytes != self.config_bytes or layers != self.layers else dataclasses.replace(self, layers=layers)

    def created_by(self, index):
        """The history command that made layer `index` (history entries with empty_layer are skipped)."""
        real = [h for h in self.history if not h.get('empty_layer')]
        if index < len(real):
            return real[index].get('created_by')
        return None


@dataclasses.dataclass
class SourceManifest:
    """What a reference names at its source, fetched once: a manifest (an image) or an index, with its exact bytes.

    `document` is an oci.Manifest or an oci.Index; the pipeline decides from it how the reference is copied.
    """

    raw: bytes
    media_type: str
    digest: str
    document: object

    @property
    def is_index(self):
        return isinstance(self.document, oci.Index)


@dataclasses.dataclass
class ManifestCopy:
    """One manifest copied as it is: its descriptor in the index, its exact bytes and the blobs it references.

    Children of an index that are not images (attestation manifests, artifacts) are copied this way too, so a
    faithful copy never needs to understand them.
    """

    descriptor: oci.Descriptor
    raw: bytes
    media_type: str
    blobs: list                       # Blob values: the config (or artifact config) first, then the layers

    @property
    def digest(self):
        return self.descriptor.digest

    @property
    def platform(self):
        """'os/arch[/variant]' from the index entry, or '' for an entry without a real platform (an attestation)."""
        platform = self.descriptor.platform
        if platform is None or platform.os in ('', 'unknown'):
            return ''
        return str(platform)


@dataclasses.dataclass
class ImageIndex:
    """A manifest list or OCI index to copy byte for byte: the index as stored and every child with its blobs.

    Outputs that can hold an index (`ImageOutput.holds_indexes`) write the blobs, then each child by digest, then
    the index last under the tag, so the destination digest equals `digest`.
    """

    name: str
    tag: Optional[str]
    index: oci.Index
    children: list                    # ManifestCopy, in the index's order
    source: str = ''

    @property
    def digest(self):
        return self.index.digest

    @property
    def reference(self):
        return '%s:%s' % (self.name, self.tag) if self.tag else self.name

    @property
    def platforms(self):
        return [child.platform for child in self.children if child.platform]

    @property
    def blobs(self):
        """Every distinct blob of every child (children of several platforms often share layers)."""
        seen = {}
        for child in self.children:
            for blob in child.blobs:
                seen.setdefault(blob.digest, blob)
        return list(seen.values())
