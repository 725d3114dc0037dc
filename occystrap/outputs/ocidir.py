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
from occystrap.pipeline import POLL_SECONDS, ImageOutput, layer_cost

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
        """The ref name `image` is written under (None: unnamed), reserved for it."""
        ref = self.fixed or image.tag
        if ref is None:
            return None
        with self._lock:
            holder = self._taken.setdefault(ref, image.reference)
        if holder != image.reference:
            raise OccystrapError('%s: ref %s of %s is taken by %s in this run (%s names images by their tags)'
                                 % (image.reference, oci.shown(ref), self.where, holder, self.where))
        return ref

    def release(self, ref, image):
        with self._lock:
            if ref is not None and self._taken.get(ref) == image.reference:
                del self._taken[ref]


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


class OCIDirOutput(ImageOutput):
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

    def _store(self, digest, size, produce):
        """Make blobs/<alg>/<hex> hold the blob `digest`, written by `produce(final path)` unless it is there (a
        regular file of `size` bytes, any size when None) or another thread is writing it. Returns its size."""
        final = os.path.join(self.path, oci.blob_path(digest))
        with self._lock:
            future = self._inflight.get(digest)
            if future is None:
                present = _present_size(final, size)
                if present is not None:
                    return present
                future = self._inflight[digest] = concurrent.futures.Future()
                mine = True
            else:
                mine = False
        if not mine:
            while True:     # in short steps, so that a cancelled run is noticed (AGENTS.md)
                try:
                    return future.result(timeout=POLL_SECONDS)
                except concurrent.futures.TimeoutError:
                    self.ctx.cancellation.check()
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            written = produce(final)
            self.ctx.stats.add(nbytes=written)
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

    def _store_bytes(self, digest, data):
        def produce(final):
            self._publish_bytes(final, data)
            return len(data)
        return self._store(digest, len(data), produce)

    def _store_layer(self, layer):
        if layer.origin is not None:
            origin = layer.origin

            def copy(out):
                with origin.open_verified() as reader:
                    return streams.copy_verified(reader, out)

            def produce(final):
                return self._publish(final, copy)

            size = self._store(origin.digest, origin.size, produce)
            return dataclasses.replace(layer_descriptor(layer), size=size)

        def produce_uncompressed(final):
            path = layer.materialize(self.ctx.workdir)
            self._link_or_copy(path, final)
            return os.path.getsize(final)

        size = self._store(layer.diffid, None, produce_uncompressed)
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
        ref = self.refs.claim(image)
        try:
            self._prepare()
            layers = self.ctx.map(self._store_layer, image.layers, cost=layer_cost)
            self._store_bytes(image.config_digest, image.config_bytes)
            raw, media_type = image_manifest(image, layers)
            digest = oci.digest_of(raw)
            self._store_bytes(digest, raw)
            change = digest_change(image, digest)
            if change:
                self.ctx.warn(change)
        except BaseException:
            self.refs.release(ref, image)
            raise
        with self._lock:
            self._entries.append(index_entry(oci.Descriptor(media_type, digest, len(raw)), ref))

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


def _present_size(path, size):
    """The size of the blob file at `path` when it is a regular file of `size` bytes (any when None), else None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return None
    return st.st_size
