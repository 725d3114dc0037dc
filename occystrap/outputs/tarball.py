"""Write images into one tarball that `docker load`, `podman load` and `skopeo copy docker-archive:` accept.

Layout: the combined one Docker 25+ `docker save` writes, which is at once a docker-archive and an OCI image
layout (so `skopeo copy oci-archive:` reads it too):

```
blobs/sha256/<diffid-hex>        each layer once, an uncompressed tar (so its blob digest is its diffid)
blobs/sha256/<config-hex>        the image config, exactly the source's bytes
blobs/sha256/<manifest-hex>      an OCI manifest per image
index.json, oci-layout           the OCI layout view (ref.name and io.containerd.image.name annotations)
manifest.json                    [{Config, RepoTags, Layers}] with paths into blobs/, the docker-archive view
repositories                     {name: {tag: <top layer hex>}} for old docker load versions
```

Chosen over the legacy `<id>/layer.tar` layout because skopeo 1.9.3 accepts it both as `docker-archive:` and as
`oci-archive:` (checked by tests/test_tarball_output.py; podman load too), and Docker's loader only follows
manifest.json paths.

Every layer is written once, uncompressed, with as few copies as it can be:

- a blob that is its own diffid (the uncompressed layers of a docker save tarball) is streamed straight from its
  source and verified at its end (a 1 GB tar-to-tar copy went from 12 s to 7 s here);
- of the others, the largest is decompressed straight into the tarball while holding its lock: its header is
  written with size 0 and patched in place once the size is known (a 30 MB single-layer pull no longer writes,
  reads and writes again a 75 MB temporary file);
- the rest are materialized (fetched, decompressed, verified) into temporary files in parallel (-j) meanwhile and
  copied in with copy_file_range, in the kernel.

An image that fails half way is cut back out of the tarball, so the images before it still finalize. Several images
(and several threads under -J) share one tarball and each layer is stored once. Every member has fixed metadata
(mtime 0, uid/gid 0, no user names), so the same images give a byte-identical tarball (for several images, when
written in the same order, e.g. -J 1). The tarball is written to `<path>.partial-<random>` beside the destination
and renamed into place by finalize(); abort() deletes it. Like docker save and skopeo it is not fsync'ed: the rename
makes it appear whole or not at all to other programs, and `sync` makes it durable when that matters (fsync cost
0.13 s per 75 MB here).

Destinations that are not a path we can rename onto: `tar://-` is standard output (refused on a terminal, as
docker save does), and a FIFO, a character device or an already open file (`/dev/stdout`, `/proc/self/fd/N`) is
written into directly. Such a sink may be a pipe, so it is written strictly in order: every layer is materialized
first (no header to patch later), nothing is cut back, and a failure part way leaves the stream unusable, so the
run fails. The bytes are the same either way. A symlink to a regular file (or to nothing yet) is written through:
the temporary file goes beside its target, which is replaced, and the symlink stays. Anything else that exists and
is not a regular file (a directory, a socket, a block device) is refused.
"""

import contextlib
import dataclasses
import errno
import io
import json
import os
import stat
import tarfile
import tempfile
import threading

from occystrap import oci, streams, uris
from occystrap.errors import CorruptImageError, OccystrapError, UsageError
from occystrap.inputs.layout import split_reference
from occystrap.oci import MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST, blob_path
from occystrap.outputs.ocidir import (LAYOUT_MARKER, LayoutCounters, LayoutForms, RefNames, check_ref_for_run,
                                      digest_change, image_manifest, index_entry, layer_descriptor, merge_entries,
                                      new_index_document, stored_form)
from occystrap.pipeline import ImageOutput, Written, layer_cost

FIXED_MTIME = 0
FORMATS = ('docker', 'oci')
REF_NAME = 'org.opencontainers.image.ref.name'
CONTAINERD_NAME = 'io.containerd.image.name'


