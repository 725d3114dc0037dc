"""ocidir:///PATH[?ref=NAME]: images into an OCI image layout directory (what skopeo calls `oci:PATH:REF`).

What it writes (the image-spec's image-layout.md, read by skopeo, umoci, podman and `ocidir://` input):

```
PATH/oci-layout             {"imageLayoutVersion":"1.0.0"}
PATH/blobs/sha256/<hex>     every blob once: layers as they came, configs, manifests
PATH/index.json             one entry per image, named by its org.opencontainers.image.ref.name; replaced last
```

- Layers keep the compressed blob they came from (gzip, zstd or plain tar, digest and media type unchanged); a
  layer a filter rewrote is stored as its uncompressed tar (its digest is its diffid), as `tar://` stores layers.
- The manifest is the source's own bytes while they are an OCI manifest that still describes the image (so a
  registry -> ocidir copy of an OCI image keeps the manifest digest); otherwise a new OCI manifest. A Docker
  schema 2 manifest is converted as skopeo converts it (skopeo, umoci and podman read only OCI manifests from a
  layout): blobs unchanged, a new manifest digest, and a warning that says so.
- A manifest list or OCI index is stored whole for mirror.Copier (`holds_indexes`: `write_index`, `write_child`,
  `put_index`, `existing_digest` read from index.json): every blob, every child, the index named by its ref, so the
  layout's digest for the ref is the source's. An OCI index is kept byte for byte whatever its children are; a
  Docker manifest list (and a Docker manifest under the ref) is made OCI (`stored_form`), since skopeo 1.9 finds no
  index.json entry of a Docker type; the copier learns that digest before writing and says so.
- Each image is named `?ref=NAME`, by default its source tag (an image known only by digest gets no name). An
  entry already there with the same ref is replaced (skopeo instead keeps it without its name; either way the
  name moves to the new image). Two images of one run that would take the same ref are an error for the second.
- Many images go into one layout, over many runs: a blob already there (a regular file of the right size) is
  not fetched or written again, and images of one run sharing a blob (under -J) fetch it once.

Atomic and crash-safe, as containers/image writes layouts: every blob is written under a temporary name in a
hidden directory inside PATH (`.occystrap-*.partial`), fsync'ed and renamed into `blobs/`; index.json is updated
last, under an flock of PATH (concurrent runs merge their entries), re-read, fsync'ed and renamed into place. A
failed run leaves index.json as it was, so it names nothing new, and leaves no partial blob: the temporary
directory goes, and blobs that were completed stay, unnamed, for a later run to reuse (as `dir://` keeps its
layers). A layout this run created and never finalized is removed whole.
"""

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import threading

from occystrap import oci, streams
from occystrap.errors import CorruptImageError, OccystrapError, UsageError
from occystrap.inputs.layout import REF_NAME
from occystrap.inputs.ocidir import ref_option
from occystrap.pipeline import POLL_SECONDS, ImageOutput, Written, layer_cost

LAYOUT_MARKER = b'{"imageLayoutVersion":"1.0.0"}'
MAX_INDEX_BYTES = 64 * 1024 * 1024


# --- what goes into a layout: shared with tar://?format=oci -----------------------------------------------------

def layer_descriptor(layer):
    """The Descriptor of the blob a layer is stored as: its original compressed blob while it has one, else its
    uncompressed tar (digest = diffid; the size is the layer's, known once it is materialized)."""
    origin = layer.origin
    if origin is None:
        return oci.Descriptor(oci.MEDIA_OCI_LAYER_TAR, layer.diffid, layer.size)
    return oci.Descriptor(origin.media_type, origin.digest, origin.size)


def _oci_layer(descriptor):
    media_type = descriptor.media_type or ''
    if media_type.startswith('application/vnd.oci.image.layer.'):
        return descriptor
    return dataclasses.replace(descriptor, media_type=oci.layer_media_type(descriptor.compression))


