"""Safe application of layer tar streams onto a directory: the one extraction routine every unpacking output uses.

What it promises, whatever the layer says:

- Nothing outside `root` is created, changed or deleted. Paths are opened one component at a time from a file
  descriptor of the root with O_NOFOLLOW, so the extractor never writes through a symlink: a member whose parent
  path crosses a symlink (`evil -> /etc` then `evil/passwd`) is refused, as are members with `..` components.
  Absolute member names are taken relative to the root, as docker does.
- Symlinks are created as they are (absolute targets are interpreted inside the container), except relative targets
  that climb above the root (`up -> ../../..`), judged lexically from the link's own directory.
- Hard links must name something already extracted inside the root.
- Device nodes and FIFOs are skipped unless `allow_devices` is asked for and we run as root.
- Ownership (numeric uid/gid) is applied only when running as root; without root, set-id bits are dropped and
  directories stay owner-writable so later layers can still write into them.

Whiteouts (`whiteouts=`): APPLY deletes what `.wh.NAME` names and empties directories marked `.wh..wh..opq` of what
lower layers put there (a whiteout never hides an entry of its own layer); KEEP writes whiteout files as ordinary
files (the OCI layer format, untouched); OVERLAY turns them into overlayfs whiteouts (a 0/0 character device and the
`trusted.overlay.opaque` xattr), which needs root.

Every refusal is reported through `warn` with the member name and the reason, and listed in the summary.

Sizes: sparse members (GNU and PAX sparse formats) are written with holes (each data piece at its offset, then the
file cut to its real size), so a small tarball of a huge sparse file stays small on disk. `ExtractBudget` bounds
the file data one run's extractions write (`--max-extract-bytes`, counted as data bytes written, holes excluded);
going over it is an OccystrapError and the caller removes what was written. The budget also carries the run's
cancellation, looked at between members and between chunks of a file.
"""

import dataclasses
import errno
import logging
import os
import shutil
import stat
import tarfile
import threading

from occystrap import layertar, streams
from occystrap.errors import CorruptImageError, OccystrapError

LOG = logging.getLogger(__name__)

APPLY = 'apply'
KEEP = 'keep'
OVERLAY = 'overlay'

# Layers may carry extended attributes in these namespaces; trusted.* could steer overlayfs and is never taken.
XATTR_PREFIXES = ('user.', 'security.', 'system.posix_acl_')
# Errors that concern one member (a name too long, an operation this filesystem or user may not do), not the run.
MEMBER_ERRORS = (errno.ENAMETOOLONG, errno.EINVAL, errno.EPERM, errno.EEXIST, errno.EMLINK, errno.EOPNOTSUPP)
DIR_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass
class ExtractSummary:
    """What one extraction did: entries created, bytes of file data written, whiteouts handled, refusals."""

    files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    refused: list = dataclasses.field(default_factory=list)   # (member name, reason)

    def add(self, other):
        self.files += other.files
        self.bytes += other.bytes
        self.whiteouts += other.whiteouts
        self.refused.extend(other.refused)


class ExtractLimitError(OccystrapError):
    """An extraction would write more than --max-extract-bytes allows."""


class ExtractBudget:
    """How much file data the extractions of one run may still write, and the run's stop switch (thread safe)."""

    def __init__(self, max_bytes=None, cancellation=None):
        self.max_bytes = max_bytes
        self.cancellation = cancellation
        self.written = 0
        self._lock = threading.Lock()

    def charge(self, nbytes, what):
        """Count nbytes about to be written; raises ExtractLimitError past the limit, Interrupted when cancelled."""
        if self.cancellation is not None:
            self.cancellation.check()
        if self.max_bytes is None:
            return
        with self._lock:
            if self.written + nbytes > self.max_bytes:
                raise ExtractLimitError('%s: extracting it would write more than the %d bytes --max-extract-bytes '
                                        'allows for this run' % (what, self.max_bytes))
            self.written += nbytes


