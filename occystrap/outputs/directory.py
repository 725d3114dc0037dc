"""Write images into a directory (`dir:///PATH[?unique_names=true&expand=true]`).

Layout without unique_names (the images of one run; an expanded `docker save`, so `tar -C PATH -cf x.tar .` gives
a tarball that `docker load` and `skopeo copy docker-archive:` accept):

```
PATH/manifest.json                  [{Config, RepoTags, Layers}] for this run's images, written last
PATH/<config-hex>.json              each image config, the source's exact bytes
PATH/<diffid-hex>/layer.tar         each layer once, uncompressed
PATH/rootfs/                        with expand=true: the layers applied bottom first, whiteouts honoured
```

With unique_names=true many images, over many runs, share one directory:

```
PATH/<diffid-hex>/layer.tar         shared by every image that has the layer; present layers are not fetched again
PATH/<config-hex>.json
PATH/manifest-<name>@<tag>.json     [{Config, RepoTags, Layers}] for one image ('/' in the name becomes '+')
PATH/catalog.json                   {"name:tag": "manifest-<name>@<tag>.json", ...}, merged with earlier runs
PATH/rootfs-<name>@<tag>/           with expand=true
```

Layers are materialized -j at a time into the run's temporary directory, which is created inside PATH unless
--temp-dir says otherwise, and then renamed into place (zero copy; a copy when --temp-dir is on another
filesystem). A layer another thread is already fetching for another image is waited for, not fetched twice.
Nothing appears under its final name before it is complete: layer files and configs are renamed into place,
root filesystems are built in a hidden temporary directory and renamed, manifests and catalog.json come last.
catalog.json is updated under an in-process lock and an flock, re-read and merged, and replaced by rename.
Expanded root filesystems are mode 0700 when extracted as root, so host users cannot run the image's set-id files.
"""

import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading

from occystrap import extract, oci, uris
from occystrap.errors import CorruptImageError, OccystrapError
from occystrap.outputs.staging import replace_directory, write_atomically
from occystrap.pipeline import ImageOutput, layer_cost

LOG = logging.getLogger(__name__)

CATALOG = 'catalog.json'
MANIFEST = 'manifest.json'
LOCK_FILE = '.catalog.lock'


def digest_hex(digest):
    """The hex part of a digest that names a file or directory here, checked against the digest grammar first."""
    return oci.digest_hex(digest)


def image_reference(image):
    """The reference an image is recorded under: name:tag, else name@digest."""
    if image.tag:
        return '%s:%s' % (image.name, image.tag)
    return '%s@%s' % (image.name, image.manifest_digest or image.config_digest)


def unique_stem(image):
    """A file name part unique to an image reference: '/' cannot appear, '+' and '@' are in no name or tag."""
    suffix = image.tag or digest_hex(image.manifest_digest or image.config_digest)
    return '%s@%s' % (image.name.replace('/', '+'), suffix)