def image_manifest(image, layers):
    """(bytes, media type) of the OCI manifest of `image` stored with layer blobs `layers` (Descriptors, in order).

    The source manifest's exact bytes while they are an OCI manifest that hashes to the image's manifest digest and
    names the same config and layer blobs (a copy then keeps the digest); otherwise a new, deterministic OCI image
    manifest. A Docker schema 2 manifest is converted, as skopeo converts it for `oci:`: skopeo, umoci and podman
    read only OCI manifests and indexes from a layout. The blobs stay as they are.
    """
    raw = image.manifest_bytes
    if raw and image.manifest_digest and oci.digest_of(raw) == image.manifest_digest:
        try:
            manifest = oci.Manifest.parse(raw, image.manifest_media_type, source='manifest of %s' % image.reference)
        except CorruptImageError:
            manifest = None
        if (manifest is not None and manifest.media_type == oci.MEDIA_OCI_MANIFEST
                and manifest.config.digest == image.config_digest
                and [d.digest for d in manifest.layers] == [d.digest for d in layers]):
            return manifest.raw, manifest.media_type
    config = oci.Descriptor(oci.MEDIA_OCI_CONFIG, image.config_digest, len(image.config_bytes))
    manifest = oci.Manifest.build(config, [_oci_layer(d) for d in layers], oci.MEDIA_OCI_MANIFEST,
                                  annotations=image.annotations or None)
    return manifest.raw, manifest.media_type


def digest_change(image, digest):
    """A warning when the manifest stored for an unchanged image has another digest than the source's (a Docker
    manifest made OCI), else None: a copy never changes a digest silently."""
    if image.manifest_digest and digest != image.manifest_digest:
        kind = 'Docker' if image.manifest_media_type == oci.MEDIA_DOCKER_MANIFEST else 'non-OCI'
        return ('%s: stored with OCI manifest %s, not the source\'s %s manifest %s (OCI layouts hold OCI manifests; '
                'the layers and config are unchanged)' % (image.reference, digest, kind, image.manifest_digest))
    return None


def ref_of(entry):
    """The ref name of an index.json entry (a dict), or None."""
    annotations = entry.get('annotations')
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def index_entry(descriptor, ref):
    """The index.json entry (a dict) for a manifest descriptor, named `ref` when it is not None."""
    entry = descriptor.to_dict()
    if ref is not None:
        entry['annotations'] = {REF_NAME: ref}
    return entry


def merge_entries(existing, additions):
    """index.json's manifests list with `additions` (entries, in order) added: an addition replaces the entry that
    has its ref name, and an unnamed entry of the same manifest (which it would only repeat)."""
    manifests = list(existing)
    for entry in additions:
        ref = ref_of(entry)
        manifests = [m for m in manifests
                     if not ((ref is not None and ref_of(m) == ref)
                             or (ref_of(m) is None and m.get('digest') == entry['digest']))]
        manifests.append(entry)
    return manifests


def new_index_document():
    return {'schemaVersion': 2, 'mediaType': oci.MEDIA_OCI_INDEX, 'manifests': []}


class RefNames:
    """The ref names images of one run take (thread safe): a second image under a taken name is refused."""

    def __init__(self, fixed, where):
        self.fixed = fixed          # ?ref=NAME, which names the one image of the run
        self.where = where
        self._lock = threading.Lock()
        self._taken = {}

    def claim(self, image):
        """The ref name `image` (an Image, an ImageIndex or an ImageRef) is written under (None: unnamed), reserved
        for it."""
        ref = self.fixed or image.tag
        if ref is None:
            return None
        reference = _reference(image)
        with self._lock:
            holder = self._taken.setdefault(ref, reference)
        if holder != reference:
            raise OccystrapError('%s: ref %s of %s is taken by %s in this run (%s names images by their tags)'
                                 % (reference, oci.shown(ref), self.where, holder, self.where))
        return ref

    def name(self, image):
        """The ref name `image` would be written under, without reserving it."""
        return self.fixed or getattr(image, 'tag', None)

    def release(self, ref, image):
        with self._lock:
            if ref is not None and self._taken.get(ref) == _reference(image):
                del self._taken[ref]


def _reference(image):
    return getattr(image, 'reference', None) or str(image)


# --- manifests a layout stores in another form: Docker schema 2 made OCI, as skopeo makes them ------------------

def keeps_manifest(media_type):
    """False for the Docker schema 2 manifests and manifest lists a layout stores converted to OCI: skopeo 1.9 does
    not find an index.json entry of a Docker type ('no descriptor found for reference'). An OCI index is kept as it
    is whatever its children are (skopeo reads Docker children of an OCI index, and keeps them with
    --preserve-digests)."""
    return media_type not in (oci.MEDIA_DOCKER_MANIFEST, oci.MEDIA_DOCKER_LIST)