def run_budget(ctx):
    """The ExtractBudget of a run (one per RunContext, made on first use from its settings)."""
    budget = getattr(ctx, '_extract_budget', None)
    if budget is None:
        with ctx._lock:
            budget = getattr(ctx, '_extract_budget', None)
            if budget is None:
                budget = ctx._extract_budget = ExtractBudget(ctx.settings.max_extract_bytes,
                                                             getattr(ctx, 'cancellation', None))
    return budget


class WriteFailed(OccystrapError):
    """The destination of an extraction failed (full, read-only); `errno` says how."""

    def __init__(self, message, errno_=None):
        super().__init__(message)
        self.errno = errno_


class _Refused(Exception):
    """This member is not applied; the message says why."""


class _Missing(Exception):
    """A directory on the way does not exist (only raised when we were not asked to create it)."""


def is_root():
    return os.geteuid() == 0


def split_member_name(name):
    """The path components of a member name below the root; raises _Refused for a `..` component."""
    parts = layertar.member_parts(name)
    if '..' in parts:
        raise _Refused('has a .. component')
    return parts


def symlink_escapes(parent_parts, target):
    """True when a relative symlink target, followed from its directory, climbs above the root (lexically)."""
    if target.startswith('/'):
        return False
    depth = len(parent_parts)
    for part in target.split('/'):
        if part in ('', '.'):
            continue
        depth += -1 if part == '..' else 1
        if depth < 0:
            return True
    return False


