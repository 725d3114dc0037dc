"""registry:// output: push images to a registry that speaks the distribution (Docker Registry v2 / OCI) API.

Where images go
---------------
- A single-image source goes to exactly `registry://HOST/NAME:TAG` (`TAG` defaults to `latest`). With
  `registry://HOST/NAME@sha256:...` the image is pushed by digest and the run fails unless the manifest we write
  has that digest.
- A multi-image source (quay://ORG, a registry catalog glob, a tarball holding several images) treats `NAME` as a
  prefix: the source image `org/app:v1` is pushed to `HOST/NAME/app:v1` (the last component of the source name,
  the source's tag; an image known only by digest is pushed by digest). The tag of the destination URI is then
  not used.

What is sent, per image
-----------------------
Layers go in parallel (-j). A layer still carrying the compressed blob it came from, in the compression asked for
(--compression, default gzip), is sent untouched: streamed from its source and verified on the way. Anything else
(a layer a filter rewrote, an uncompressed layer from a `docker save` tarball, a gzip layer pushed as zstd) is
compressed deterministically into a temporary file while hashing, which gives its new digest.

For every blob the destination is asked first (HEAD): a blob already there is not sent. A blob that another
repository of the same registry holds (the source repository, a repository pushed to earlier in the run, or one
the layer cache remembers) is mounted across repositories instead of uploaded. Only then is it uploaded.

The config blob follows the layers, and the manifest comes last, so a failed blob means no manifest and no tag.
The manifest is an OCI image manifest when the source was OCI or the layers are zstd, a Docker schema 2 manifest
otherwise; when nothing changed and the input kept the source manifest's bytes, those exact bytes are pushed, so
the image keeps its digest.

--layer-cache PATH remembers the blobs that compressing produced (see occystrap.layercache), so that a second
identical push neither compresses nor uploads them. Counts of uploaded, mounted and already present blobs are
logged at INFO (--verbose).
"""

import contextlib
import dataclasses
import logging
import os
import threading

from occystrap import oci, streams, uris
from occystrap.errors import CorruptImageError, OccystrapError, RegistryError
from occystrap.layercache import LayerCache
from occystrap.pipeline import ImageOutput, current_image, layer_cost
from occystrap.progress import human_bytes

LOG = logging.getLogger(__name__)

# Repositories remembered per blob as places to mount it from (any one will do; a few in case one refuses).
HOLDERS = 4