def oci_manifest(manifest):
    """The OCI manifest a layout stores for a Docker schema 2 `manifest` (an oci.Manifest): config and layers the
    same blobs, OCI media types; the same bytes image_manifest() builds for the image, so both paths agree."""
    config = oci.Descriptor(oci.MEDIA_OCI_CONFIG, manifest.config.digest, manifest.config.size)
    layers = [_oci_layer(oci.Descriptor(d.media_type, d.digest, d.size)) for d in manifest.layers]
    return oci.Manifest.build(config, layers, oci.MEDIA_OCI_MANIFEST, annotations=manifest.annotations or None)


def _oci_child(child):
    """A model.ManifestCopy as a layout stores it: an OCI manifest for a Docker schema 2 one, else itself."""
    if keeps_manifest(child.media_type):
        return child
    manifest = oci.Manifest.parse(child.raw, child.media_type, source='manifest %s' % child.digest)
    made = oci_manifest(manifest)
    descriptor = dataclasses.replace(child.descriptor, media_type=made.media_type, digest=made.digest,
                                     size=len(made.raw))
    return dataclasses.replace(child, descriptor=descriptor, raw=made.raw, media_type=made.media_type)


def stored_form(copy, tag_child=False):
    """(the model.ImageIndex a layout stores for `copy`, a warning or None): a Docker manifest list becomes an OCI
    index of its children, a Docker child an OCI manifest (blobs unchanged, new digests, which the warning names);
    anything else is stored as it is."""
    if tag_child:
        (child,) = copy.children
        made = _oci_child(child)
        if made is child:
            return copy, None
        return dataclasses.replace(copy, children=[made]), (
            '%s: stored with OCI manifest %s, not the source\'s Docker manifest %s (OCI layouts hold OCI manifests; '
            'the layers and config are unchanged)' % (copy.reference, made.digest, child.digest))
    if keeps_manifest(copy.index.media_type):
        return copy, None
    children = [_oci_child(child) for child in copy.children]
    descriptors = [child.descriptor for child in children]
    index = oci.Index.build(descriptors, oci.MEDIA_OCI_INDEX, copy.index.annotations or None)
    return dataclasses.replace(copy, index=index, children=children), (
        '%s: stored as OCI index %s, not the source\'s Docker manifest list %s (OCI layouts hold OCI indexes; its '
        'Docker manifests are made OCI too, the layers and configs are unchanged)'
        % (copy.reference, index.digest, copy.digest))


@dataclasses.dataclass
class LayoutCounters:
    """What writing one image or index into a layout did, named as a push's counts are (for the summary):
    `uploaded` blobs written, `present` blobs the layout already held, `manifests` manifests and indexes."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    present: int = 0
    manifests: int = 0

    def add(self, other):
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def check_ref_for_run(uri, multi_image):
    """The checked `?ref=` of a layout destination, refused when the source can name many images (one name
    cannot name them all)."""
    ref = ref_option(uri)
    if ref is not None and multi_image:
        raise UsageError('%s names one image by ref=%s, but the source can name many' % (uri, oci.shown(ref)))
    return ref


# --- the directory ----------------------------------------------------------------------------------------------

def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LayoutForms:
    """What a layout stores for what a mirror copies (mirror.Copier asks), for ocidir:// and tar://?format=oci."""

    recompresses = False      # layers are stored as they came: --compression does not apply to layouts
    keeps_manifest = staticmethod(keeps_manifest)

    def stored_form(self, copy, tag_child=False):
        """The model.ImageIndex this layout stores for `copy` (Docker types made OCI), and a warning or None."""
        return stored_form(copy, tag_child)

    def stored_manifest(self, manifest):
        """The oci.Manifest this layout stores for an image manifest (a Docker one made OCI)."""
        return manifest if keeps_manifest(manifest.media_type) else oci_manifest(manifest)


