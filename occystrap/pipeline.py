"""The pipeline: an input yields images, filters wrap the output, the output consumes and finalizes.

```
ImageInput.references() -> [ImageRef...]            which images (one, or many for quay:// and catalog globs)
ImageInput.open(ref)     -> Image                   config + lazy layers
Filter(Filter(Output))   .write(image)              each filter returns a new Image and passes it on
ImageOutput.finalize()                              indexes, catalogs, atomic renames
```

Images of a multi-image run are processed `-J` at a time; layers of one image `-j` at a time (RunContext.map).
"""

import abc
import concurrent.futures
import contextlib
import dataclasses
import errno
import importlib
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Optional

from occystrap import schemes
from occystrap.cancel import STOPS, Cancellation
from occystrap.errors import OccystrapError, UsageError
from occystrap.settings import Settings
from occystrap.uris import redact

LOG = logging.getLogger(__name__)

# How often a thread waiting for workers looks at the run's cancellation, and how long a cancelled run waits for
# its running workers to unwind (their sockets are shut down, so they end in milliseconds) before cleaning up.
POLL_SECONDS = 0.2
CANCEL_GRACE = 1.0

# Scheme names (and aliases) to 'module:Class', derived from the one table in schemes.py.
INPUTS = schemes.classes('input')
OUTPUTS = schemes.classes('output')

# The sources the small commands (tags, digest, manifest, config) read.
INSPECTABLE = ('registry', 'tar', 'ocidir')

FILTERS = {
    'normalize-timestamps': 'occystrap.filters.timestamps:NormalizeTimestamps',
    'exclude': 'occystrap.filters.exclude:Exclude',
    'search': 'occystrap.filters.search:Search',
    'inspect': 'occystrap.filters.inspect:Inspect',
}


def unsupported(command, scheme):
    """The usage error for a small command (tags, digest, manifest, config) given a source it cannot read."""
    return UsageError('occystrap %s cannot read %s:// sources (it reads %s)'
                      % (command, scheme, ', '.join(s + '://' for s in INSPECTABLE)))