def canonical_json(value):
    """Compact JSON with a fixed key order, so the same content always gives the same bytes (and digests)."""
    return json.dumps(value, separators=(',', ':'), sort_keys=True).encode()


def fully_qualified(name):
    """The name as containerd records it: 'busybox' -> 'docker.io/library/busybox'."""
    first = name.split('/', 1)[0]
    if '/' in name and ('.' in first or ':' in first or first == 'localhost'):
        return name
    if '/' not in name:
        return 'docker.io/library/' + name
    return 'docker.io/' + name


def layer_descriptor_key(layer):
    """The digest a layer's blob is stored under in an OCI archive: its original blob's, else its diffid."""
    return layer.origin.digest if layer.origin is not None else layer.diffid


def streams_directly(layer):
    """True when a layer's blob is its own uncompressed tar (its digest is the diffid) of known size."""
    origin = layer.origin
    return (layer.path is None and origin is not None and origin.size is not None
            and origin.digest == layer.diffid)


def ustar_size_patched(header, size):
    """A 512-byte ustar header with its size field set to `size` and its checksum recomputed.

    Sizes from 8 GiB up use the base-256 form (GNU tar, bsdtar, Go's archive/tar and Python's tarfile read it).
    """
    header = bytearray(header)
    if size < 8 ** 11:
        header[124:136] = b'%011o\0' % size
    else:
        header[124:136] = b'\x80' + size.to_bytes(11, 'big')
    header[148:156] = b' ' * 8
    header[148:156] = b'%06o\0 ' % sum(header)
    return bytes(header)


def _copy_range(src, out, size):
    """Copy `size` bytes from file `src` to file `out` at their positions, in the kernel where it can."""
    out.flush()
    src_fd, out_fd = src.fileno(), out.fileno()
    out_offset = out.tell()
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, out_fd, size - done, None, out_offset + done)
            if n == 0:
                break
            done += n
    except OSError:       # a filesystem or kernel without it: copy through user space from where it stopped
        src.seek(done)
        out.seek(out_offset + done)
        while done < size:
            chunk = src.read(min(streams.CHUNK, size - done))
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
    if done != size:
        raise CorruptImageError('layer file %s ended after %d of its %d bytes' % (src.name, done, size))
    out.seek(out_offset + size)
    return size


class _Sink(io.RawIOBase):
    """A write-only file that counts its position, for sinks that cannot tell() or seek (pipes, FIFOs, devices)."""

    def __init__(self, fd, name):
        self.fd = fd
        self.name = name
        self.position = 0

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def tell(self):
        return self.position

    def write(self, data):
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        self.position += done
        return done

    def copy_from(self, src, size):
        """Append `size` bytes of file `src` from its start, in the kernel where it can (sendfile)."""
        src_fd = src.fileno()
        done = 0
        try:
            while done < size:
                n = os.sendfile(self.fd, src_fd, done, size - done)
                if n == 0:
                    break
                done += n
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            while done < size:      # a sink sendfile cannot write to: through user space from where it stopped
                chunk = os.pread(src_fd, min(streams.CHUNK, size - done), done)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.fd, view):]
                done += len(chunk)
        self.position += done
        return done


