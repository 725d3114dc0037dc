"""Building output directories and files under hidden temporary names, renamed into place when complete.

What `dir://`, `oci://` and `mounts://` share: nothing appears under its final name before it is whole, a
destination that holds something is never overwritten (`StagedDirectory`), and a failed image leaves nothing
behind (`discard()`/`abort()`). Temporary names are hidden (a leading '.') and sit beside the destination, so the
final rename stays on one filesystem.
"""

import contextlib
import os
import shutil
import tempfile

from occystrap.errors import OccystrapError
from occystrap.pipeline import ImageOutput


def write_atomically(path, data):
    """Write bytes to a temporary name beside path and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), suffix='.partial', dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_directory(new, final):
    """Rename directory `new` to `final`, replacing an existing one (moved aside first, then deleted)."""
    old = None
    if os.path.lexists(final):
        old = tempfile.mkdtemp(prefix='.old-', dir=os.path.dirname(final))
        os.rename(final, os.path.join(old, 'x'))
    os.rename(new, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


class StagedDirectory:
    """A directory built under a hidden temporary name beside its destination and renamed into place when done.

    The destination must not exist or be an empty directory (never overwritten). `path` is where to build;
    commit() renames it into place, discard() removes it.
    """

    def __init__(self, destination, what):
        self.destination = os.path.abspath(destination)
        self.what = what
        parent = os.path.dirname(self.destination)
        check_empty_destination(self.destination, what)
        if not os.path.isdir(parent):
            raise OccystrapError('cannot write %s: directory %s does not exist' % (what, parent))
        self.path = tempfile.mkdtemp(prefix='.%s.' % os.path.basename(self.destination), suffix='.partial',
                                     dir=parent)

    @staticmethod
    def check(destination, what):
        """Fail early (before any work) when the destination is not absent or an empty directory."""
        check_empty_destination(os.path.abspath(destination), what)

    def commit(self):
        check_empty_destination(self.destination, self.what)
        if os.path.isdir(self.destination):
            os.rmdir(self.destination)
        os.rename(self.path, self.destination)
        self.path = None

    def discard(self):
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


class StagedImageOutput(ImageOutput):
    """Base of outputs that hold exactly one image in a directory built by StagedDirectory (oci://, mounts://).

    Subclasses call `stage(image)` at the start of write() and fill in the directory it returns; finalize() renames
    it into place and abort() removes it.
    """

    scheme = None   # set by subclasses, for messages

    def __init__(self, uri, ctx, **run):
        super().__init__(uri, ctx, **run)
        self.path = os.path.abspath(uri.path)
        self.staged = None
        self.written = None
        StagedDirectory.check(self.path, str(uri))
        ctx.prefer_workdir_parent(os.path.dirname(self.path))

    def stage(self, image):
        """Start the one image this output holds; returns the directory to build it in."""
        if self.staged is not None:
            raise OccystrapError('%s: %s:// holds one image and %s was already written to %s'
                                 % (image.reference, self.scheme, self.written, self.uri))
        self.written = image.reference
        self.staged = StagedDirectory(self.path, str(self.uri))
        return self.staged.path

    def finalize(self):
        if self.staged is not None:
            self.staged.commit()

    def abort(self):
        if self.staged is not None:
            self.staged.discard()


def check_empty_destination(path, what):
    """Raise OccystrapError naming `what` unless `path` is absent or an empty directory (not a link to one)."""
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)):
        raise OccystrapError('cannot write %s: %s exists and is not an empty directory' % (what, path))