@dataclasses.dataclass
class PushCounters:
    """What a push did with its blobs (layers and configs); manifests are counted apart."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    present: int = 0          # already in the destination repository
    compressed: int = 0       # layers we (re)compressed
    cache_hits: int = 0       # layers whose blob the layer cache named (no compression needed)
    manifests: int = 0

    def add(self, other):
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self):
        """The counts by name, as the JSON summary of a run carries them under ``push``."""
        return dataclasses.asdict(self)

    def describe(self):
        text = '%d blob%s uploaded (%s), %d mounted, %d already present, %d compressed' % (
            self.uploaded, '' if self.uploaded == 1 else 's', human_bytes(self.uploaded_bytes), self.mounted,
            self.present, self.compressed)
        if self.cache_hits:
            text += ', %d from the layer cache' % self.cache_hits
        return text


class _Job:
    """One image being pushed: its destination repository and its own counters."""

    def __init__(self, repository):
        self.repository = repository
        self.counters = PushCounters()
        self.lock = threading.Lock()

    def count(self, **amounts):
        with self.lock:
            for key, value in amounts.items():
                setattr(self.counters, key, getattr(self.counters, key) + value)


class RegistryOutput(ImageOutput):
    """Pushes each image it is given; see the module docstring for naming and what is sent."""

    def __init__(self, uri, ctx, **run):
        super().__init__(uri, ctx, **run)
        from occystrap.registry.client import RegistryClient
        settings = ctx.settings
        self.host = uri.host
        self.compression = settings.compression
        # Credentials: the URI's, else --dest-creds, --username, credential files (registry/credentials.py).
        self.client = RegistryClient(ctx.http, uri.host, insecure=uri.flag('insecure'), username=uri.username,
                                     password=uri.password, authenticators=ctx.authenticators, role='output',
                                     repository=uri.name, tls_verify=uri.flag('tls-verify', True))
        self.cache = LayerCache(settings.layer_cache, warn=ctx.warn)
        self.counters = ctx.stats.push = PushCounters()
        self._lock = threading.Lock()
        self._key_locks = {}
        # blob digest -> (size, up to HOLDERS repositories holding it), this run: what a mount can come from.
        self._present = {}
        self._mount_refused = set()       # (from, to) repository pairs the registry would not mount between
        self._new_repositories = set()    # repositories the registry did not know when this run first asked

    # --- the image

    def destination(self, image):
        """(repository, tag or None) an image (or an ImageRef of one) is pushed to; None means push by digest.

        Both are checked against the reference grammar before any request: a multi-image source names them, and a
        leaf of '..' or a tag holding '#' or '?' would otherwise leave the prefix or change the URL.
        """
        if not self.multi_image:
            repository, tag = self.uri.name, None if self.uri.digest else self.uri.tag
        else:
            leaf = (image.name or '').rstrip('/').rsplit('/', 1)[-1]
            if not leaf:
                raise OccystrapError('image from %s has no name to push under %s'
                                     % (getattr(image, 'source', None) or '?', self.uri))
            repository, tag = '%s/%s' % (self.uri.name, leaf), image.tag
        what = 'cannot push %r under %s' % (getattr(image, 'reference', None) or str(image), self.uri)
        uris.validate_repository(repository, what)
        if tag is not None:
            uris.validate_tag(tag, what)
        return repository, tag

    holds_indexes = True      # write_index / write_child / put_index: a whole index keeps its digest here

    def existing_digest(self, ref):
        """The digest the destination of `ref` (anything with name and tag) holds now, or None (one HEAD)."""
        repository, tag = self.destination(ref)
        reference = tag or getattr(ref, 'digest', None)
        if reference is None:
            return None
        found, digest = self.client.head_manifest(repository, reference)
        if not found and not self.client.repository_exists(repository):
            # A repository the registry does not know holds no blob worth a HEAD: its blobs go up (or are
            # mounted) without asking first. One request here spares one per blob.
            with self._lock:
                self._new_repositories.add(repository)
        return digest

    def target(self, ref):
        """'host/repository:tag' (or '@digest' pending) where `ref` goes, for the summary."""
        repository, tag = self.destination(ref)
        return '%s/%s%s' % (self.host, repository, ':' + tag if tag else '')

    def write(self, image):
        """Push one image under its destination tag; returns a pipeline.Written."""
        repository, tag = self.destination(image)
        return self._push_image(image, repository, tag)

    def write_child(self, image):
        """Push one image of an index by digest only (no tag); returns a pipeline.Written (its descriptor)."""
        repository, _ = self.destination(image)
        return self._push_image(image, repository, None, child=True)

    def _push_image(self, image, repository, tag, child=False):
        from occystrap.pipeline import Written
        job = _Job(repository)
        use_oci = self._oci(image)
        if self.ctx.settings.preserve_digests and not self._keeps_digest(image, use_oci):
            raise OccystrapError('%s would be written with a new digest (its manifest is rewritten) and '
                                 '--preserve-digests is set; nothing was pushed' % image.reference)
        LOG.info('pushing %s to %s/%s:%s (%s manifest, %s layers)', image.reference, self.host, repository,
                 tag or '<digest>', 'OCI' if use_oci else 'Docker', self.compression)
        # The config usually sits beside the layers in the source repository: mount it from there too.
        sources = [(layer.origin.location.registry, layer.origin.location.repository) for layer in image.layers
                   if layer.origin is not None and layer.origin.location is not None]
        config_bytes = image.config_bytes

        def push(layer):
            if layer is None:
                return self._send_blob(job, image.config_digest, len(config_bytes), config_bytes,
                                       list(dict.fromkeys(sources)))
            return self._push_layer(job, layer)

        # The config goes alongside the layers (first, it is small) rather than after them: one round trip fewer.
        descriptors = self.ctx.map(push, [None] + list(image.layers),
                                   cost=lambda layer: float('inf') if layer is None else layer_cost(layer))[1:]
        manifest_bytes, media_type = self._manifest(image, descriptors, use_oci)
        digest = oci.digest_of(manifest_bytes)
        if not child and tag is None and self.uri.digest and not self.multi_image \
                and digest != self.uri.digest:
            raise OccystrapError('pushing %s would give manifest digest %s, not the %s that %s asks for'
                                 % (image.reference, digest, self.uri.digest, self.uri))
        self._put(job, repository, tag or digest, manifest_bytes, media_type)
        self._finish(job, repository, tag, digest)
        platform = oci.Platform.parse(image.platform) if _platform_text(image.platform) else None
        return Written(digest, job.counters, oci.Descriptor(media_type, digest, len(manifest_bytes), platform))

    def _keeps_digest(self, image, use_oci):
        """True when pushing `image` sends the source manifest's own bytes (known before any blob is sent)."""
        if any(layer.origin is None or layer.origin.compression != self.compression for layer in image.layers):
            return False
        descriptors = [_pushed(layer.origin.digest, layer.origin.size, layer.origin.compression)
                       for layer in image.layers]
        return _reusable_manifest(image, descriptors, use_oci) is not None

    def write_index(self, index, tag_child=False):
        """Copy a model.ImageIndex byte for byte: every blob (-j at a time across all children), every child by
        digest, then the index under the destination tag, last. With `tag_child` the index has one child and
        that child's manifest goes under the tag instead (a single platform keeps its own digest).

        Returns a pipeline.Written whose digest is the source's.
        """
        from occystrap.pipeline import Written
        repository, tag = self.destination(index)
        job = _Job(repository)
        LOG.info('copying %s (%d manifests, %d blobs) to %s/%s', index.reference, len(index.children),
                 len(index.blobs), self.host, repository)

        def push(blob):
            locations = [(blob.location.registry, blob.location.repository)] if blob.location else []
            return self._send_blob(job, blob.digest, blob.size, blob.open_verified, locations)

        self.ctx.map(push, index.blobs, cost=lambda blob: blob.size or 0)
        if tag_child:
            (child,) = index.children
            self._put(job, repository, tag or child.digest, child.raw, child.media_type)
            self._finish(job, repository, tag, child.digest)
            return Written(child.digest, job.counters, child.descriptor)
        for child in index.children:
            self._put(job, repository, child.digest, child.raw, child.media_type)
        self._put(job, repository, tag or index.digest, index.index.raw, index.index.media_type)
        self._finish(job, repository, tag, index.digest)
        return Written(index.digest, job.counters, None)

    def put_index(self, ref, index, counters=None):
        """Store a new oci.Index (its children already pushed) under the destination tag of `ref`."""
        from occystrap.pipeline import Written
        repository, tag = self.destination(ref)
        job = _Job(repository)
        self._put(job, repository, tag or index.digest, index.raw, index.media_type)
        if counters is not None:
            job.counters.add(counters)
        self._finish(job, repository, tag, index.digest)
        return Written(index.digest, job.counters, None)

    # --- what refers to a manifest (--referrers; occystrap/referrers.py decides what goes)

    def has_manifest(self, ref, digest):
        """True when the destination repository of `ref` holds the manifest `digest` (one HEAD)."""
        repository, _ = self.destination(ref)
        return self.client.manifest_digest(repository, digest) == digest

    def tag_digest(self, ref, tag):
        """The digest `tag` names in the destination repository of `ref`, or None (one HEAD)."""
        repository, _ = self.destination(ref)
        return self.client.manifest_digest(repository, tag)

    def write_referrer(self, ref, copy, subject, descriptor):
        """Copy a manifest that refers to `subject` (a model.ManifestCopy): its blobs, then the manifest by digest.

        A registry with the referrers API answers OCI-Subject and lists it itself; otherwise the index under the
        referrers tag schema's tag (`sha256-<hex>` of the subject) is kept current: read (none yet is an empty
        one), `descriptor` (oci.referrer_descriptor) added unless it is listed already, written back.
        """
        repository, _ = self.destination(ref)
        job = _Job(repository)
        self._send_referrer_blobs(job, copy)
        digest, answered = self.client.put_referrer(repository, copy.raw, copy.media_type)
        job.count(manifests=1)
        if answered is not None and answered != subject:
            raise RegistryError('registry %s answered OCI-Subject %s for %s, whose subject is %s'
                                % (self.host, answered, digest, subject))
        if answered is None:
            self._list_referrer(job, repository, subject, descriptor)
        self._referrer_done(job, '%s/%s@%s' % (self.host, repository, digest), digest)

    def write_tagged(self, ref, copy, tag):
        """Copy a manifest (a model.ManifestCopy, cosign's signature, attestation or SBOM) under `tag`."""
        repository, _ = self.destination(ref)
        uris.validate_tag(tag, 'cannot push a referrer of %s under %s' % (ref, self.uri))
        job = _Job(repository)
        self._send_referrer_blobs(job, copy)
        self._put(job, repository, tag, copy.raw, copy.media_type)
        self._referrer_done(job, '%s/%s:%s' % (self.host, repository, tag), copy.digest)

    def _send_referrer_blobs(self, job, copy):
        def push(blob):
            locations = [(blob.location.registry, blob.location.repository)] if blob.location else []
            return self._send_blob(job, blob.digest, blob.size, blob.open_verified, locations)

        self.ctx.map(push, copy.blobs, cost=lambda blob: blob.size or 0)

    def _list_referrer(self, job, repository, subject, descriptor):
        """Add `descriptor` to the referrers tag schema's index of `subject` (one writer at a time per subject)."""
        tag = oci.referrers_tag(subject)
        what = 'the referrers tag %s of %s on registry %s' % (tag, repository, self.host)
        with self._key_lock(('referrers', repository, subject)):
            try:
                data, media_type, _ = self.client.get_manifest(repository, tag)
            except RegistryError as e:
                if e.status != 404:
                    raise
                listed = []
            else:
                # Anything else under that tag is not ours to replace: the spec says stop.
                listed = list(oci.parse_referrers(data, media_type, what).manifests)
            if any(d.digest == descriptor.digest for d in listed):
                return
            index = oci.Index.build(listed + [descriptor], oci.MEDIA_OCI_INDEX)
            self._put(job, repository, tag, index.raw, index.media_type)

    def _referrer_done(self, job, where, digest):
        with self._lock:
            self.counters.add(job.counters)
        LOG.info('pushed referrer %s (%s): %s', where, digest, job.counters.describe())

    def missing_blobs(self, ref, blobs):
        """The blobs (model.Blob) the destination repository of `ref` lacks: HEAD requests only, for --dry-run."""
        repository, _ = self.destination(ref)
        with self._lock:
            if repository in self._new_repositories:
                return list(blobs)
        found = self.ctx.map(lambda blob: self.client.blob_exists(repository, blob.digest), blobs)
        return [blob for blob, size in zip(blobs, found) if size is None]

    def _put(self, job, repository, reference, data, media_type):
        answered = self.client.put_manifest(repository, reference, data, media_type)
        digest = oci.digest_of(data)
        if answered and answered != digest:
            LOG.warning('registry %s reports manifest digest %s for %s, we computed %s', self.host, answered,
                        repository, digest)
        job.count(manifests=1)

    def _finish(self, job, repository, tag, digest):
        with self._lock:
            self.counters.add(job.counters)
            self._new_repositories.discard(repository)    # it exists now
        LOG.info('pushed %s/%s%s (%s): %s', self.host, repository, ':' + tag if tag else '', digest,
                 job.counters.describe())

    def finalize(self):
        LOG.info('registry %s: %d manifest%s pushed; %s', self.host, self.counters.manifests,
                 '' if self.counters.manifests == 1 else 's', self.counters.describe())
        self.cache.save()

    def abort(self):
        # Blobs already uploaded are unreferenced without a manifest and harmless; what a completed push of
        # another image taught the cache is still true, so keep it. Upload sessions a cancelled run left open
        # (workers still unwinding when its grace ran out) are ended here.
        if self.ctx.cancellation.cancelled:
            self.client.cancel_open_uploads()
        try:
            self.cache.save()
        except OSError as e:
            LOG.warning('cannot write layer cache %s: %s', self.cache.path, e)

    def _oci(self, image):
        if self.compression == 'zstd':
            return True
        if image.manifest_media_type:
            return image.manifest_media_type == oci.MEDIA_OCI_MANIFEST
        return image.config_media_type == oci.MEDIA_OCI_CONFIG

    def _manifest(self, image, descriptors, use_oci):
        """The manifest bytes and media type: the source's own bytes when they still describe this push.

        `descriptors` are the pushed layers (oci.Descriptor, OCI media types); a Docker manifest gets the Docker
        names of the same compressions. Field order follows what containers/image writes, so a re-push of its
        images often matches byte for byte.
        """
        reused = _reusable_manifest(image, descriptors, use_oci)
        if reused is not None:
            return reused
        media_type = oci.MEDIA_OCI_MANIFEST if use_oci else oci.MEDIA_DOCKER_MANIFEST
        config = oci.Descriptor(oci.MEDIA_OCI_CONFIG if use_oci else oci.MEDIA_DOCKER_CONFIG, image.config_digest,
                                len(image.config_bytes))
        layers = [dataclasses.replace(d, media_type=oci.layer_media_type(d.compression, oci=use_oci))
                  for d in descriptors]
        manifest = oci.Manifest.build(config, layers, media_type,
                                      annotations=image.annotations if use_oci else None)
        return manifest.raw, media_type

    # --- layers

    def _push_layer(self, job, layer):
        pushed = self._push_layer_blob(job, layer)
        self.ctx.stats.add(layers_done=1)
        return pushed

    def _push_layer_blob(self, job, layer):
        origin = layer.origin
        if origin is not None and origin.compression == self.compression:
            locations = [(origin.location.registry, origin.location.repository)] if origin.location else []
            size = self._send_blob(job, origin.digest, origin.size, origin.open_verified, locations)
            return _pushed(origin.digest, size, origin.compression)
        diffid = layer.diffid
        media_type = oci.layer_media_type(self.compression)
        # One thread per uncompressed layer: two images sharing it under -J compress it once.
        with self._key_lock(('layer', diffid)):
            hit = self.cache.lookup(diffid, self.compression, self.filters)
            if hit is not None:
                size = self._make_present(job, hit.digest, hit.size, hit.locations)
                if size is not None and size == hit.size:
                    job.count(cache_hits=1)
                    self.cache.record(diffid, self.compression, self.filters, hit.digest, hit.size, media_type,
                                      self.host, job.repository)
                    return _pushed(hit.digest, hit.size, self.compression)
                LOG.info('layer cache entry for %s is stale (blob %s not in %s); compressing again', diffid,
                         hit.digest, self.host)
            path, digest, size = self._compress(layer)
            job.count(compressed=1)
            try:
                self._send_blob(job, digest, size, path, ())
            finally:
                os.unlink(path)
            self.cache.record(diffid, self.compression, self.filters, digest, size, media_type, self.host,
                              job.repository)
        return _pushed(digest, size, self.compression)

    def _compress(self, layer):
        """Compress the layer's uncompressed stream into a temporary file; returns (path, digest, size)."""
        with streams.temporary_file(self.ctx.workdir, 'push-', '.' + self.compression) as (out, path):
            writer = _CompressingWriter(out, streams.Compressor(self.compression))
            with layer.open() as reader:
                streams.read_all_to(reader, writer)
            writer.finish()
        return path, writer.digest, writer.size

    # --- blobs

    def _send_blob(self, job, digest, size, source, locations):
        """Make `digest` present in the job's repository: already there, mounted, or uploaded from `source` (what
        RegistryClient.upload_blob takes: a path, bytes, or a callable opening a fresh stream). Returns its size."""
        with self._key_lock(('blob', digest)):
            found = self._make_present(job, digest, size, locations)
            if found is not None:
                return found
            image = current_image()
            self.client.upload_blob(job.repository, digest, source, size,
                                    on_bytes=image.count_upload if image is not None else None)
            if size is None:
                size = self.client.blob_exists(job.repository, digest)
            job.count(uploaded=1, uploaded_bytes=size or 0)
            self.ctx.stats.add(nbytes=size or 0)
            self._note_present(digest, size, job.repository)
            return size

    def _make_present(self, job, digest, size, locations):
        """The blob's size when it is in the job's repository already or could be mounted there, else None."""
        repository = job.repository
        with self._lock:
            known_size, holders = self._present.get(digest, (None, ()))
            new = repository in self._new_repositories
        if repository in holders:
            job.count(present=1)
            return known_size
        sources = sorted(holders)
        for registry, source in locations:
            if registry.lower() == self.host and source not in sources:
                sources.append(source)
        with self._lock:
            sources = [source for source in sources
                       if source != repository and (source, repository) not in self._mount_refused]
        # A mount answers 201 whether or not the blob was there already, so a blob that can be mounted needs no
        # HEAD first; nor does one bound for a repository the registry did not know (existing_digest).
        if not sources and not new:
            return self._present_by_head(job, digest)
        for source in sources:
            try:
                mounted = self.client.mount_blob(repository, digest, source)
            except RegistryError as e:
                # Mounting needs pull access to the other repository too; without it, uploading still works.
                LOG.info('cannot mount %s from %s into %s (%s); uploading instead', digest, source, repository, e)
                with self._lock:
                    self._mount_refused.add((source, repository))
                mounted = False
            if mounted:
                LOG.debug('mounted %s from %s into %s', digest, source, repository)
                if size is None:
                    size = known_size if known_size is not None else self.client.blob_exists(repository, digest)
                job.count(mounted=1)
                self._note_present(digest, size, repository)
                return size
        # Every mount failed: the blob may still be there already.
        return None if new else self._present_by_head(job, digest)

    def _present_by_head(self, job, digest):
        """The blob's size when a HEAD finds it in the job's repository (counted as present), else None."""
        found = self.client.blob_exists(job.repository, digest)
        if found is not None:
            job.count(present=1)
            self._note_present(digest, found, job.repository)
        return found

    def _note_present(self, digest, size, repository):
        """Remember that `repository` holds the blob. A few holders are enough to mount from, and keep what a run
        remembers per blob small however many repositories it goes to."""
        with self._lock:
            known_size, holders = self._present.get(digest, (None, ()))
            if repository not in holders and len(holders) < HOLDERS:
                holders = holders + (repository,)
            self._present[digest] = (known_size if known_size is not None else size, holders)

    @contextlib.contextmanager
    def _key_lock(self, key):
        """Hold the lock of `key` (a blob, a layer, a subject): one thread at a time works on it. The lock is
        forgotten when nobody holds or waits for it, so a long run keeps none for the blobs it has finished."""
        with self._lock:
            entry = self._key_locks.get(key)
            if entry is None:
                entry = self._key_locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._key_locks[key]