class DirectoryOutput(ImageOutput):
    """Images into a directory as an expanded docker save, optionally sharing layers between many images."""

    def __init__(self, uri, ctx, **run):
        super().__init__(uri, ctx, **run)
        self.path = os.path.abspath(uri.path)
        self.unique_names = uri.flag('unique_names')
        self.expand = uri.flag('expand')
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise OccystrapError('cannot write %s: %s exists and is not a directory' % (uri, self.path))
        # The outermost directory this run creates: a failed run removes it again, with everything inside.
        self._created = None
        missing = self.path
        while not os.path.lexists(missing):
            self._created, missing = missing, os.path.dirname(missing)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise OccystrapError('cannot create %s: %s' % (self.path, e.strerror))
        self._added = []               # paths this run put in an existing directory, oldest first
        ctx.prefer_workdir_parent(self.path)
        self._lock = threading.Lock()
        self._inflight = {}            # diffid -> Future of the thread fetching it
        self._entries = []             # manifest.json entries of this run (without unique_names)
        self._expanding = set()         # root filesystems this run is building or built
        self.renames = 0
        self.copies = 0
        self.reused = 0

    # -- layers -----------------------------------------------------------------------------------------------------

    def layer_file(self, diffid):
        return os.path.join(self.path, digest_hex(diffid), 'layer.tar')

    def store_layer(self, layer):
        """Make PATH/<diffid-hex>/layer.tar exist for this layer, fetching it only if no one has or is."""
        diffid = layer.diffid
        final = self.layer_file(diffid)
        with self._lock:
            future = self._inflight.get(diffid)
            if future is None:
                if os.path.exists(final):
                    self.reused += 1
                    return final
                future = self._inflight[diffid] = concurrent.futures.Future()
                mine = True
            else:
                mine = False
        if not mine:
            return future.result()
        try:
            layer.materialize(self.ctx.workdir)
            directory = os.path.dirname(final)
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                self._note(directory)
            renamed = layer.place(final)
            self._note(final)
            with self._lock:
                if renamed:
                    self.renames += 1
                else:
                    self.copies += 1
            self.ctx.stats.add(nbytes=layer.size, layers_done=1)
            future.set_result(final)
            return final
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                self._inflight.pop(diffid, None)

    # -- images -----------------------------------------------------------------------------------------------------

    def write(self, image):
        if image.tag or self.unique_names:
            # The name and tag become RepoTags and (unique_names) file names: check them before anything is written.
            what = 'cannot write %r into %s' % (image.reference, self.uri)
            uris.validate_repository(image.name, what, host=True)
            if image.tag:
                uris.validate_tag(image.tag, what)
        diffids = image.diffids
        if len(diffids) != len(image.layers):
            raise CorruptImageError('%s: config lists %d layers, the image has %d'
                                    % (image.reference, len(diffids), len(image.layers)))
        files = self.ctx.map(self.store_layer, image.layers, cost=layer_cost)
        config_name = digest_hex(image.config_digest) + '.json'
        config_path = os.path.join(self.path, config_name)
        if not os.path.exists(config_path):
            write_atomically(config_path, image.config_bytes)
            self._note(config_path)
        if self.expand:
            self.expand_image(image, files)
        entry = {'Config': config_name, 'RepoTags': [image_reference(image)] if image.tag else [],
                 'Layers': [os.path.relpath(f, self.path) for f in files]}
        if self.unique_names:
            manifest_name = 'manifest-%s.json' % unique_stem(image)
            self._note(os.path.join(self.path, manifest_name))
            write_atomically(os.path.join(self.path, manifest_name), json.dumps([entry], indent=2).encode())
            self.record_in_catalog(image_reference(image), manifest_name)
        else:
            with self._lock:
                self._entries.append(entry)
        LOG.debug('dir output %s: %d layers renamed into place, %d copied, %d already present',
                  self.path, self.renames, self.copies, self.reused)

    def rootfs_path(self, image):
        if self.unique_names:
            return os.path.join(self.path, 'rootfs-%s' % unique_stem(image))
        return os.path.join(self.path, 'rootfs')

    def expand_image(self, image, files):
        """Apply the placed layers bottom first into a hidden directory, then rename it to the rootfs name."""
        final = self.rootfs_path(image)
        with self._lock:
            if final in self._expanding or (not self.unique_names and self._entries):
                raise OccystrapError('%s: dir:// without unique_names=true expands one image only; %s already '
                                     'has one from this run' % (image.reference, final))
            self._expanding.add(final)
        work = tempfile.mkdtemp(prefix='.rootfs-', suffix='.partial', dir=self.path)
        try:
            # Extracted as root, set-id binaries of the image keep their owner; a private rootfs keeps host users
            # from running them (umoci keeps its bundles private for the same reason).
            os.chmod(work, 0o700 if extract.is_root() else 0o755)
            for index, path in enumerate(files):
                with open(path, 'rb') as stream:
                    extract.extract_layer(stream, work, whiteouts=extract.APPLY, warn=self.ctx.warn,
                                          allow_devices=self.ctx.settings.allow_devices,
                                          what='%s layer %d' % (image.reference, index),
                                          budget=extract.run_budget(self.ctx))
            self._note(final)
            replace_directory(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    # -- the catalog ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def catalog_lock(self):
        """In-process lock plus an flock, so concurrent runs writing the same directory merge their entries."""
        with self._lock:
            with open(os.path.join(self.path, LOCK_FILE), 'a') as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def read_catalog(self):
        path = os.path.join(self.path, CATALOG)
        try:
            with open(path) as f:
                catalog = json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise OccystrapError('%s is not valid JSON (%s); move it away to start a new catalog' % (path, e))
        if not isinstance(catalog, dict):
            raise OccystrapError('%s is not a JSON object; move it away to start a new catalog' % path)
        return catalog

    def record_in_catalog(self, reference, manifest_name):
        with self.catalog_lock():
            catalog = self.read_catalog()
            catalog[reference] = manifest_name
            write_atomically(os.path.join(self.path, CATALOG),
                             (json.dumps(catalog, indent=2, sort_keys=True) + '\n').encode())

    # -- end of run -------------------------------------------------------------------------------------------------

    def _note(self, path):
        with self._lock:
            self._added.append(path)

    def _named(self, entries):
        """The paths a list of manifest entries names: configs, layer files and their directories."""
        named = set()
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for name in [entry.get('Config')] + list(entry.get('Layers') or []):
                if isinstance(name, str) and name:
                    path = os.path.normpath(os.path.join(self.path, name))
                    named.add(path)
                    named.add(os.path.dirname(path))
        return named

    def _catalog_names(self):
        """Every path the catalog's images need: their manifest files, what those name, their root filesystems."""
        named = set()
        for manifest_name in self.read_catalog().values():
            if not isinstance(manifest_name, str) or '/' in manifest_name or not manifest_name.startswith('manifest-'):
                continue
            path = os.path.join(self.path, manifest_name)
            named.add(path)
            named.add(os.path.join(self.path, 'rootfs-' + manifest_name[len('manifest-'):-len('.json')]))
            try:
                with open(path) as f:
                    named |= self._named(json.load(f))
            except (OSError, ValueError):
                continue
        return named

    def _take_added(self):
        with self._lock:
            added, self._added = self._added, []
        return added

    def _sweep(self, added, keep):
        """Remove what this run added that `keep` does not name (newest first, so directories empty last)."""
        for path in reversed(added):
            if path in keep:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                if os.path.basename(path).startswith('rootfs'):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.rmdir(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def finalize(self):
        if not self.unique_names and self._entries:
            write_atomically(os.path.join(self.path, MANIFEST), json.dumps(self._entries, indent=2).encode())
        # Images that failed in a multi-image run leave nothing the manifests do not name.
        added = self._take_added()
        if self.unique_names:
            with self.catalog_lock():
                self._sweep(added, self._catalog_names())
        else:
            keep = self._named(self._entries)
            if self._entries:
                keep.add(os.path.join(self.path, 'rootfs'))
            self._sweep(added, keep)
        LOG.debug('dir output %s: %d layers renamed into place, %d copied, %d already present',
                  self.path, self.renames, self.copies, self.reused)

    def abort(self):
        """Leave the destination as it was: a directory this run created goes, else what it added goes.

        In a unique_names directory, what catalog.json names stays (another run may have recorded it meanwhile).
        """
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            return
        added = self._take_added()
        if self.unique_names:
            with self.catalog_lock():
                self._sweep(added, self._catalog_names())
        else:
            self._sweep(added, set())