class _Tree:
    """A root directory we only ever reach through file descriptors, never following a symlink."""

    def __init__(self, root):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cached = None            # (parts tuple, fd): consecutive members mostly share a directory

    def close(self):
        self.invalidate()
        os.close(self.root_fd)

    def invalidate(self):
        """Forget the cached directory fd (a directory may just have been removed or replaced)."""
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def open_dir(self, parts, create=False, on_create=None):
        """A new fd of the directory at `parts`, opened component by component without following symlinks.

        Missing directories are made (mode 0755) when `create`, reporting each to on_create(parts); otherwise
        _Missing is raised. A symlink or non-directory on the way raises _Refused.
        """
        parts = tuple(parts)
        if self._cached is not None and self._cached[0] == parts:
            return os.dup(self._cached[1])
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    next_fd = os.open(part, DIR_OPEN_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Missing()
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if on_create:
                        on_create(parts[:i + 1])
                    next_fd = os.open(part, DIR_OPEN_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    shown = '/'.join(parts[:i + 1])
                    if stat.S_ISLNK(st.st_mode):
                        raise _Refused('its parent %s is a symlink, which the extractor never writes through' % shown)
                    raise _Refused('its parent %s is not a directory' % shown)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        self.invalidate()
        self._cached = (parts, os.dup(fd))
        return fd


def _lstat(name, dir_fd):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _LayerApplier:
    """Applies one tar stream; holds the state a layer needs (its own entries, deferred directory metadata)."""

    def __init__(self, tree, whiteouts, allow_devices, xattrs, warn, what, budget=None):
        self.tree = tree
        self.budget = budget or ExtractBudget()
        self.whiteouts = whiteouts
        self.root = is_root()
        self.allow_devices = allow_devices and self.root
        self.xattrs = xattrs
        self.warn = warn
        self.what = what
        self.summary = ExtractSummary()
        self.ours = set()              # path tuples this layer created or wrote: whiteouts never hide them
        self.dir_meta = {}             # path tuple -> member, applied at the end so file writes keep mtimes right
        self.old_mtimes = {}           # path tuple -> (atime_ns, mtime_ns) of lower directories this layer changed
        self.whited = set()            # OVERLAY: path tuples this layer whited out (a directory there is opaque)

    # -- the member loop --------------------------------------------------------------------------------------------

    def apply(self, stream):
        try:
            tar = tarfile.open(fileobj=stream, mode='r|')
            for member in tar:
                tar.members = []       # stream mode would otherwise keep every header of a huge layer in memory
                self.budget.charge(0, self.what)
                try:
                    self.member(tar, member)
                except _Refused as e:
                    self.refuse(member.name, str(e))
                except OSError as e:
                    if e.errno not in MEMBER_ERRORS:
                        raise          # the destination itself is failing (full, read-only): stop
                    self.refuse(member.name, e.strerror or str(e))
            tar.close()
        except (tarfile.TarError, EOFError) as e:
            raise CorruptImageError('%s is not a valid tar stream: %s' % (self.what, e))
        self.finish_directories()
        return self.summary

    def refuse(self, name, reason):
        self.summary.refused.append((name, reason))
        self.warn('%s: refused %r: %s' % (self.what, name, reason))

    def member(self, tar, m):
        parts = split_member_name(m.name)
        if not parts:
            if m.isdir():
                return                 # the root itself: its metadata belongs to the caller
            raise _Refused('names the root directory itself')
        parent, base = parts[:-1], parts[-1]
        if base.startswith(layertar.WHITEOUT_PREFIX) and self.whiteouts != KEEP:
            return self.whiteout(parent, base)
        if m.isdev() and not self.allow_devices:
            kind = 'FIFO' if m.isfifo() else 'device node'
            raise _Refused('%s skipped (only extracted as root when devices are allowed)' % kind)
        if m.islnk():
            return self.hardlink(parent, base, m)
        if m.issym():
            if not m.linkname:
                raise _Refused('symlink has an empty target')
            if symlink_escapes(parent, m.linkname):
                raise _Refused('symlink target %r climbs out of the root' % m.linkname)
        elif not (m.isreg() or m.isdir() or m.isdev()):
            raise _Refused('unsupported tar entry type %r' % m.type)
        dfd = self.writable_dir(parent)
        try:
            self.remember_mtime(parent, dfd)
            self.clear(dfd, base, keep_directory=m.isdir())
            if m.isdir():
                if _lstat(base, dfd) is None:
                    os.mkdir(base, 0o700, dir_fd=dfd)
                    if tuple(parts) in self.whited:
                        self.make_opaque(dfd, base)
                self.dir_meta[tuple(parts)] = m
            elif m.isreg():
                self.regular(tar, dfd, base, m)
            elif m.issym():
                os.symlink(m.linkname, base, dir_fd=dfd)
                self.metadata_nofollow(dfd, base, m)
            else:
                self.device(dfd, base, m)
        finally:
            os.close(dfd)
        self.ours.add(tuple(parts))
        self.summary.files += 1

    def writable_dir(self, parent):
        """An fd of the parent directory for a new entry, creating missing directories.

        In OVERLAY form a directory this layer whited out is a 0/0 device until the layer puts something in it;
        then it becomes a directory marked opaque, which is how overlayfs says "replaced, not merged".
        """
        if self.whited:
            for i in range(1, len(parent) + 1):
                prefix = tuple(parent[:i])
                if prefix not in self.whited:
                    continue
                dfd = self.tree.open_dir(prefix[:-1])
                try:
                    st = _lstat(prefix[-1], dfd)
                    if st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        os.unlink(prefix[-1], dir_fd=dfd)
                        os.mkdir(prefix[-1], 0o755, dir_fd=dfd)
                        self.make_opaque(dfd, prefix[-1])
                        self.ours.add(prefix)
                finally:
                    os.close(dfd)
        return self.tree.open_dir(parent, create=True, on_create=self.ours.add)

    def make_opaque(self, dfd, name):
        fd = os.open(name, DIR_OPEN_FLAGS, dir_fd=dfd)
        try:
            os.setxattr(fd, 'trusted.overlay.opaque', b'y')
        finally:
            os.close(fd)

    # -- entry kinds ------------------------------------------------------------------------------------------------

    def clear(self, dfd, base, keep_directory):
        """Make room for a new entry: an existing directory stays only if the new entry is a directory too."""
        st = _lstat(base, dfd)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_directory:
                return
            shutil.rmtree(base, dir_fd=dfd)
            self.tree.invalidate()
        else:
            os.unlink(base, dir_fd=dfd)

    def regular(self, tar, dfd, base, m):
        pieces = m.sparse if m.issparse() else [(0, m.size)]
        self.budget.charge(sum(size for _, size in pieces), '%s member %r' % (self.what, m.name))
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        with os.fdopen(fd, 'wb') as out:
            source = tar.extractfile(m)
            if source is not None:
                # Its raw reader reads exactly what is asked, never ahead (a stream cannot seek back).
                source = getattr(source, 'raw', source)
                if m.issparse():
                    # Only the data pieces are written, each at its offset; the holes between stay holes.
                    for offset, size in pieces:
                        source.seek(offset)
                        out.seek(offset)
                        self.copy(source, out, size)
                    out.truncate(m.size)
                else:
                    self.copy(source, out, m.size)
            out.flush()
            self.summary.bytes += m.size
            self.metadata_fd(out.fileno(), m)

    def copy(self, source, out, size):
        cancellation = self.budget.cancellation
        while size > 0:
            if cancellation is not None and cancellation.cancelled:
                cancellation.check()
            chunk = source.read(min(streams.CHUNK, size))
            if not chunk:
                raise CorruptImageError('%s is truncated' % self.what)
            out.write(chunk)
            size -= len(chunk)

    def device(self, dfd, base, m):
        if m.isfifo():
            os.mkfifo(base, self.mode_of(m), dir_fd=dfd)
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, kind | self.mode_of(m), os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
        self.metadata_nofollow(dfd, base, m)

    def hardlink(self, parent, base, m):
        target = split_member_name(m.linkname)
        if not target:
            raise _Refused('hard link to the root directory')
        if target == parent + [base]:
            raise _Refused('hard link to itself')
        try:
            tfd = self.tree.open_dir(target[:-1])
        except _Missing:
            raise _Refused('hard link target %r has not been extracted' % m.linkname)
        try:
            st = _lstat(target[-1], tfd)
            if st is None:
                raise _Refused('hard link target %r has not been extracted' % m.linkname)
            if stat.S_ISDIR(st.st_mode):
                raise _Refused('hard link target %r is a directory' % m.linkname)
            dfd = self.writable_dir(parent)
            try:
                self.remember_mtime(parent, dfd)
                self.clear(dfd, base, keep_directory=False)
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        finally:
            os.close(tfd)
        self.ours.add(tuple(parent + [base]))
        self.summary.files += 1

    # -- whiteouts --------------------------------------------------------------------------------------------------

    def whiteout(self, parent, base):
        if base == layertar.OPAQUE_WHITEOUT:
            self.summary.whiteouts += 1
            return self.opaque(parent)
        if base.startswith(layertar.WHITEOUT_META_PREFIX):
            LOG.debug('%s: ignoring whiteout metadata %s', self.what, '/'.join(parent + [base]))
            return
        name = base[len(layertar.WHITEOUT_PREFIX):]
        if name in ('', '.', '..'):
            raise _Refused('whiteout names %r' % name)
        hidden = tuple(parent + [name])
        self.summary.whiteouts += 1
        if self.whiteouts == OVERLAY:
            self.whited.add(hidden)
        if hidden in self.ours:
            if self.whiteouts == OVERLAY:
                # This layer's own directory stays but must hide the lower one: overlayfs calls that opaque.
                dfd = self.tree.open_dir(parent)
                try:
                    st = _lstat(name, dfd)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        self.make_opaque(dfd, name)
                finally:
                    os.close(dfd)
            return                     # a whiteout only hides what lower layers have
        if self.whiteouts == OVERLAY:
            dfd = self.writable_dir(parent)
            try:
                self.clear(dfd, name, keep_directory=False)
                os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=dfd)
            finally:
                os.close(dfd)
            return
        self.in_existing_dir(parent, lambda dfd: self.clear(dfd, name, keep_directory=False))

    def opaque(self, parent):
        if self.whiteouts == OVERLAY:
            dfd = self.writable_dir(parent)
            try:
                os.setxattr(dfd, 'trusted.overlay.opaque', b'y')
            finally:
                os.close(dfd)
            return
        self.in_existing_dir(parent, lambda dfd: self.prune(dfd, tuple(parent)))

    def in_existing_dir(self, parent, change):
        """Call change(fd of directory `parent`), keeping its mtime, when it exists; else there is nothing to hide."""
        try:
            dfd = self.tree.open_dir(parent)
        except _Missing:
            return
        try:
            self.remember_mtime(parent, dfd)
            change(dfd)
        finally:
            os.close(dfd)

    def prune(self, dfd, parts):
        """Remove from a directory everything lower layers put there, keeping this layer's own entries."""
        for name in os.listdir(dfd):
            child = parts + (name,)
            st = _lstat(name, dfd)
            if child in self.ours:
                if st is not None and stat.S_ISDIR(st.st_mode):
                    cfd = os.open(name, DIR_OPEN_FLAGS, dir_fd=dfd)
                    try:
                        self.prune(cfd, child)
                    finally:
                        os.close(cfd)
            elif st is not None and stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)
                self.tree.invalidate()
            else:
                os.unlink(name, dir_fd=dfd)

    # -- metadata ---------------------------------------------------------------------------------------------------

    def mode_of(self, m):
        mode = m.mode & 0o7777
        if not self.root:
            mode &= ~0o6000            # set-id bits would be for the extracting user, not the image's owner
        return mode

    def metadata_fd(self, fd, m):
        """Mode, owner, xattrs and mtime of a regular file or directory we hold open."""
        mode = self.mode_of(m)
        if m.isdir() and not self.root:
            mode |= 0o700
        if self.root:
            os.fchown(fd, m.uid, m.gid)    # before chmod: chown clears set-id bits
        os.fchmod(fd, mode)
        if self.xattrs:
            for key, value in m.pax_headers.items():
                if key.startswith('SCHILY.xattr.'):
                    self.set_xattr(fd, key[len('SCHILY.xattr.'):], value, m.name)
        os.utime(fd, (m.mtime, m.mtime))

    def metadata_nofollow(self, dfd, base, m):
        """Owner and mtime of a symlink or device node, never following it."""
        if self.root:
            os.chown(base, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
            if not m.issym():
                os.chmod(base, self.mode_of(m), dir_fd=dfd)   # mknod's mode was cut by the umask
        os.utime(base, (m.mtime, m.mtime), dir_fd=dfd, follow_symlinks=False)

    def set_xattr(self, fd, key, value, name):
        if not key.startswith(XATTR_PREFIXES):
            LOG.debug('%s: not setting xattr %s on %s', self.what, key, name)
            return
        try:
            raw = value.encode('utf-8', 'surrogateescape') if isinstance(value, str) else value
            os.setxattr(fd, key, raw)
        except OSError as e:
            LOG.debug('%s: cannot set xattr %s on %s: %s', self.what, key, name, e)

    def remember_mtime(self, parts, dfd):
        """Note a directory's times before this layer changes it, so a lower layer's mtime survives."""
        key = tuple(parts)
        if key not in self.old_mtimes and key not in self.ours:
            st = os.fstat(dfd)
            self.old_mtimes[key] = (st.st_atime_ns, st.st_mtime_ns)

    def finish_directories(self):
        """Apply directory modes and mtimes deepest first, after everything inside them was written."""
        for parts in sorted(self.old_mtimes, key=len, reverse=True):
            if parts in self.dir_meta or not parts:
                continue               # the layer says what this directory's metadata is; the root is the caller's
            try:
                fd = self.tree.open_dir(parts)
            except (_Missing, _Refused):
                continue
            try:
                os.utime(fd, ns=self.old_mtimes[parts])
            finally:
                os.close(fd)
        for parts in sorted(self.dir_meta, key=len, reverse=True):
            m = self.dir_meta[parts]
            try:
                fd = self.tree.open_dir(parts)
            except (_Missing, _Refused):
                continue               # replaced or removed later in the layer
            try:
                self.metadata_fd(fd, m)
            finally:
                os.close(fd)
        self.tree.invalidate()


def extract_layer(stream, root, whiteouts=APPLY, allow_devices=False, xattrs=True, warn=None, what='layer',
                  budget=None):
    """Apply one uncompressed layer tar stream onto the directory `root` (which must exist).

    The stream is read sequentially to its end (so a verifying reader checks its digest). `warn(message)` is called
    for every refused member (default: log a warning). `budget` (an ExtractBudget, see run_budget) bounds the bytes
    written. Returns an ExtractSummary. Raises CorruptImageError for a stream that is not a tar, ExtractLimitError
    past the budget, WriteFailed (an OccystrapError) when the destination cannot be written.
    """
    if whiteouts not in (APPLY, KEEP, OVERLAY):
        raise ValueError('whiteouts must be apply, keep or overlay, not %r' % whiteouts)
    tree = _Tree(root)
    try:
        applier = _LayerApplier(tree, whiteouts, allow_devices, xattrs, warn or LOG.warning, what, budget)
        try:
            summary = applier.apply(stream)
        except OSError as e:
            raise WriteFailed('cannot extract %s into %s: %s' % (what, root, e.strerror or e), e.errno)
    finally:
        tree.close()
    # Whatever follows the tar's end-of-archive blocks is read too, so a verifying reader (streams.HashingReader)
    # reaches its end and checks its digest; the stream may be a plain file.
    streams.drain(stream)
    return summary


def read_file_in(root, path, limit=1 << 20):
    """The bytes of `path` inside `root` (at most `limit`), reached without following any symlink; None if absent.

    For reading things like rootfs/etc/passwd, where a symlink could otherwise point at the host's files.
    """
    try:
        parts = split_member_name(path)
    except _Refused:
        return None
    if not parts:
        return None
    tree = _Tree(root)
    try:
        dfd = tree.open_dir(parts[:-1])
    except (_Missing, _Refused):
        tree.close()
        return None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
        tree.close()
    with os.fdopen(fd, 'rb') as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit)