def load(table, key):
    """Import the class a scheme or filter name maps to (imports stay lazy so --help is instant)."""
    module_name, class_name = table[key].split(':')
    return getattr(importlib.import_module(module_name), class_name)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image an input can open: a repository name plus a tag or digest."""

    name: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    def __str__(self):
        if self.digest:
            return '%s@%s' % (self.name, self.digest)
        return '%s:%s' % (self.name, self.tag) if self.tag else self.name


class ImageProgress:
    """What one image in flight has done so far, for the progress display (pipeline.current_image() finds it).

    The byte counters are bumped once per chunk, from several threads, by `count_download`/`count_upload`, without
    a lock: CPython switches threads only at calls and backward jumps, so a method that only adds to an int
    attribute is never interrupted between its read and its store, and the shared byte path pays one cheap call.
    """

    __slots__ = ('name', 'started', 'layers', 'layers_done', 'expected', 'downloaded', 'uploaded', 'written',
                 'finished')

    def __init__(self, name):
        self.name = name                # the reference as the source named it (untrusted: print via printable)
        self.started = time.monotonic()
        self.layers = 0                 # how many layers the image has, once opened
        self.layers_done = 0
        self.expected = 0               # compressed bytes its layers' descriptors announce (0: not known)
        self.downloaded = 0             # compressed bytes read from a registry
        self.uploaded = 0               # compressed bytes sent to a registry
        self.written = 0                # bytes the output wrote
        self.finished = False

    def count_download(self, nbytes):
        self.downloaded += nbytes

    def count_upload(self, nbytes):
        self.uploaded += nbytes


_current = threading.local()


def current_image():
    """The ImageProgress of the image this thread works for (set by for_each_image, carried into gather's workers),
    or None outside an image."""
    return getattr(_current, 'image', None)


class Stats:
    """Counters for the end-of-run summary and the progress display, safe to update from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.images = 0
        self.layers = 0
        self.bytes = 0          # bytes the outputs wrote (the summary's figure)
        self._downloaded = 0    # bytes read from the network outside any image (info, check, search)
        self.push = None        # a registry output's PushCounters, for the JSON summary
        self.source_images = None   # with --shard: how many images the source named before the shard took its own
        self.planned = None     # how many images this run will work on, once the source has named them
        self.throttled = 0      # 429 (Too Many Requests) answers received, retried or not
        self.started = time.monotonic()
        self._images = []       # every ImageProgress of the run, in the order they started

    def add(self, images=0, layers=0, nbytes=0, downloaded=0, layers_done=0):
        """Count work done; bytes written and layers done are also credited to the current image, if any."""
        image = current_image()
        with self._lock:
            self.images += images
            self.layers += layers
            self.bytes += nbytes
            self._downloaded += downloaded
            if image is not None:
                image.written += nbytes
                image.layers_done += layers_done

    def count_throttled(self):
        """A server answered 429: the run is going faster than it will take (see --rate-limit)."""
        with self._lock:
            self.throttled += 1

    def start_image(self, name):
        """A new ImageProgress for an image the run starts on."""
        handle = ImageProgress(name)
        with self._lock:
            self._images.append(handle)
        return handle

    def track(self, image):
        """The current image has been opened: note its layer count and announced compressed size."""
        handle = current_image()
        if handle is not None:
            handle.layers = len(image.layers)
            handle.expected = sum(layer.origin.size or 0 for layer in image.layers if layer.origin is not None)

    def finish_image(self, handle, ok):
        with self._lock:
            handle.finished = True
            if ok:
                handle.layers_done = handle.layers

    def in_flight(self):
        """The images started and not finished, oldest first."""
        with self._lock:
            return [h for h in self._images if not h.finished]

    @property
    def images_started(self):
        return len(self._images)

    @property
    def downloaded(self):
        """Compressed bytes read from registries in this run."""
        return self._downloaded + sum(h.downloaded for h in list(self._images))

    @property
    def uploaded(self):
        """Compressed bytes sent to registries in this run."""
        return sum(h.uploaded for h in list(self._images))

    @property
    def seconds(self):
        return time.monotonic() - self.started


def layer_cost(layer):
    """Roughly how much work a layer is, without fetching it: its compressed size, else its file's size."""
    if layer.origin is not None and layer.origin.size is not None:
        return layer.origin.size
    if layer.path is not None:
        try:
            return os.path.getsize(layer.path)
        except OSError:
            return 0
    return 0


class RunContext:
    """What every component of one run shares: settings, counters, the HTTP client and authenticators, a temporary
    workspace."""

    def __init__(self, settings=None):
        self.settings = settings or Settings()
        self.stats = Stats()
        self._lock = threading.Lock()
        self._http = None
        self._authenticators = None
        self._workdir = None
        self._workdir_parent = None
        self.warnings = []
        self.cancellation = Cancellation()

    @property
    def cancelled(self):
        return self.cancellation.cancelled

    def cancel(self, signum=None):
        """Stop the run: queued work does not start, in-flight transfers end at their next chunk."""
        self.cancellation.cancel(signum)

    def warn(self, message):
        """Record and log something the user should know (a refused path, a skipped device)."""
        with self._lock:
            self.warnings.append(message)
        LOG.warning(message)

    @property
    def http(self):
        """The run's one HTTP client (pooled connections, rate limiter, retries)."""
        with self._lock:
            if self._http is None:
                from occystrap.registry.http import HttpClient
                self._http = HttpClient(self.settings, cancellation=self.cancellation,
                                        on_throttled=self.stats.count_throttled)
            return self._http

    @property
    def authenticators(self):
        """The run's registry authenticators (credentials and token caches, one per host and credentials)."""
        http = self.http
        with self._lock:
            if self._authenticators is None:
                from occystrap.registry.auth import Authenticators
                self._authenticators = Authenticators(http)
            return self._authenticators

    def prefer_workdir_parent(self, path):
        """An output asks for temporary files on its own filesystem (so finished files can be renamed in place)."""
        if self.settings.temp_dir is None and self._workdir is None:
            self._workdir_parent = path

    @property
    def workdir(self):
        """A private temporary directory for this run, removed by close()."""
        with self._lock:
            if self._workdir is None:
                parent = self.settings.temp_dir or self._workdir_parent
                if parent:
                    os.makedirs(parent, exist_ok=True)
                self._workdir = tempfile.mkdtemp(prefix='.occystrap-tmp-', dir=parent)
            return self._workdir

    def map(self, fn, items, workers=None, cost=None):
        """Run fn over items with up to -j in flight, returning results in order; the first error is raised.

        With `cost` (item -> number), the costliest items start first, so a big layer late in an image does not
        start last and leave the other workers idle while it finishes (the 57 MB layer of the benchmark's app
        image is its 22nd of 24).
        """
        items = list(items)
        workers = max(1, min(workers or self.settings.parallel, len(items) or 1))
        if workers == 1:
            results = []
            for item in items:
                self.cancellation.check()
                results.append(fn(item))
            return results
        order = list(range(len(items)))
        if cost is not None:
            order.sort(key=lambda i: -cost(items[i]))
        return self.gather(fn, [items[i] for i in order], workers, 'layer', order)

    def gather(self, fn, items, workers, name, positions=None):
        """Run fn over items (started in the order given) on `workers` threads; results by `positions`.

        The calling thread waits in short steps, so it notices a cancellation (and the main thread a signal) at
        once. On the first error queued items are dropped; running ones are waited for, only briefly when the
        run was cancelled (they are unwinding already).
        """
        positions = list(range(len(items))) if positions is None else positions
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        futures = [None] * len(items)
        image = current_image()
        try:
            for position, item in zip(positions, items):
                futures[position] = pool.submit(self._guarded, fn, item, image)
            results = []
            for future in futures:
                while True:
                    try:
                        results.append(future.result(timeout=POLL_SECONDS))
                        break
                    except concurrent.futures.TimeoutError:
                        self.cancellation.check()
            pool.shutdown(wait=True)
            return results
        except BaseException as e:
            if isinstance(e, STOPS):
                self.cancel(getattr(e, 'signum', None))
            pool.shutdown(wait=False, cancel_futures=True)
            running = [f for f in futures if f is not None and not f.done()]
            concurrent.futures.wait(running, timeout=CANCEL_GRACE if self.cancelled else None)
            raise

    def _guarded(self, fn, item, image):
        self.cancellation.check()
        _current.image = image      # a worker's bytes count for the image that asked for the work
        try:
            return fn(item)
        finally:
            _current.image = None

    def counters(self):
        """The run's counters as a dict: what --stats-file writes and the -O json summary starts from."""
        stats, http = self.stats, self._http
        return {'images': stats.images, 'layers': stats.layers, 'bytes': stats.bytes, 'downloaded': stats.downloaded,
                'uploaded': stats.uploaded, 'seconds': round(stats.seconds, 3),
                'requests': http.requests if http is not None else 0,
                'retried': http.retried if http is not None else 0, 'throttled': stats.throttled}

    def close(self):
        if self._http is not None:
            self._http.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


class ImageInput(abc.ABC):
    """Where images come from. Subclasses are built from a parsed Uri and the RunContext."""

    def __init__(self, uri, ctx):
        self.uri = uri
        self.ctx = ctx

    @abc.abstractmethod
    def references(self):
        """The images this source names: a list of ImageRef (one for a plain reference, many for a glob)."""

    @abc.abstractmethod
    def open(self, ref):
        """Resolve one reference to an Image whose layers read lazily."""

    @property
    def multi(self):
        """True when this source can name many images (quay:// or a catalog glob)."""
        return False

    # The small commands (tags, digest, manifest, config): one method each, refused by inputs that lack it.

    def tags(self):
        """Every tag the source holds for the repository it names (registry: every page of the tag list)."""
        raise self.unsupported('tags')

    def manifest_bytes(self, ref):
        """(exact bytes, media type) of what the reference names: the index itself for a multi-platform tag.

        `occystrap digest` is the sha256 of these bytes, so an input answers both with this one method."""
        raise self.unsupported('manifest')

    def config_bytes(self, ref):
        """The exact config blob of the image the reference names (its platform picked from an index)."""
        raise self.unsupported('config')

    def unsupported(self, command):
        """The usage error for a command this kind of source cannot answer."""
        return unsupported(command, self.uri.scheme)

    def close(self):
        pass


class ImageOutput(abc.ABC):
    """Where images go. write() may be called from several threads at once (one image each) under -J.

    An output that can hold a whole index sets `holds_indexes` and implements what RegistryOutput does:
    `existing_digest(ref)` (what the destination holds now, or None), `target(ref)`, `write_index(ImageIndex,
    tag_child=False)` (blobs, children by digest, the index last, byte for byte), `write_child(image)` (an image
    stored by digest only), `put_index(ref, oci.Index, counters)` and `missing_blobs(ref, blobs)` (--dry-run).
    Each write returns a Written. Outputs holding one image are given one platform's image through write().
    Optionally: `recompresses = False` (layers are stored as they came, --compression does not apply), and
    `keeps_manifest(media_type)` with `stored_form(ImageIndex, tag_child)` and `stored_manifest(oci.Manifest)` for
    an output that stores some manifests in another form (OCIDirOutput: Docker types made OCI), so the copier
    knows the digest it will write before writing.

    The run's facts come in as parameters: `multi_image` says the source can name many images (so the destination
    name is a prefix each image's own name goes under), `filters` is the filter chain as strings (for caches keyed
    on what the filters did).
    """

    holds_indexes = False

    @classmethod
    def holds_indexes_for(cls, uri):
        """Whether an output of this class for `uri` holds indexes, known before it is built (--dry-run builds no
        file output that cannot): tar:// does with format=oci only."""
        return cls.holds_indexes

    def __init__(self, uri, ctx, multi_image=False, filters=()):
        self.uri = uri
        self.ctx = ctx
        self.multi_image = bool(multi_image)
        self.filters = tuple(filters)

    @abc.abstractmethod
    def write(self, image):
        """Consume one image completely."""

    def finalize(self):
        """Called once after every image was written: make results visible atomically."""

    def abort(self):
        """Called instead of finalize() when the run failed: remove partial results."""


class Filter(ImageOutput):
    """Wraps an output (decorator): transforms each image and passes the result on."""

    def __init__(self, inner, options, ctx):
        super().__init__(getattr(inner, 'uri', None), ctx)
        self.inner = inner
        self.options = options

    def apply(self, image):
        """Return the image to pass on (a new Image when anything changed)."""
        return image

    def write(self, image):
        return self.inner.write(self.apply(image))

    def write_child(self, image):
        """An image of an index: filtered as write() filters, pushed by the output by digest."""
        return self.inner.write_child(self.apply(image))

    @property
    def holds_indexes(self):
        return getattr(self.inner, 'holds_indexes', False)

    def __getattr__(self, name):
        # The index side of an output (existing_digest, target, write_index, put_index, missing_blobs) carries no
        # image for a filter to change: the copier only uses write_index when there are no filters.
        if name in ('existing_digest', 'target', 'write_index', 'put_index', 'missing_blobs', 'recompresses',
                    'keeps_manifest', 'stored_form', 'stored_manifest'):
            return getattr(self.inner, name)
        raise AttributeError(name)

    def finalize(self):
        self.inner.finalize()

    def abort(self):
        self.inner.abort()

    @classmethod
    def option_names(cls):
        """Options this filter accepts; anything else is a usage error."""
        return ()


class Written(str):
    """What an output wrote for one image or index: the manifest digest (it is that string) plus `counters` (the
    output's blob counts for it, or None) and `descriptor` (an oci.Descriptor of the manifest, or None)."""

    def __new__(cls, digest, counters=None, descriptor=None):
        value = super().__new__(cls, digest)
        value.counters = counters
        value.descriptor = descriptor
        return value


@dataclasses.dataclass
class Outcome:
    """What happened to one image of a process run, for the summary and -O json.

    `state` is 'copied', 'unchanged' (the destination already held the source digest) or, with --dry-run,
    'would copy' / 'would be unchanged'. `changed` says why the destination digest differs from the source's
    (a filter, recompression, a platform subset), or is None when it does not.
    """

    state: str
    source_digest: Optional[str] = None
    destination_digest: Optional[str] = None
    destination: Optional[str] = None
    platforms: list = dataclasses.field(default_factory=list)
    changed: Optional[str] = None
    layers: int = 0
    manifests: int = 0
    uploaded: int = 0
    mounted: int = 0
    present: int = 0
    referrers: int = 0                        # --referrers: manifests referring to it copied (or that would be)
    blobs_to_send: Optional[int] = None       # --dry-run: blobs the destination lacks
    bytes_to_send: Optional[int] = None

    def as_dict(self):
        out = dataclasses.asdict(self)
        if out['blobs_to_send'] is None:
            del out['blobs_to_send'], out['bytes_to_send']
        out['digest_changed'] = self.changed is not None
        return out


@dataclasses.dataclass
class ImageResult:
    """How one image of a run ended."""

    reference: str
    ok: bool
    error: Optional[str] = None
    layers: int = 0
    seconds: float = 0.0
    outcome: Optional[Outcome] = None


def lookup_workers(settings, count):
    """How many small metadata requests (tag checks of a multi-image source) to keep in flight for `count` items.

    Four per image slot (-J), at least 8, never more than the work. -j sizes layer transfers, not these: through
    40 ms of added latency, 48 tag checks in flight made `info quay://` slower than 24 (docs/performance.md).
    """
    return max(1, min(count, max(8, 4 * settings.image_parallel)))


def build_input(uri, ctx):
    return load(INPUTS, uri.scheme)(uri, ctx)


def build_output(uri, ctx, filters=(), multi_image=False):
    """The output for a URI wrapped in the filters (first filter sees the image first).

    `multi_image` (the source can name many images) and the filter chain are handed to the output class.
    """
    filters = list(filters)
    check_filters(filters)
    output = load(OUTPUTS, uri.scheme)(uri, ctx, multi_image=multi_image,
                                       filters=tuple(str(spec) for spec in filters))
    for spec in reversed(filters):
        output = load(FILTERS, spec.name)(output, spec.options, ctx)
    return output


def shard_refs(source, refs, ctx):
    """The references of `source` that --shard I/N keeps (all of them without --shard), in their order.

    Every command's image enumeration goes through here (for_each_image), so process, info, check and search
    shard alike. A source that names one image cannot be shared out: that is a usage error. A shard that owns
    none of the images is not a failure (a fleet of N has empty shards when there are few repositories).
    """
    shard = ctx.settings.shard
    if shard is None:
        return refs
    if not source.multi:
        raise UsageError('--shard %s needs a source that names many images (quay://, a catalog glob, a '
                         'multi-image tarball); %s names one' % (shard, source.uri))
    from occystrap import sharding
    kept = sharding.select(refs, shard)
    ctx.stats.source_images = len(refs)
    if kept:
        LOG.info('shard %s: %d of the %d images of %s', shard, len(kept), len(refs), source.uri)
    else:
        LOG.warning('shard %s: none of the %d images of %s falls in this shard; nothing to do',
                    shard, len(refs), source.uri)
    return kept


def for_each_image(source, fn, ctx, refs=None):
    """Run fn(ref) for every image of the source, -J at a time; one image's failure does not stop the others.

    Returns a list of ImageResult in reference order (empty when --shard leaves this run none). A single-image
    source re-raises its error instead.
    """
    refs = source.references() if refs is None else refs
    if not refs:
        raise OccystrapError('%s names no images' % source.uri)
    refs = shard_refs(source, refs, ctx)
    if not refs:
        return []

    ctx.stats.planned = len(refs)

    def one(ref):
        started = time.monotonic()
        ctx.cancellation.check()
        _current.image = handle = ctx.stats.start_image(str(ref))
        ok = False
        try:
            done = fn(ref)
            ok = True
            if isinstance(done, Outcome):
                return ImageResult(str(ref), True, layers=done.layers, seconds=time.monotonic() - started,
                                   outcome=done)
            return ImageResult(str(ref), True, layers=done or 0, seconds=time.monotonic() - started)
        except OccystrapError as e:
            if not source.multi:
                raise
            LOG.error('%s: %s', ref, e)
            return ImageResult(str(ref), False, error=redact(e), seconds=time.monotonic() - started)
        finally:
            ctx.stats.finish_image(handle, ok)
            _current.image = None

    workers = max(1, min(ctx.settings.image_parallel, len(refs)))
    if workers == 1:
        return [one(ref) for ref in refs]
    return ctx.gather(one, refs, workers, 'image')


# A destination that cannot take more: said as "cannot write PATH: reason" wherever in an output it happens.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
FILE_OUTPUTS = ('tar', 'file', 'dir', 'oci', 'mounts')


@contextlib.contextmanager
def writing(dest_uri):
    """Turn a full (or read-only, or failing) destination filesystem into one line naming the destination."""
    try:
        yield
    except (OSError, OccystrapError) as e:
        code = getattr(e, 'errno', None)
        if code not in WRITE_ERRNOS or dest_uri.scheme not in FILE_OUTPUTS:
            raise
        path = 'standard output' if dest_uri.path == '-' else os.path.abspath(dest_uri.path)
        raise OccystrapError('cannot write %s: %s' % (path, os.strerror(code))) from None


def check_filters(filters):
    """Every filter name and option of a chain is known (UsageError otherwise), without building an output."""
    for spec in filters:
        allowed = load(FILTERS, spec.name).option_names()
        for key in spec.options:
            if key not in allowed:
                raise UsageError('filter %s does not take option %r (it takes: %s)'
                                 % (spec.name, key, ', '.join(allowed) or 'none'))


def run_process(source_uri, dest_uri, filters, ctx):
    """Copy every image of source_uri through the filters into dest_uri. Returns the list of ImageResult.

    How an index flows (whole, one platform, a subset, filtered) is decided per image by mirror.Copier.
    """
    from occystrap.mirror import Copier
    settings = ctx.settings
    source = build_input(source_uri, ctx)
    holds = load(OUTPUTS, dest_uri.scheme).holds_indexes_for(dest_uri)
    if settings.preserve_digests and not holds:
        source.close()
        raise UsageError('--preserve-digests needs a destination that keeps manifest digests (registry://, ocidir://, '
                         'tar://?format=oci)')
    if settings.referrers:
        from occystrap import referrers
        reason = referrers.supported(source, load(OUTPUTS, dest_uri.scheme))
        if reason:
            source.close()
            raise UsageError(reason)
    if settings.dry_run and not holds:
        # Nothing is built at a destination that would create files: only the source is read.
        check_filters(filters)
        output = None
    else:
        output = build_output(dest_uri, ctx, filters, multi_image=source.multi)
    copier = Copier(source, output, list(filters), ctx, guard=lambda: writing(dest_uri))
    finished = False
    try:
        results = for_each_image(source, copier.copy, ctx)
        if output is not None and not settings.dry_run and any(r.ok for r in results):
            with writing(dest_uri):
                output.finalize()
            finished = True
        elif output is None or settings.dry_run:
            finished = True
        return results
    except STOPS as e:
        ctx.cancel(getattr(e, 'signum', None))    # stop every worker before abort() removes what they write
        raise
    finally:
        if not finished and output is not None:
            output.abort()
        source.close()