class OCIDirOutput(LayoutForms, ImageOutput):
    """Images into an OCI image layout directory; see the module docstring."""

    def __init__(self, uri, ctx, **run):
        super().__init__(uri, ctx, **run)
        self.path = os.path.abspath(uri.path)
        self.ref = check_ref_for_run(uri, self.multi_image)
        self.refs = RefNames(self.ref, str(uri))
        self.existed = os.path.isdir(self.path)
        if os.path.lexists(self.path) and not self.existed:
            raise OccystrapError('cannot write %s: %s exists and is not a directory' % (uri, self.path))
        if self.existed and os.listdir(self.path):
            self._check_layout()
        elif not self.existed and not os.path.isdir(os.path.dirname(self.path)):
            raise OccystrapError('cannot write %s: directory %s does not exist' % (uri, os.path.dirname(self.path)))
        # Layers a filter rewrote are materialized beside the blobs, so storing them is a link, not a copy.
        ctx.prefer_workdir_parent(self.path if self.existed else os.path.dirname(self.path))
        self._mode = 0o666 & ~_umask()
        self._lock = threading.Lock()
        self._inflight = {}       # digest -> Future of the thread storing it
        self._entries = []        # index.json entries of this run's images, in the order they were written
        self._staging = None
        self._created = False     # this run made the directory
        self._fresh = not self.existed or not os.listdir(self.path)   # this run made the layout in it

    # --- the layout as found ------------------------------------------------------------------------------------

    def _check_layout(self):
        """An existing, non-empty destination must be an OCI layout whose index.json (if any) can be added to."""
        marker = os.path.join(self.path, 'oci-layout')
        if not os.path.isfile(marker):
            raise OccystrapError('cannot write %s: %s is not empty and not an OCI image layout (it has no '
                                 'oci-layout file)' % (self.uri, self.path))
        try:
            with open(marker, 'rb') as f:
                document = oci.load_json_object(f.read(64 * 1024), '%s/oci-layout' % self.path)
        except OSError as e:
            raise OccystrapError('cannot read %s: %s' % (marker, e.strerror or e))
        if not isinstance(document.get('imageLayoutVersion'), str):
            raise OccystrapError('cannot write %s: %s has no imageLayoutVersion' % (self.uri, marker))
        self._read_index()

    def _read_index(self):
        """The document of the layout's index.json, validated; a new one when there is none."""
        path = os.path.join(self.path, 'index.json')
        try:
            with open(path, 'rb') as f:
                data = f.read(MAX_INDEX_BYTES + 1)
        except FileNotFoundError:
            return new_index_document()
        except OSError as e:
            raise OccystrapError('cannot read %s: %s' % (path, e.strerror or e))
        if len(data) > MAX_INDEX_BYTES:
            raise OccystrapError('cannot add to %s: it is larger than %d bytes' % (path, MAX_INDEX_BYTES))
        index = oci.Index.parse(data, source=path)
        return index.document

    @contextlib.contextmanager
    def _layout_lock(self):
        """An flock of the layout directory itself, so runs writing one layout at once merge their entries."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- writing ------------------------------------------------------------------------------------------------

    def _prepare(self):
        """Make the layout (when new), its blobs directory and this run's hidden staging directory, once."""
        with self._lock:
            if self._staging is not None:
                return
            try:
                if not os.path.isdir(self.path):
                    os.mkdir(self.path)
                    self._created = True
                os.makedirs(os.path.join(self.path, 'blobs', 'sha256'), exist_ok=True)
                self._staging = tempfile.mkdtemp(prefix='.occystrap-', suffix='.partial', dir=self.path)
                marker = os.path.join(self.path, 'oci-layout')
                if not os.path.exists(marker):
                    self._publish_bytes(marker, LAYOUT_MARKER)
            except OSError as e:
                raise OccystrapError('cannot write %s: %s' % (self.uri, e.strerror or e))

    def _temporary(self):
        fd, tmp = tempfile.mkstemp(prefix='blob-', dir=self._staging)
        os.fchmod(fd, self._mode)
        return os.fdopen(fd, 'wb'), tmp

    def _publish(self, final, write):
        """Write a temporary file with `write(out)`, make it durable, and rename it to `final`; returns what
        `write` returned. The temporary file is removed on any failure."""
        out, tmp = self._temporary()
        try:
            with out:
                result = write(out)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, final)
            return result
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _publish_bytes(self, final, data):
        self._publish(final, lambda out: out.write(data))

    def _store(self, digest, size, produce, counters=None):
        """Make blobs/<alg>/<hex> hold the blob `digest`, written by `produce(final path)` unless it is there (a
        regular file of `size` bytes, any size when None) or another thread is writing it. Returns its size;
        `counters` (a LayoutCounters) counts it as written or present."""
        final = os.path.join(self.path, oci.blob_path(digest))
        with self._lock:
            future = self._inflight.get(digest)
            if future is None:
                present = _present_size(final, size)
                if present is not None:
                    if counters is not None:
                        counters.present += 1
                    return present
                future = self._inflight[digest] = concurrent.futures.Future()
                mine = True
            else:
                mine = False
        if not mine:
            while True:     # in short steps, so that a cancelled run is noticed (AGENTS.md)
                try:
                    stored = future.result(timeout=POLL_SECONDS)
                except concurrent.futures.TimeoutError:
                    self.ctx.cancellation.check()
                    continue
                if counters is not None:
                    with self._lock:
                        counters.present += 1
                return stored
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            written = produce(final)
            self.ctx.stats.add(nbytes=written)
            if counters is not None:
                with self._lock:
                    counters.uploaded += 1
                    counters.uploaded_bytes += written
            future.set_result(written)
            return written
        except BaseException as e:
            future.set_exception(e)
            if isinstance(e, OSError):
                raise OccystrapError('cannot write %s: %s' % (self.uri, e.strerror or e))
            raise
        finally:
            with self._lock:
                self._inflight.pop(digest, None)

    def _store_bytes(self, digest, data, counters=None):
        def produce(final):
            self._publish_bytes(final, data)
            return len(data)
        return self._store(digest, len(data), produce, counters)

    def _store_blob(self, blob, counters=None):
        """Store a model.Blob as it is, verified against its digest (and size) while it is copied."""
        def copy(out):
            with blob.open_verified() as reader:
                return streams.copy_verified(reader, out)

        return self._store(blob.digest, blob.size, lambda final: self._publish(final, copy), counters)

    def _store_layer(self, layer, counters=None):
        if layer.origin is not None:
            size = self._store_blob(layer.origin, counters)
            return dataclasses.replace(layer_descriptor(layer), size=size)

        def produce_uncompressed(final):
            path = layer.materialize(self.ctx.workdir)
            self._link_or_copy(path, final)
            return os.path.getsize(final)

        size = self._store(layer.diffid, None, produce_uncompressed, counters)
        return oci.Descriptor(oci.MEDIA_OCI_LAYER_TAR, layer.diffid, size)

    def _link_or_copy(self, path, final):
        """Publish the verified file `path` (the layer keeps it) as blob `final`: a hard link, or a copy when the
        two are on different filesystems."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, self._mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(path, final)
            return
        except FileExistsError:
            os.unlink(final)          # not the right size (else it was present): replace it
            os.link(path, final)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        out, tmp = self._temporary()
        try:
            with out, open(path, 'rb') as src:
                shutil.copyfileobj(src, out, streams.CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write(self, image):
        """Store one image and name it in index.json; returns a pipeline.Written (digest, counters, descriptor)."""
        ref = self.refs.claim(image)
        try:
            written = self._write_image(image)
        except BaseException:
            self.refs.release(ref, image)
            raise
        self._name(written.descriptor, ref)
        return written

    def write_child(self, image):
        """Store one image of an index by digest only (no index.json entry); returns a pipeline.Written whose
        descriptor names the image's platform."""
        written = self._write_image(image)
        platform = image.platform if _platform_text(image.platform) else None
        if platform:
            written.descriptor = dataclasses.replace(written.descriptor, platform=oci.Platform.parse(platform))
        return written

    def _write_image(self, image):
        counters = LayoutCounters()
        self._prepare()
        layers = self.ctx.map(lambda layer: self._store_layer(layer, counters), image.layers, cost=layer_cost)
        self._store_bytes(image.config_digest, image.config_bytes, counters)
        raw, media_type = image_manifest(image, layers)
        digest = oci.digest_of(raw)
        self._store_bytes(digest, raw)
        counters.manifests += 1
        change = digest_change(image, digest)
        if change:
            self.ctx.warn(change)
        return Written(digest, counters, oci.Descriptor(media_type, digest, len(raw)))

    def _name(self, descriptor, ref):
        """index.json (at finalize) names the manifest or index `descriptor` as `ref` (None: unnamed)."""
        entry = index_entry(oci.Descriptor(descriptor.media_type, descriptor.digest, descriptor.size), ref)
        with self._lock:
            self._entries.append(entry)

    # --- whole indexes (mirror.Copier: holds_indexes) -----------------------------------------------------------

    holds_indexes = True      # write_index / write_child / put_index: a whole OCI index keeps its digest here

    def existing_digest(self, ref):
        """The digest index.json names `ref`'s ref name by now (its blob present, of its size), or None: read from
        the layout, no lock needed (index.json is only ever replaced whole)."""
        name = self.refs.name(ref)
        if name is None or not os.path.isfile(os.path.join(self.path, 'index.json')):
            return None
        found = None
        for entry in self._read_index().get('manifests') or []:
            if ref_of(entry) == name:
                found = entry
        if found is None:
            return None
        descriptor = oci.Descriptor.from_dict(found, 'the index.json entry of %s' % oci.shown(name))
        if _present_size(os.path.join(self.path, oci.blob_path(descriptor.digest)), descriptor.size) is None:
            return None
        return descriptor.digest

    def target(self, ref):
        """'PATH:REF' (or PATH for an image left unnamed), for the summary."""
        name = self.refs.name(ref)
        return '%s:%s' % (self.path, name) if name else self.path

    def missing_blobs(self, ref, blobs):
        """The blobs (model.Blob or Descriptors) the layout lacks, for --dry-run: nothing is written."""
        return [blob for blob in blobs
                if _present_size(os.path.join(self.path, oci.blob_path(blob.digest)), blob.size) is None]

    def write_index(self, copy, tag_child=False):
        """Store a model.ImageIndex: every blob once (-j at a time, verified), every child manifest, then the index,
        named in index.json at finalize. With `tag_child` the index has one child and that child's manifest is
        named instead (a single platform keeps its own digest). Docker types are made OCI (stored_form; the mirror
        has said so). Returns a pipeline.Written whose digest is what the ref names."""
        copy, change = stored_form(copy, tag_child)
        ref = self.refs.claim(copy)
        counters = LayoutCounters()
        try:
            self._prepare()
            self.ctx.map(lambda blob: self._store_blob(blob, counters), copy.blobs, cost=lambda blob: blob.size or 0)
            for child in copy.children:
                self._store_bytes(child.digest, child.raw)
                counters.manifests += 1
            if tag_child:
                (child,) = copy.children
                descriptor = oci.Descriptor(child.media_type, child.digest, len(child.raw))
            else:
                index = copy.index
                self._store_bytes(index.digest, index.raw)
                counters.manifests += 1
                descriptor = oci.Descriptor(index.media_type, index.digest, len(index.raw))
        except BaseException:
            self.refs.release(ref, copy)
            raise
        if change:
            self.ctx.warn(change)
        self._name(descriptor, ref)
        return Written(descriptor.digest, counters, descriptor)

    def put_index(self, ref, index, counters=None):
        """Store a new oci.Index (its children already stored by write_child) and name it `ref`'s ref name."""
        name = self.refs.claim(ref)
        total = LayoutCounters(manifests=1)
        if counters is not None:
            total.add(counters)
        try:
            self._prepare()
            self._store_bytes(index.digest, index.raw)
        except BaseException:
            self.refs.release(name, ref)
            raise
        descriptor = oci.Descriptor(index.media_type, index.digest, len(index.raw))
        self._name(descriptor, name)
        return Written(index.digest, total, descriptor)

    # --- the end of the run -------------------------------------------------------------------------------------

    def finalize(self):
        with self._lock:
            entries, self._entries = self._entries, []
        if not entries:
            self.abort()
            return
        try:
            with self._layout_lock():
                document = self._read_index()
                document['manifests'] = merge_entries(document.get('manifests') or [], entries)
                # The blobs' names must be on disk before an index.json that names them.
                for algorithm in os.listdir(os.path.join(self.path, 'blobs')):
                    _fsync_directory(os.path.join(self.path, 'blobs', algorithm))
                self._publish_bytes(os.path.join(self.path, 'index.json'),
                                    json.dumps(document, separators=(',', ':')).encode())
                _fsync_directory(self.path)
        except OSError as e:
            raise OccystrapError('cannot write %s: %s' % (self.uri, e.strerror or e))
        finally:
            self._discard()

    def _discard(self):
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def abort(self):
        self._discard()
        if self._fresh and os.path.isdir(self.path):
            # A layout this run began is removed whole, unless some other run has named images in it meanwhile;
            # a directory that was there (empty) stays, empty again.
            with contextlib.suppress(OSError), self._layout_lock():
                if not os.path.exists(os.path.join(self.path, 'index.json')):
                    if self._created:
                        shutil.rmtree(self.path, ignore_errors=True)
                    else:
                        for name in os.listdir(self.path):
                            full = os.path.join(self.path, name)
                            if os.path.isdir(full) and not os.path.islink(full):
                                shutil.rmtree(full, ignore_errors=True)
                            else:
                                os.unlink(full)
        self._fresh = self._created = False


def _platform_text(text):
    """True when an image's 'os/arch[/variant]' names a real platform (both parts present)."""
    parts = (text or '').split('/')
    return 2 <= len(parts) <= 3 and all(parts)


def _present_size(path, size):
    """The size of the blob file at `path` when it is a regular file of `size` bytes (any when None), else None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return None
    return st.st_size
