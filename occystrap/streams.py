"""Byte streams: hashing, digest verification, and (de)compression.

Everything that moves layer bytes goes through these few classes so that hashing happens while reading and
compression uses the fastest library present (isal, which releases the GIL, falling back to zlib).
"""

import contextlib
import hashlib
import io
import os
import queue
import shutil
import tempfile
import threading
import zlib

from occystrap.errors import CorruptImageError, DigestMismatchError

try:
    from isal import isal_zlib as fast_zlib
except ImportError:  # pragma: no cover - isal is a dependency, zlib keeps us working without it
    fast_zlib = zlib

# What zlib and isal raise for a corrupt compressed stream that no reader here turned into a CorruptImageError.
DECOMPRESS_ERRORS = tuple({zlib.error, fast_zlib.error})
CHUNK = 1024 * 1024
INFLATE_MAX = 1024 * 1024   # most bytes one inflate step produces
GZIP_MAGIC = b'\x1f\x8b'
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'


def sha256_file(path):
    """Return the 'sha256:...' digest of a file."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return 'sha256:' + h.hexdigest()


def sha256_bytes(data):
    """Return the 'sha256:...' digest of bytes (kept for callers; the one definition is oci.digest_of)."""
    from occystrap.oci import digest_of
    return digest_of(data)


def new_hasher(digest):
    """A hashlib object for the algorithm a digest names."""
    algorithm = digest.split(':', 1)[0] if digest and ':' in digest else 'sha256'
    if algorithm not in ('sha256', 'sha512'):
        raise CorruptImageError('unsupported digest algorithm %r' % algorithm)
    return hashlib.new(algorithm)


class ChunkReader(io.RawIOBase):
    """Base of our readable streams: a subclass implements read(size); readable() and readinto() follow.

    Streams that receive data in blocks keep the current one with _hold() and hand it out with _take(): a read
    smaller than the block gets a slice and the offset is remembered, so the rest of the block is never copied.
    """

    _block = b''
    _taken = 0

    def readable(self):
        return True

    def _hold(self, block):
        self._block = block
        self._taken = 0

    def _held(self):
        """Bytes of the held block not handed out yet."""
        return len(self._block) - self._taken

    def _take(self, size):
        """Up to `size` bytes (all when negative) of the held block; the whole block is returned without a copy."""
        start, length = self._taken, len(self._block)
        end = length if size is None or size < 0 else min(start + size, length)
        if start == 0 and end == length:
            out = self._block
        else:
            out = self._block[start:end]
        if end == length:
            self._block, self._taken = b'', 0
        else:
            self._taken = end
        return out

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def check(self):
        """Raise if what was read fails verification; here nothing is verified, so nothing happens.

        Only HashingReader verifies. The decompressing and read-ahead readers have nothing of their own to check:
        the blob's HashingReader below them checks itself when they read it to its end, in whatever thread that
        is, and read() raises what it found. So every reader here answers check(), and callers never ask whether
        it can.
        """


class _Wrapper(ChunkReader):
    """A reader of another stream, `raw`, which it closes when closed."""

    raw = None

    def close(self):
        try:
            if self.raw is not None:
                self.raw.close()
        finally:
            super().close()


class HashingReader(_Wrapper):
    """Wraps a readable stream, hashing every byte read and counting them.

    If `expected` is given the digest is checked when the stream reaches its end, and a mismatch raises
    DigestMismatchError naming `what`.
    """

    def __init__(self, raw, expected=None, what='blob', expected_size=None):
        self.raw = raw
        self.expected = expected
        self.what = what
        self.expected_size = expected_size
        self.hasher = new_hasher(expected)
        self.count = 0
        self.verified = False

    def read(self, size=-1):
        data = self.raw.read(size if size is not None and size >= 0 else CHUNK * 4)
        if data:
            self.hasher.update(data)
            self.count += len(data)
        elif size != 0:
            self.check()
        return data

    @property
    def digest(self):
        return '%s:%s' % (self.hasher.name, self.hasher.hexdigest())

    def check(self):
        """Verify the digest and size of what was read so far (called at EOF)."""
        if self.verified:
            return
        if self.expected_size is not None and self.count != self.expected_size:
            raise CorruptImageError('%s is %d bytes, expected %d' % (self.what, self.count, self.expected_size))
        if self.expected is not None and self.digest != self.expected:
            raise DigestMismatchError(self.what, self.expected, self.digest)
        self.verified = True


class HashingWriter:
    """A write-only file object that hashes (sha256) and counts the bytes it passes on to `raw`."""

    def __init__(self, raw):
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data):
        if not data:
            return 0
        self.hasher.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self):
        return self.size

    @property
    def digest(self):
        return 'sha256:' + self.hasher.hexdigest()


def blame_source(raw, message):
    """Raise for a stream that failed to decompress: a digest mismatch when the blob under it is corrupt, else
    CorruptImageError(message).

    A flipped byte usually breaks decompression before the blob's digest is checked at its end, so the rest of
    the blob is read to let its HashingReader name the blob that is wrong.
    """
    if (isinstance(raw, HashingReader) and not raw.verified) or isinstance(raw, PrefetchReader):
        while raw.read(CHUNK):
            pass
    raise CorruptImageError(message)


def sniff_compression(head):
    """Name the compression of a blob from its first bytes: 'gzip', 'zstd' or 'none'."""
    if head.startswith(GZIP_MAGIC):
        return 'gzip'
    if head.startswith(ZSTD_MAGIC):
        return 'zstd'
    return 'none'


class _GzipReader(_Wrapper):
    """Streaming gzip decompression that handles concatenated members.

    Each inflate step yields at most INFLATE_MAX bytes (the rest of its input waits in unconsumed_tail), so memory
    stays bounded however well a layer compresses.
    """

    def __init__(self, raw, first=b''):
        self.raw = raw
        self.pending = first
        self.decomp = fast_zlib.decompressobj(31)
        self.more = False      # the last step stopped at INFLATE_MAX: input or output is still waiting in decomp
        self.eof = False

    def _inflate(self):
        if self.more:
            data = self.decomp.unconsumed_tail
        else:
            data = self.pending or self.raw.read(CHUNK)
            self.pending = b''
            if not data:
                if self._started:
                    raise CorruptImageError('gzip stream is truncated')
                self.eof = True
                return
        self._started = True
        try:
            block = self.decomp.decompress(data, INFLATE_MAX)
        except DECOMPRESS_ERRORS as e:
            blame_source(self.raw, 'gzip stream is corrupt: %s' % e)
        self._hold(block)
        self.more = bool(self.decomp.unconsumed_tail) or len(block) >= INFLATE_MAX
        if self.decomp.eof:
            rest = self.decomp.unused_data
            self.decomp = fast_zlib.decompressobj(31)
            self._started = False
            self.more = False
            # Trailing zero padding after the last member is legal in some writers.
            if rest.strip(b'\x00'):
                self.pending = rest

    def read(self, size=-1):
        if size is None or size < 0:
            size = INFLATE_MAX
        while not self._held() and not self.eof:
            self._inflate()
        return self._take(size)

    _started = False


class _ZstdReader(_Wrapper):
    def __init__(self, raw, first=b''):
        import zstandard
        self.raw = raw
        self.reader = zstandard.ZstdDecompressor().stream_reader(_Prefixed(raw, first), read_across_frames=True)

    def read(self, size=-1):
        if size is None or size < 0:
            size = CHUNK * 4
        try:
            return self.reader.read(size)
        except Exception as e:
            blame_source(self.raw, 'zstd stream is corrupt: %s' % e)


class _Prefixed(_Wrapper):
    """A stream that returns some already-read bytes before the rest of `raw`."""

    def __init__(self, raw, first):
        self.raw = raw
        self.first = first

    def read(self, size=-1):
        if self.first:
            if size is None or size < 0:
                out, self.first = self.first, b''
                return out
            out, self.first = self.first[:size], self.first[size:]
            return out
        return self.raw.read(size)


def decompressing_reader(raw):
    """Wrap a raw blob stream so that reading yields uncompressed bytes, whatever the blob's compression."""
    head = raw.read(4)
    kind = sniff_compression(head)
    if kind == 'gzip':
        try:
            return _GzipReader(raw, head)
        except zlib.error as e:  # pragma: no cover
            raise CorruptImageError('gzip stream is corrupt: %s' % e)
    if kind == 'zstd':
        return _ZstdReader(raw, head)
    return _Prefixed(raw, head)