def _platform_text(text):
    """True when an image's 'os/arch[/variant]' names a real platform (both parts present)."""
    parts = (text or '').split('/')
    return 2 <= len(parts) <= 3 and all(parts)


def _pushed(digest, size, compression):
    """The descriptor of a pushed layer blob (OCI media type for its compression)."""
    return oci.Descriptor(oci.layer_media_type(compression), digest, size)


def _reusable_manifest(image, descriptors, use_oci):
    """The source manifest's (bytes, media type) when pushing it again describes exactly this image, else None.

    Inputs may keep the bytes as `image.manifest_bytes`; Image.replace() drops the manifest digest when anything
    changes, so the bytes only count while they still hash to it.
    """
    raw = getattr(image, 'manifest_bytes', None)
    if not raw or not image.manifest_digest or oci.digest_of(raw) != image.manifest_digest:
        return None
    wanted = oci.MEDIA_OCI_MANIFEST if use_oci else oci.MEDIA_DOCKER_MANIFEST
    try:
        manifest = oci.Manifest.parse(raw, source='source manifest of %s' % image.reference)
    except CorruptImageError:
        return None
    media_type = manifest.document.get('mediaType') or image.manifest_media_type
    if media_type != wanted or manifest.config.digest != image.config_digest:
        return None
    if any(layer.media_type is None for layer in manifest.layers):
        return None
    if [(d.digest, d.compression) for d in manifest.layers] != [(d.digest, d.compression) for d in descriptors]:
        return None
    return raw, wanted


class _CompressingWriter(streams.HashingWriter):
    """A file-like sink that compresses what is written to it into `out`; `digest` and `size` are the compressed
    blob's."""

    def __init__(self, out, compressor):
        super().__init__(out)
        self.compressor = compressor

    def write(self, data):
        streams.HashingWriter.write(self, self.compressor.compress(data))
        return len(data)

    def finish(self):
        streams.HashingWriter.write(self, self.compressor.flush())