def destination_kind(path):
    """How a tar:// destination is written: ('stdout', None), ('file', real path) or ('stream', path).

    'file' is written under a temporary name beside the real path and renamed onto it; 'stream' is opened and
    written in order. Raises OccystrapError for what must never be replaced.
    """
    if path == '-':
        return 'stdout', None
    try:
        st = os.stat(path)          # follows symlinks: what a write would reach
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OccystrapError('cannot write %s: %s' % (path, e.strerror or e))
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        return 'stream', path
    real = os.path.realpath(path)
    if real.startswith('/proc/'):
        # /dev/stdout and /proc/self/fd/N: an open file of ours, not a path to rename onto.
        return 'stream', path
    if st is None:
        if os.path.lexists(path) and not os.path.isdir(os.path.dirname(real)):
            raise OccystrapError('cannot write %s: it is a symlink to %s, whose directory does not exist'
                                 % (path, real))
        return 'file', real
    if stat.S_ISDIR(st.st_mode):
        raise OccystrapError('cannot write %s: it is a directory, tar:// needs a file path' % path)
    if not stat.S_ISREG(st.st_mode):
        kind = 'a socket' if stat.S_ISSOCK(st.st_mode) else 'a block device' if stat.S_ISBLK(st.st_mode) else \
            'not a regular file'
        raise OccystrapError('cannot write %s: it is %s, which tar:// never replaces' % (path, kind))
    return 'file', real


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class TarballOutput(LayoutForms, ImageOutput):
    """Images into one tarball file (`tar:///path.tar`)."""

    @classmethod
    def holds_indexes_for(cls, uri):
        return uri.options.get('format') == 'oci'

    def __init__(self, uri, ctx, **run):
        super().__init__(uri, ctx, **run)
        self.kind, target = destination_kind(uri.path)
        if self.kind == 'stdout':
            if ctx.settings.output_format == 'json':
                raise UsageError('tar://- writes the tarball to standard output, where -O json would go too')
            if os.isatty(1):
                raise OccystrapError('cannot write tar://- : standard output is a terminal; redirect it or pipe it')
            self.path = 'standard output'
            self.directory = None
        else:
            self.path = os.path.abspath(uri.path)
            # The real file replaced by the rename (the symlink the user named stays); temporary files beside it.
            self.real_path = os.path.abspath(target)
            self.directory = os.path.dirname(self.real_path)
            if not os.path.isdir(self.directory):
                raise OccystrapError('cannot write %s: directory %s does not exist' % (uri.path, self.directory))
        # Big temporary layer files go beside the destination, where the user expects the space to be used.
        if self.kind == 'file':
            ctx.prefer_workdir_parent(self.directory)
        self.sequential = self.kind != 'file'    # a pipe or device: no header patched later, nothing cut back
        self._broken = None
        self.format = uri.options.get('format', 'docker')
        if self.format not in FORMATS:
            raise UsageError('bad format %s in %s: use format=docker (docker-archive, the default) or format=oci '
                             '(oci-archive)' % (oci.shown(self.format), uri))
        self.ref = check_ref_for_run(uri, self.multi_image)
        self.refs = RefNames(self.ref, str(uri))
        # An oci-archive holds whole indexes as ocidir:// does (the copier's index side below); a docker-archive
        # holds images, one platform each.
        self.holds_indexes = self.format == 'oci'
        self._mode = 0o666 & ~_umask()
        self._lock = threading.Lock()
        self._file = None
        self._tar = None
        self._partial = None
        self._dirs = set()
        self._blobs = {}           # digest -> size of every blob already in the tarball
        self._entries = []         # manifest.json entries, in the order images were written
        self._descriptors = []     # index.json entries
        self._repositories = {}

    # --- writing members (callers hold the lock) ----------------------------------------------------------

    def _open(self):
        if self._broken is not None:
            raise OccystrapError(self._broken)
        if self._tar is None:
            try:
                if self.kind == 'stdout':
                    self._file = io.BufferedWriter(_Sink(os.dup(1), self.path), buffer_size=streams.CHUNK)
                elif self.kind == 'stream':
                    # No O_CREAT: if the FIFO or device went away meanwhile, fail rather than create a file.
                    fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
                    self._file = io.BufferedWriter(_Sink(fd, self.path), buffer_size=streams.CHUNK)
                else:
                    fd, self._partial = tempfile.mkstemp(prefix=os.path.basename(self.real_path) + '.partial-',
                                                         dir=self.directory)
                    os.fchmod(fd, self._mode)
                    self._file = os.fdopen(fd, 'wb')
            except OSError as e:
                raise OccystrapError('cannot write %s: %s' % (self.path, e.strerror or e))
            self._tar = tarfile.open(fileobj=self._file, mode='w', format=tarfile.PAX_FORMAT)
            self._tar.copybufsize = streams.CHUNK
        return self._tar

    def _info(self, name, size=0, directory=False):
        info = tarfile.TarInfo(name)
        info.mtime = FIXED_MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ''
        if directory:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
        else:
            info.size = size
            info.mode = 0o644
        return info

    def _add_dirs(self, name):
        parts = name.split('/')[:-1]
        for depth in range(1, len(parts) + 1):
            directory = '/'.join(parts[:depth])
            if directory not in self._dirs:
                self._tar.addfile(self._info(directory, directory=True))
                self._dirs.add(directory)

    def _add_bytes(self, name, data):
        self._add_dirs(name)
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def _add_blob_bytes(self, digest, data):
        if digest not in self._blobs:
            self._add_bytes(blob_path(digest), data)
            self._blobs[digest] = len(data)

    def _add_layer(self, layer):
        name = blob_path(layer.diffid)
        self._add_dirs(name)
        if layer.path is None:
            # A blob that is its own diffid, streamed from the source and verified at its end.
            size = self._add_blob_stream(name, layer.origin)
        else:
            with layer.open() as data:
                size = os.fstat(data.fileno()).st_size
                self._write_member(self._info(name, size), lambda out: self._copy_in(data, out, size))
        self._blobs[layer.diffid] = size

    def _add_blob_stream(self, name, blob):
        """Stream a blob of known size straight from its source into member `name`, verified at its end; a
        mismatch makes the caller roll the tarball back to before this image."""
        self._add_dirs(name)
        size = blob.size
        verified = blob.open_verified()
        # tarfile wants full reads; the buffer gathers them from sources (sockets) that return less.
        with io.BufferedReader(verified, buffer_size=streams.CHUNK) as data:
            self._tar.addfile(self._info(name, size), data)
            if data.read(1):
                raise CorruptImageError('blob %s is longer than the %d bytes it should have' % (blob.digest, size))
            verified.check()
        return size

    def _add_file(self, name, path):
        """Append the file at `path` as member `name`, copied in the kernel where it can be; returns its size."""
        self._add_dirs(name)
        with open(path, 'rb') as data:
            size = os.fstat(data.fileno()).st_size
            self._write_member(self._info(name, size), lambda out: self._copy_in(data, out, size))
        return size

    def _stream_layer(self, layer):
        """Decompress a layer straight into the tarball: its header goes first with size 0 and is rewritten once
        the size is known (the tarball is a regular file, so the header can be patched in place)."""
        name = blob_path(layer.diffid)
        self._add_dirs(name)

        def copy(out):
            reader = layer.open()
            try:
                size = streams.copy_verified(reader, out)
            finally:
                reader.close()
            return size

        size = self._write_member(self._info(name, 0), copy)
        self._blobs[layer.diffid] = size

    def _copy_in(self, data, out, size):
        if not self.sequential:
            return _copy_range(data, out, size)
        out.flush()
        done = out.raw.copy_from(data, size)
        if done != size:
            raise CorruptImageError('layer file %s ended after %d of its %d bytes' % (data.name, done, size))
        return size

    def _write_member(self, info, copy):
        """Append one member whose data `copy(file)` writes (returning its size), keeping TarFile's bookkeeping.

        The header is written before the data and patched afterwards when the size differs from info.size (unknown
        beforehand, or too large for the octal field).
        """
        if info.size >= 8 ** 11:
            info.size = 0
        header = info.tobuf(tarfile.USTAR_FORMAT)
        out = self._file
        start = self._tar.offset
        out.write(header)
        size = copy(out)
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            out.write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))
        if size != info.size:
            out.flush()
            os.pwrite(out.fileno(), ustar_size_patched(header, size), start)
            info.size = size
        self._tar.offset = start + len(header) + size + (tarfile.BLOCKSIZE - remainder if remainder else 0)
        self._tar.members.append(info)
        return size

    def _snapshot(self):
        return (self._tar.offset, len(self._tar.members), dict(self._blobs), set(self._dirs),
                json.dumps([self._entries, self._descriptors, self._repositories]))

    def _restore(self, snapshot):
        """Cut the tarball back to where it was before an image that failed half way through its members."""
        offset, members, self._blobs, self._dirs, state = snapshot
        self._entries, self._descriptors, self._repositories = json.loads(state)
        self._file.flush()
        self._file.seek(offset)
        self._file.truncate()
        # TarFile keeps its write position and member list in these attributes; put them back to match the file.
        self._tar.offset = offset
        del self._tar.members[members:]

    # --- ImageOutput --------------------------------------------------------------------------------------

    def write(self, image):
        if image.tag:
            # The name and tag become RepoTags, repositories and annotations: check them before anything is written.
            what = 'cannot write %r into %s' % (image.reference, self.uri)
            uris.validate_repository(image.name, what, host=True)
            uris.validate_tag(image.tag, what)
        if self.format == 'oci':
            return self._write_oci(image)
        with self._lock:
            stored = set(self._blobs)
        # Layers another image already stored are not fetched again. A blob that is its own diffid (an uncompressed
        # layer of a docker save tarball) of known size goes straight into the tarball: materializing it would
        # only copy it once more. Of the others, the largest is decompressed straight into the tarball too, while
        # the rest are materialized (fetched, decompressed, verified) in parallel and then appended.
        needed, seen = [], set()
        for layer in image.layers:
            if layer.diffid not in stored and layer.diffid not in seen:
                needed.append(layer)
                seen.add(layer.diffid)
        fetch = [layer for layer in needed if not streams_directly(layer)]
        direct = max((layer for layer in fetch if layer.path is None and layer.origin is not None),
                     key=lambda layer: layer.origin.size or 0, default=None)
        first = None
        if self.sequential:
            # Nothing is written before every layer is verified on disk: a pipe cannot be cut back or patched.
            # The layer a file would have streamed still goes first, so that both give the same bytes.
            fetch, direct, first = needed, None, direct

        def stream():
            tasks = [(self._stream_layer, direct)] + [(self._materialize, layer) for layer in fetch
                                                      if layer is not direct]
            self.ctx.map(lambda task: task[0](task[1]), tasks, cost=lambda task: layer_cost(task[1]))

        def append():
            if first is not None:
                self._add_layer(first)
            self._append(image, needed)

        try:
            self._write_image(direct is not None, lambda: self.ctx.map(self._materialize, fetch, cost=layer_cost),
                              stream, append)
        finally:
            for layer in needed:
                layer.release()

    def _write_image(self, streams_one, fetch, stream, append):
        """Write one image's members: `fetch()` first, outside the lock, unless a layer is streamed straight into
        the tarball (`streams_one`); then, holding the lock, `stream()` in that case and `append()`, under a
        snapshot so that a failure cuts the whole image back out. OSErrors name the destination."""
        if not streams_one:
            try:
                fetch()
            except OSError as e:    # the temporary files beside the destination: a full disk, say
                raise OccystrapError('cannot write %s: %s' % (self.path, e.strerror or e))
        with self._lock:
            self._open()
            before = len(self._blobs)
            snapshot = self._snapshot()
            try:
                if streams_one:
                    # Holding the lock: the streamed member sits between this image's snapshot and its other
                    # members, so a failure can still cut the whole image back out.
                    stream()
                append()
            except BaseException as e:
                self._roll_back(snapshot, e)
                if isinstance(e, OSError):
                    raise OccystrapError('cannot write %s: %s' % (self.path, e.strerror or e))
                raise
            added = sum(self._blobs[digest] for digest in list(self._blobs)[before:])
        self.ctx.stats.add(nbytes=added)

    def _roll_back(self, snapshot, error):
        """Cut a failed image back out; where that cannot be done the tarball is unusable and the run fails."""
        reason = 'cannot write %s: %s' % (self.path, getattr(error, 'strerror', None) or error)
        if self.sequential:
            offset, members, self._blobs, self._dirs, state = snapshot
            if self._file.tell() != offset:
                self._broken = '%s (an image failed part way into a stream that cannot be cut back)' % reason
                return
            self._entries, self._descriptors, self._repositories = json.loads(state)
            del self._tar.members[members:]
            return
        try:
            self._restore(snapshot)
        except OSError:
            self._broken = reason

    def _materialize(self, layer):
        layer.materialize(self.ctx.workdir)

    def _append(self, image, needed):
        for layer in needed:
            if layer.diffid not in self._blobs:
                self._add_layer(layer)
        config_digest = image.config_digest
        self._add_blob_bytes(config_digest, image.config_bytes)
        layer_paths = [blob_path(layer.diffid) for layer in image.layers]
        manifest = oci.Manifest.build(
            oci.Descriptor(MEDIA_OCI_CONFIG, config_digest, len(image.config_bytes)),
            [oci.Descriptor(MEDIA_OCI_LAYER_TAR, layer.diffid, self._blobs[layer.diffid]) for layer in image.layers],
            MEDIA_OCI_MANIFEST, sort_keys=True)
        manifest_bytes = manifest.raw
        manifest_digest = manifest.digest
        self._add_blob_bytes(manifest_digest, manifest_bytes)

        name, tag = self.docker_name(image)
        repo_tag = '%s:%s' % (name, tag) if tag else None
        entry = next((e for e in self._entries
                      if e['Config'] == blob_path(config_digest) and e['Layers'] == layer_paths), None)
        if entry is None:
            entry = {'Config': blob_path(config_digest), 'RepoTags': None, 'Layers': layer_paths}
            self._entries.append(entry)
        descriptor = oci.Descriptor(MEDIA_OCI_MANIFEST, manifest_digest, len(manifest_bytes)).to_dict()
        if repo_tag:
            if repo_tag not in (entry['RepoTags'] or []):
                entry['RepoTags'] = (entry['RepoTags'] or []) + [repo_tag]
                descriptor['annotations'] = {CONTAINERD_NAME: '%s:%s' % (fully_qualified(name), tag), REF_NAME: tag}
                self._descriptors.append(descriptor)
            if image.layers:
                self._repositories.setdefault(name, {})[tag] = image.layers[-1].diffid.partition(':')[2]
        elif not any(d['digest'] == manifest_digest for d in self._descriptors):
            self._descriptors.append(descriptor)

    def docker_name(self, image):
        """(name, tag) written into RepoTags for an image: ?ref= when given, else the source's fully qualified name
        (registry host included, as skopeo writes it) and tag; tag None for an image known only by digest."""
        if self.ref is not None:
            name, tag = split_reference(self.ref)
            return name, tag or 'latest'
        return getattr(image, 'qualified_name', image.name), image.tag

    # --- format=oci: an OCI image layout, blobs as they came (skopeo's oci-archive) ---------------------------

    def _write_oci(self, image, named=True):
        """Append one image (named in index.json unless `named` is False: an image of an index); returns a
        pipeline.Written."""
        ref = self.refs.claim(image) if named else None
        fetched = {}                    # blob digest -> a verified temporary file of its bytes
        written = []
        needed, seen = [], set()
        with self._lock:
            stored = set(self._blobs)
        for layer in image.layers:
            key = layer_descriptor_key(layer)
            if key not in stored and key not in seen:
                needed.append(layer)
                seen.add(key)
        # As for docker archives: the largest blob streams straight into the tarball (here: as it came, no
        # inflating), the others are fetched into temporary files meanwhile and copied in.
        direct = max((layer for layer in needed if layer.origin is not None and layer.origin.size is not None),
                     key=lambda layer: layer.origin.size, default=None)

        first = None
        if self.sequential:
            # A pipe cannot be cut back: every blob is fetched and verified first, the one a file would have
            # streamed still goes first, so that both give the same bytes.
            direct, first = None, direct

        def prepare(layer):
            if layer is direct:
                self._blobs[layer.origin.digest] = self._add_blob_stream(blob_path(layer.origin.digest), layer.origin)
            elif layer.origin is not None:
                with streams.temporary_file(self.ctx.workdir, 'blob-', '.blob') as (out, tmp), \
                        layer.origin.open_verified() as reader:
                    streams.copy_verified(reader, out)
                fetched[layer.origin.digest] = tmp
            else:
                layer.materialize(self.ctx.workdir)

        def cost(layer):
            return float('inf') if layer is direct else layer_cost(layer)

        def append():
            if first is not None:
                self._blobs[first.origin.digest] = self._add_file(blob_path(first.origin.digest),
                                                                  fetched[first.origin.digest])
            written.append(self._append_oci(image, needed, fetched, ref, named))

        def fetch_all():
            self.ctx.map(prepare, needed, cost=cost)

        try:
            self._write_image(direct is not None, fetch_all, fetch_all, append)
        except BaseException:
            self.refs.release(ref, image)
            raise
        finally:
            for path in fetched.values():
                with contextlib.suppress(OSError):
                    os.unlink(path)
            for layer in needed:
                layer.release()
        descriptor = written[0]
        return Written(descriptor.digest, LayoutCounters(uploaded=len(needed) + 1, manifests=1), descriptor)

    def _append_oci(self, image, needed, fetched, ref, named=True):
        for layer in needed:
            key = layer_descriptor_key(layer)
            if key not in self._blobs:
                path = fetched[key] if layer.origin is not None else layer.path
                self._blobs[key] = self._add_file(blob_path(key), path)
        layers = [dataclasses.replace(layer_descriptor(layer), size=self._blobs[layer_descriptor_key(layer)])
                  for layer in image.layers]
        self._add_blob_bytes(image.config_digest, image.config_bytes)
        raw, media_type = image_manifest(image, layers)
        digest = oci.digest_of(raw)
        self._add_blob_bytes(digest, raw)
        change = digest_change(image, digest)
        if change:
            self.ctx.warn(change)
        descriptor = oci.Descriptor(media_type, digest, len(raw))
        if named:
            self._descriptors = merge_entries(self._descriptors, [index_entry(descriptor, ref)])
        return descriptor

    # --- format=oci: whole indexes (mirror.Copier), as ocidir:// holds them (LayoutForms) ----------------------

    def existing_digest(self, ref):
        """None: the tarball is written whole by every run, so nothing in it is ever left unchanged."""
        return None

    def target(self, ref):
        name = self.refs.name(ref)
        return '%s:%s' % (self.path, name) if name else self.path

    def missing_blobs(self, ref, blobs):
        with self._lock:
            return [blob for blob in blobs if blob.digest not in self._blobs]

    def write_child(self, image):
        """An image of an index, stored without a name (its index names it); the descriptor has its platform."""
        if image.tag:
            what = 'cannot write %r into %s' % (image.reference, self.uri)
            uris.validate_repository(image.name, what, host=True)
            uris.validate_tag(image.tag, what)
        written = self._write_oci(image, named=False)
        parts = (image.platform or '').split('/')
        if 2 <= len(parts) <= 3 and all(parts):
            written.descriptor = dataclasses.replace(written.descriptor, platform=oci.Platform.parse(image.platform))
        return written

    def write_index(self, copy, tag_child=False):
        """A model.ImageIndex into the archive: every blob once (fetched and verified -j at a time), every child
        manifest, the index, named by its ref (or, with `tag_child`, the one child named instead). Docker types
        are made OCI as ocidir:// makes them (stored_form). Returns a pipeline.Written."""
        copy, change = stored_form(copy, tag_child)
        ref = self.refs.claim(copy)
        with self._lock:
            stored = set(self._blobs)
        needed = [blob for blob in copy.blobs if blob.digest not in stored]
        fetched = {}
        result = []

        def fetch(blob):
            with streams.temporary_file(self.ctx.workdir, 'blob-', '.blob') as (out, tmp), \
                    blob.open_verified() as reader:
                streams.copy_verified(reader, out)
            fetched[blob.digest] = tmp

        def append():
            for blob in needed:
                if blob.digest not in self._blobs:
                    self._blobs[blob.digest] = self._add_file(blob_path(blob.digest), fetched[blob.digest])
            for child in copy.children:
                self._add_blob_bytes(child.digest, child.raw)
            if tag_child:
                (child,) = copy.children
                descriptor = oci.Descriptor(child.media_type, child.digest, len(child.raw))
            else:
                self._add_blob_bytes(copy.index.digest, copy.index.raw)
                descriptor = oci.Descriptor(copy.index.media_type, copy.index.digest, len(copy.index.raw))
            self._descriptors = merge_entries(self._descriptors, [index_entry(descriptor, ref)])
            result.append(descriptor)

        try:
            self._write_image(False, lambda: self.ctx.map(fetch, needed, cost=lambda blob: blob.size or 0), None,
                              append)
        except BaseException:
            self.refs.release(ref, copy)
            raise
        finally:
            for path in fetched.values():
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if change:
            self.ctx.warn(change)
        counters = LayoutCounters(uploaded=len(needed), present=len(copy.blobs) - len(needed),
                                  manifests=len(copy.children) + (0 if tag_child else 1))
        return Written(result[0].digest, counters, result[0])

    def put_index(self, ref, index, counters=None):
        """A new oci.Index (its children already written by write_child), named `ref`'s ref name."""
        name = self.refs.claim(ref)
        descriptor = oci.Descriptor(index.media_type, index.digest, len(index.raw))

        def append():
            self._add_blob_bytes(index.digest, index.raw)
            self._descriptors = merge_entries(self._descriptors, [index_entry(descriptor, name)])

        try:
            self._write_image(False, lambda: None, None, append)
        except BaseException:
            self.refs.release(name, ref)
            raise
        total = LayoutCounters(manifests=1)
        if counters is not None:
            total.add(counters)
        return Written(index.digest, total, descriptor)

    def finalize(self):
        with self._lock:
            self._open()
            try:
                if self.format == 'oci':
                    self._add_bytes('index.json', canonical_json(dict(new_index_document(),
                                                                      manifests=self._descriptors)))
                    self._add_bytes('oci-layout', LAYOUT_MARKER)
                else:
                    index = oci.Index.build([oci.Descriptor.from_dict(d, 'index.json entry')
                                             for d in self._descriptors], sort_keys=True)
                    self._add_bytes('index.json', index.raw)
                    self._add_bytes('manifest.json', canonical_json(self._entries))
                    self._add_bytes('oci-layout', canonical_json({'imageLayoutVersion': '1.0.0'}))
                    self._add_bytes('repositories', canonical_json(self._repositories))
                self._tar.close()
                self._file.close()
                if self._partial is not None:
                    os.rename(self._partial, self.real_path)
            except OSError as e:
                raise OccystrapError('cannot write %s: %s' % (self.path, e.strerror or e))
            self._tar = self._file = self._partial = None

    def abort(self):
        with self._lock:
            if self._file is not None:
                # Closing flushes the buffer, which fails again on a full disk; the file must go all the same.
                with contextlib.suppress(OSError, ValueError):
                    self._file.close()
            if self._partial:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._partial)
            self._tar = self._file = self._partial = None