# glibc's mallopt parameters (malloc.h), and what tune_allocator sets them to.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ALLOCATOR_KEEP = 4 * 1024 * 1024
_allocator_tuned = False


def tune_allocator():
    """Let glibc keep freed layer buffers for reuse instead of returning them to the kernel at once.

    Streaming a layer allocates and frees buffers of 256 KiB to 1 MiB for every read, inflate step and hand-off.
    glibc's defaults return free memory at the top of a heap to the kernel once ~2 MiB are free, so the next buffer
    faults in fresh zeroed pages: 40,000 page faults in the 24-layer pull. Serving allocations up to 4 MiB from the
    heaps and trimming only beyond 4 MiB free halves them, for ~3% less CPU and up to ~14 MB more peak memory
    (docs/performance.md). Done once per process (tuning.apply(), from the command line), only on the glibc
    releases of tuning.GLIBC_VERSIONS, and never over the user's own MALLOC_* settings.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if os.environ.get('MALLOC_TRIM_THRESHOLD_') or os.environ.get('MALLOC_MMAP_THRESHOLD_'):
        return
    from occystrap import tuning
    if not tuning.in_range(tuning.glibc_version(), tuning.GLIBC_VERSIONS):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_KEEP)
        libc.mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_KEEP)
    except (AttributeError, ValueError, OSError):   # not glibc, or no mallopt: the defaults stay
        return


_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
_inflating = 0
_inflating_lock = threading.Lock()


class _Inflating(ChunkReader):
    """A layer stream that counts as inflating until closed, and hands its inflating to a thread once a core is
    spare (see inflating_reader)."""

    def __init__(self, inflated):
        self.inflated = inflated
        self.reader = inflated
        self.threaded = False

    def read(self, size=-1):
        if not self.threaded and _inflating <= _CPUS:
            # From here on a thread inflates ahead; it continues exactly where the direct reads stopped.
            self.reader = PrefetchReader(self.inflated)
            self.threaded = True
        return self.reader.read(size)

    def close(self):
        global _inflating
        if not self.closed:
            with _inflating_lock:
                _inflating -= 1
            try:
                self.reader.close()
            finally:
                super().close()


def inflating_reader(blob):
    """The uncompressed bytes of a compressed blob stream, in as many threads as there are cores to spare.

    The blob is always read ahead in a thread (download and blob hashing overlap the inflating). Whenever no more
    layers are being inflated than there are cores, the inflating gets a thread of its own too, so that the reader
    (hashing the diffid, writing the file) runs beside it: a one-layer pull takes 0.6 s instead of 0.7. While every
    core already inflates a layer the extra thread would only add hand-offs (the 24-layer pull was 7% slower with
    one per layer), so a layer starts without it and takes one when the others finish and a core comes free.
    """
    global _inflating
    with _inflating_lock:
        _inflating += 1
    try:
        return _Inflating(decompressing_reader(PrefetchReader(blob)))
    except BaseException:
        with _inflating_lock:
            _inflating -= 1
        raise


def read_all_to(reader, writer, chunk=CHUNK):
    """Copy a stream to a writer in chunks, returning the byte count."""
    total = 0
    while True:
        try:
            data = reader.read(chunk)
        except DECOMPRESS_ERRORS as e:
            raise CorruptImageError('compressed stream is corrupt: %s' % e)
        if not data:
            return total
        writer.write(data)
        total += len(data)


def copy_verified(reader, writer, chunk=CHUNK):
    """Copy a reader of this module to `writer` up to its end, then verify it; returns the byte count.

    Raises DigestMismatchError or CorruptImageError when what was read is not what the reader expects; the writer
    has then received bytes that must be thrown away.
    """
    total = read_all_to(reader, writer, chunk)
    reader.check()
    return total


def drain(stream, chunk=CHUNK):
    """Read any readable stream to its end, dropping the bytes; returns how many there were.

    A HashingReader verifies itself when it gets there; use drain_verified where the stream is one of ours.
    """
    total = 0
    while True:
        data = stream.read(chunk)
        if not data:
            return total
        total += len(data)


def drain_verified(reader, chunk=CHUNK):
    """Read a reader of this module to its end, then verify it; returns the number of bytes read.

    For callers that need the check, not the bytes (`check`), or that stopped reading before the end (a tar
    stream's trailing blocks). Raises like copy_verified.
    """
    total = drain(reader, chunk)
    reader.check()
    return total


class Compressor:
    """A deterministic streaming compressor: same input and level, same output bytes."""

    def __init__(self, kind='gzip', level=None):
        self.kind = kind
        if kind == 'gzip':
            # Raw deflate with our own fixed header (mtime 0, no name) keeps output reproducible.
            lvl = level if level is not None else (2 if fast_zlib is not zlib else 6)
            self._obj = fast_zlib.compressobj(lvl, zlib.DEFLATED, -15)
            self._crc = 0
            self._size = 0
            self._header = b'\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff'
        elif kind == 'zstd':
            import zstandard
            self._obj = zstandard.ZstdCompressor(level=level or 3).compressobj()
            self._header = b''
        elif kind == 'none':
            self._obj = None
            self._header = b''
        else:
            raise ValueError('unknown compression %r' % kind)

    def compress(self, data):
        head, self._header = self._header, b''
        if self.kind == 'none':
            return head + data
        if self.kind == 'gzip':
            self._crc = fast_zlib.crc32(data, self._crc)
            self._size += len(data)
        return head + self._obj.compress(data)

    def flush(self):
        head, self._header = self._header, b''
        if self.kind == 'none':
            return head
        out = head + self._obj.flush()
        if self.kind == 'gzip':
            out += self._crc.to_bytes(4, 'little') + (self._size & 0xffffffff).to_bytes(4, 'little')
        return out


@contextlib.contextmanager
def temporary_file(directory, prefix, suffix=''):
    """A new file in `directory` (None: the system's), yielded as (file open for writing, path); when the block
    raises, the file is removed before the error goes on. The caller owns the file after a normal exit."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, 'wb') as out:
            yield out, path
    except BaseException:
        os.unlink(path)
        raise


def copy_file(src, dst):
    """Copy a file's bytes (used when a rename would cross filesystems)."""
    with open(src, 'rb') as fin, open(dst, 'wb') as fout:
        shutil.copyfileobj(fin, fout, CHUNK)


def move_file(src, dst):
    """Place src at dst: os.rename when on one filesystem (zero copy), a copy and unlink otherwise.

    Returns True when the rename applied.
    """
    try:
        os.rename(src, dst)
        return True
    except OSError as e:
        if e.errno != 18:  # EXDEV: different filesystems
            raise
    tmp = dst + '.partial'
    copy_file(src, tmp)
    os.rename(tmp, dst)
    os.unlink(src)
    return False


class PrefetchReader(_Wrapper):
    """Reads `raw` ahead in a background thread, so network reads and hashing overlap with decompression.

    At most `depth` chunks are buffered, so memory stays bounded. Errors in the reader thread are raised from
    read(); close() stops the thread.
    """

    def __init__(self, raw, chunk=CHUNK, depth=4):
        self.raw = raw
        self.chunk = chunk
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name='prefetch', daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                data = self.raw.read(self.chunk)
                item = data if data else None
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item is None:
                    return
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            try:
                self._queue.put(e, timeout=5)
            except queue.Full:
                pass

    def read(self, size=-1):
        while not self._held() and not self._done:
            item = self._queue.get()
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._hold(item)
        return self._take(size)

    def close(self):
        self._stop.set()
        self._thread.join()
        super().close()
