"""ocidir:///PATH[?ref=NAME]: images from an OCI image layout directory (what skopeo calls `oci:PATH:REF`).

With `?ref=NAME` the one image whose `org.opencontainers.image.ref.name` annotation is NAME; without it every
image index.json lists (a multi-image source when there are several). Images are named as `tar://` names the
images of an OCI layout: the `io.containerd.image.name` annotation when there is one, else the directory's name
with the ref name as the tag, else the directory's name and the manifest digest.

The layout is read by the one reader of OCI layouts, `occystrap.inputs.layout` (digests, names, sizes and nesting
checked there), with the directory as its store of files. The store opens files one directory at a time below
PATH without following symlinks, and reads only regular files: a layout whose blob is a symlink (to a host file,
say) or a FIFO is refused, never read or waited on.
"""

import errno
import os
import stat
import threading

from occystrap import oci
from occystrap.errors import CorruptImageError, OccystrapError, UsageError
from occystrap.inputs.layout import Layout, default_name, settings_platform, valid_ref_name
from occystrap.pipeline import ImageInput

PEEK = 4   # bytes enough to tell gzip, zstd and plain tar apart


def ref_option(uri):
    """The `?ref=NAME` of an ocidir:// or tar:// URI (None when absent), checked: a tag, or NAME[:TAG]."""
    ref = uri.options.get('ref')
    if ref is not None and not valid_ref_name(ref):
        raise UsageError('bad ref %s in %s: a ref is a tag (letters, digits, _ . -) or NAME[:TAG] as in '
                         'registry:// URIs' % (oci.shown(ref), uri))
    return ref


class DirectoryStore:
    """The files of a layout directory, as `occystrap.inputs.layout` reads a store (see its module docstring)."""

    noun = 'file'

    def __init__(self, root, shown):
        self.root = root
        self.shown = shown
        self.what = 'OCI layout %s' % shown

    def _fail(self, message):
        raise CorruptImageError('%s %s' % (self.what, message))

    def source(self, name):
        return 'OCI layout %s file %s' % (self.shown, name)

    def _root(self):
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OccystrapError('OCI layout %s does not exist' % self.shown)
        except NotADirectoryError:
            raise OccystrapError('OCI layout %s is not a directory (ocidir:// names a layout directory; a layout '
                                 'in a tarball is tar://)' % self.shown)
        except OSError as e:
            raise OccystrapError('cannot read OCI layout %s: %s' % (self.shown, e.strerror or e))

    def _open(self, name):
        """A file descriptor of the regular file `name` ('blobs/sha256/<hex>') below the root, or None when there
        is no such file. Symlinks anywhere below the root and files that are not regular are refused."""
        parts = name.split('/')
        directory = self._root()
        try:
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                    dir_fd=directory)
                except FileNotFoundError:
                    return None
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        self._fail('has %s where a directory should be, not a directory' % part)
                    raise OccystrapError('cannot read %s: %s' % (self.source(name), e.strerror or e))
                os.close(directory)
                directory = inner
            last = parts[-1]
            try:
                # Look before opening: opening a FIFO waits for a writer, opening a device may act on it.
                if not stat.S_ISREG(os.stat(last, dir_fd=directory, follow_symlinks=False).st_mode):
                    self._fail('%s %s is not a regular file (a symlink, a directory or a device)' % (self.noun, name))
                fd = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    self._fail('%s %s is a symlink, which is not read' % (self.noun, name))
                raise OccystrapError('cannot read %s: %s' % (self.source(name), e.strerror or e))
        finally:
            os.close(directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):     # replaced between the look and the open
            os.close(fd)
            self._fail('%s %s is not a regular file' % (self.noun, name))
        return fd

    def _must_open(self, name):
        fd = self._open(name)
        if fd is None:
            self._fail('has no %s %s' % (self.noun, name))
        return fd

    def size(self, name):
        fd = self._open(name)
        if fd is None:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read(self, name, limit):
        with os.fdopen(self._must_open(name), 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                self._fail('%s %s is %d bytes, too large for metadata' % (self.noun, name, size))
            data = f.read(limit + 1)
        if len(data) > limit:
            self._fail('%s %s grew past %d bytes while it was read' % (self.noun, name, limit))
        return data

    def head(self, name, count=PEEK):
        with os.fdopen(self._must_open(name), 'rb') as f:
            return f.read(count)

    def opener(self, name):
        """A callable giving a fresh unbuffered reader of the file each time (each with its own descriptor)."""
        return lambda: os.fdopen(self._must_open(name), 'rb', buffering=0)


class OCIDirInput(ImageInput):
    """Images from an OCI image layout directory (`ocidir:///PATH[?ref=NAME]`)."""

    def __init__(self, uri, ctx):
        super().__init__(uri, ctx)
        self.path = uri.path
        self.ref_name = ref_option(uri)
        self.layout = Layout(DirectoryStore(self.path, self.path), default_name(self.path))
        self._lock = threading.Lock()
        self._groups = None

    def _ensure(self):
        with self._lock:
            if self._groups is None:
                entries = self.layout.entries()
                if self.ref_name is not None:
                    chosen = [entry for entry in entries if entry.ref_name == self.ref_name]
                    if not chosen:
                        names = sorted({oci.shown(e.ref_name) for e in entries if e.ref_name}) or ['no named images']
                        raise OccystrapError('OCI layout %s has no image named %s (it has: %s)'
                                             % (self.path, oci.shown(self.ref_name), ', '.join(names)))
                    entries = chosen
                self._groups = self.layout.groups(entries)
            return self._groups

    def references(self):
        return list(self._ensure())

    @property
    def multi(self):
        return len(self._ensure()) > 1

    def _entries(self, ref):
        groups = self._ensure()
        entries = groups.get(ref)
        if not entries:
            names = ', '.join(str(r) for r in groups) or 'none'
            raise OccystrapError('OCI layout %s has no image %s (it has: %s)' % (self.path, ref, names))
        return entries

    def open(self, ref, resolved=None, child=None):
        """The Image a name stands for: the platform of the settings, or `child` (a descriptor of the index
        `resolved` holds) when given."""
        return self.layout.image(self._entries(ref), ref, settings_platform(self.ctx.settings), str(self.uri),
                                 start=child)

    # --- whole indexes (mirror.Copier): an index in a layout is copied as it is, its digest kept ----------------

    def resolve(self, ref):
        """What the name stands for, read once: a model.SourceManifest (an index or an image manifest)."""
        return self.layout.source_manifest(self._entries(ref), ref, settings_platform(self.ctx.settings))

    def copy_child(self, ref, descriptor):
        return self.layout.copy_child(descriptor)

    def copy_index(self, ref, resolved, children=None):
        children = list(resolved.document.manifests if children is None else children)
        return self.layout.copy_index(ref, resolved, children, str(self.uri))

    # --- the small commands (tags, digest, manifest, config) ---------------------------------------------------

    def tags(self):
        """The references of the images the layout names (by their ref names), in index.json order."""
        return [str(ref) for ref, entries in self._ensure().items() if ref.tag and entries[0].error is None]

    def manifest_bytes(self, ref):
        """The exact bytes of what the name's index.json entry points at (an index for a multi-platform name)."""
        return self.layout.manifest_bytes(self._entries(ref), ref, settings_platform(self.ctx.settings))

    def config_bytes(self, ref):
        """The exact config blob of the image the name stands for."""
        return self.layout.config_bytes(self._entries(ref), ref, settings_platform(self.ctx.settings))