def apply_layers(ctx, layers, root, whiteouts=APPLY, allow_devices=False, what=None):
    """Apply an image's layers bottom first onto `root`, downloading up to -j ahead while earlier layers extract.

    Refusals go to ctx.warn. Temporary layer files made here are deleted afterwards. Returns an ExtractSummary.
    """
    layers = list(layers)
    total = ExtractSummary()
    stop = threading.Event()
    errors = []
    prefetcher = None
    if len(layers) > 1 and ctx.settings.parallel > 1:
        def fetch(layer):
            if not stop.is_set():
                layer.materialize(ctx.workdir)

        def prefetch():
            try:
                ctx.map(fetch, layers)
            except BaseException as e:   # reported by the extracting thread if it did not fail first
                errors.append(e)
        prefetcher = threading.Thread(target=prefetch, name='prefetch', daemon=True)
        prefetcher.start()
    try:
        for index, layer in enumerate(layers):
            label = '%s layer %d (%s)' % (what, index, layer.diffid) if what else 'layer %s' % layer.diffid
            stream = open(layer.materialize(ctx.workdir), 'rb') if prefetcher else layer.open()
            try:
                total.add(extract_layer(stream, root, whiteouts=whiteouts, allow_devices=allow_devices,
                                        warn=ctx.warn, what=label, budget=run_budget(ctx)))
            finally:
                stream.close()
    finally:
        stop.set()
        if prefetcher is not None:
            prefetcher.join()
            for layer in layers:
                layer.release()
    if errors:
        raise errors[0]
    return total
