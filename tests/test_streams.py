"""Byte streams: gzip and zstd decompression in every read size, digest checks, read-ahead."""

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest
import zstandard

from occystrap import streams
from occystrap.errors import CorruptImageError, DigestMismatchError


def payload(size=3 * 1024 * 1024 + 17):
    # Compressible but not trivially so: many blocks of inflated output per compressed chunk.
    return b''.join(hashlib.sha256(b'%d' % i).hexdigest().encode() * 4 for i in range(size // 256 + 1))[:size]


def read_in(reader, size):
    parts = []
    while True:
        data = reader.read(size)
        if not data:
            return b''.join(parts)
        assert len(data) <= size
        parts.append(data)


@pytest.mark.parametrize('size', [1, 511, 4096, streams.CHUNK, 8 * streams.CHUNK])
def test_gzip_reader_returns_every_byte_in_any_read_size(size):
    data = payload(300_000 if size == 1 else 3 * 1024 * 1024 + 17)
    reader = streams.decompressing_reader(io.BytesIO(gzip.compress(data, 6)))
    assert read_in(reader, size) == data


def test_gzip_reader_handles_concatenated_members_and_zero_padding():
    a, b = payload(200_000), payload(300_000)[::-1]
    blob = gzip.compress(a) + gzip.compress(b) + b'\x00' * 1024
    assert read_in(streams.decompressing_reader(io.BytesIO(blob)), 65536) == a + b


def test_gzip_reader_reports_truncation_and_corruption():
    blob = gzip.compress(payload(500_000))
    with pytest.raises(CorruptImageError, match='truncated'):
        read_in(streams.decompressing_reader(io.BytesIO(blob[:len(blob) // 2])), 65536)
    broken = bytearray(blob)
    broken[len(broken) // 2] ^= 0xff
    with pytest.raises(CorruptImageError):
        read_in(streams.decompressing_reader(io.BytesIO(bytes(broken))), 65536)


def test_zstd_and_uncompressed_streams_pass_through():
    data = payload(1_000_000)
    assert read_in(streams.decompressing_reader(io.BytesIO(zstandard.compress(data))), 100_000) == data
    assert read_in(streams.decompressing_reader(io.BytesIO(data)), 100_000) == data


def test_hashing_reader_checks_digest_and_size_at_end():
    data = os.urandom(100_000)
    good = 'sha256:' + hashlib.sha256(data).hexdigest()
    assert read_in(streams.HashingReader(io.BytesIO(data), good, expected_size=len(data)), 4096) == data
    with pytest.raises(DigestMismatchError):
        read_in(streams.HashingReader(io.BytesIO(data[:-1] + b'x'), good), 4096)
    with pytest.raises(CorruptImageError, match='bytes'):
        read_in(streams.HashingReader(io.BytesIO(data), good, expected_size=len(data) + 1), 4096)


def test_prefetch_reader_keeps_order_and_raises_errors_of_its_thread():
    data = payload(5 * 1024 * 1024)
    reader = streams.PrefetchReader(io.BytesIO(data), chunk=100_000, depth=2)
    assert read_in(reader, 70_000) == data
    reader.close()

    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def read(self, size=-1):
            raise OSError('disk gone')

    reader = streams.PrefetchReader(Failing())
    with pytest.raises(OSError, match='disk gone'):
        reader.read(10)
    reader.close()


def test_gzip_reader_memory_is_bounded_whatever_the_ratio():
    # 64 MiB of zeros compress to ~64 KiB: one compressed read must not inflate into one 64 MiB block.
    blob = gzip.compress(b'\0' * (64 * 1024 * 1024), 9)
    reader = streams.decompressing_reader(io.BytesIO(blob))
    total = 0
    while True:
        data = reader.read()
        if not data:
            break
        assert len(data) <= streams.INFLATE_MAX
        total += len(data)
    assert total == 64 * 1024 * 1024


def test_inflating_reader_uses_a_spare_core_and_gives_it_back():
    data = payload(2 * 1024 * 1024)
    blob = gzip.compress(data)
    assert streams._inflating == 0
    readers = [streams.inflating_reader(io.BytesIO(blob)) for _ in range(streams._CPUS + 1)]
    assert streams._inflating == streams._CPUS + 1
    # More layers inflating than cores: the last one inflates in its reader's thread...
    last = readers[-1]
    first_part = last.read(100_000)
    assert not last.threaded and not isinstance(last.reader, streams.PrefetchReader)
    # ...until another finishes and a core is spare: then a thread takes over where the direct reads stopped.
    assert read_in(readers[0], 300_000) == data
    readers[0].close()
    readers[0].close()      # twice is harmless and counts once
    assert streams._inflating == streams._CPUS
    rest = read_in(last, 300_000)
    assert last.threaded and isinstance(last.reader, streams.PrefetchReader)
    assert first_part + rest == data
    for reader in readers[1:-1]:
        assert read_in(reader, 300_000) == data
    for reader in readers[1:]:
        reader.close()
    assert streams._inflating == 0


def test_inflating_reader_reports_corruption_from_its_threads():
    blob = bytearray(gzip.compress(payload(2 * 1024 * 1024)))
    blob[len(blob) // 3] ^= 0x55
    reader = streams.inflating_reader(io.BytesIO(bytes(blob)))
    with pytest.raises(CorruptImageError):
        read_in(reader, 65536)
    reader.close()
    assert streams._inflating == 0


ALLOCATOR_PROBE = '''
import sys
import tarfile
from occystrap import streams
streams.tune_allocator()
streams.tune_allocator()
print(streams._allocator_tuned, 'ctypes' in sys.modules)
'''


@pytest.mark.parametrize('user_setting', [None, 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_'])
def test_allocator_tuning_is_applied_once_and_never_over_the_users_settings(user_setting):
    if not os.confstr('CS_GNU_LIBC_VERSION'):
        pytest.fail('these tests expect glibc (Debian); tune_allocator leaves other C libraries alone')
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    if user_setting:
        env[user_setting] = '1048576'
    result = subprocess.run([sys.executable, '-c', ALLOCATOR_PROBE], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    # mallopt is reached through ctypes, which nothing else in a pull imports: its absence means it was not called.
    assert result.stdout.split() == ['True', 'False' if user_setting else 'True']


# --- one verifying copy -------------------------------------------------------------------------------------------

def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def layer_stack(blob, blob_digest, diffid):
    """What Layer.open() reads from a registry: the blob verified, read ahead, inflated, and the diffid verified."""
    verified_blob = streams.HashingReader(io.BytesIO(blob), expected=blob_digest, what='blob %s' % blob_digest,
                                          expected_size=len(blob))
    return streams.HashingReader(streams.inflating_reader(verified_blob), expected=diffid, what='layer %s' % diffid)


def test_copy_verified_copies_a_layer_stack_and_returns_its_size():
    data = payload(2 * 1024 * 1024 + 3)
    blob = gzip.compress(data)
    reader = layer_stack(blob, sha256(blob), sha256(data))
    out = io.BytesIO()
    try:
        assert streams.copy_verified(reader, out) == len(data)
    finally:
        reader.close()
    assert out.getvalue() == data
    assert reader.verified and reader.digest == sha256(data)


def test_copy_verified_names_the_layer_whose_diffid_is_not_what_the_config_promised():
    data = payload(300_000)
    blob = gzip.compress(data)
    promised = sha256(b'something else')
    reader = layer_stack(blob, sha256(blob), promised)
    try:
        with pytest.raises(DigestMismatchError, match=promised):
            streams.copy_verified(reader, io.BytesIO())
    finally:
        reader.close()


def test_copy_verified_names_the_blob_whose_bytes_were_swapped_under_a_valid_gzip_stream():
    # The blob inflates cleanly and to the promised diffid, but it is not the blob the manifest named: only the
    # blob's own HashingReader, read to its end in the read-ahead thread, can tell.
    data = payload(300_000)
    blob = gzip.compress(data)
    named = sha256(gzip.compress(data, 1))
    assert named != sha256(blob)
    reader = layer_stack(blob, named, sha256(data))
    try:
        with pytest.raises(DigestMismatchError, match=named):
            streams.copy_verified(reader, io.BytesIO())
    finally:
        reader.close()


class Verifying(streams.ChunkReader):
    """A reader whose check() is the only thing that can fail, to see that the copies call it after the end."""

    def __init__(self, data, problem=None):
        self.raw = io.BytesIO(data)
        self.problem = problem
        self.checked_at = None

    def read(self, size=-1):
        return self.raw.read(size)

    def check(self):
        self.checked_at = self.raw.tell()
        if self.problem:
            raise CorruptImageError(self.problem)


def test_copy_and_drain_verified_call_check_once_everything_is_read():
    data = os.urandom(3 * streams.CHUNK + 5)
    reader = Verifying(data)
    out = io.BytesIO()
    assert streams.copy_verified(reader, out) == len(data)
    assert out.getvalue() == data and reader.checked_at == len(data)

    reader = Verifying(data)
    reader.read(10)          # a consumer that stopped early: the rest is drained, then checked
    assert streams.drain_verified(reader) == len(data) - 10
    assert reader.checked_at == len(data)

    with pytest.raises(CorruptImageError, match='not what was promised'):
        streams.copy_verified(Verifying(data, 'not what was promised'), io.BytesIO())
    with pytest.raises(CorruptImageError, match='not what was promised'):
        streams.drain_verified(Verifying(data, 'not what was promised'))


def test_drain_verified_rejects_a_blob_shorter_or_longer_than_its_descriptor_says():
    data = os.urandom(100_000)
    for size in (len(data) - 1, len(data) + 1):
        reader = streams.HashingReader(io.BytesIO(data), expected=sha256(data), what='blob X', expected_size=size)
        with pytest.raises(CorruptImageError, match='blob X is %d bytes, expected %d' % (len(data), size)):
            streams.drain_verified(reader)
    reader = streams.HashingReader(io.BytesIO(data), expected=sha256(data), expected_size=len(data))
    assert streams.drain_verified(reader) == len(data) and reader.verified


def test_drain_reads_any_stream_to_its_end_and_a_hashing_reader_checks_itself_there():
    assert streams.drain(io.BytesIO(b'x' * (streams.CHUNK + 1))) == streams.CHUNK + 1
    data = os.urandom(10_000)
    reader = streams.HashingReader(io.BytesIO(data), expected=sha256(data + b'!'), what='blob Y')
    with pytest.raises(DigestMismatchError, match='blob Y'):
        streams.drain(reader)


@pytest.mark.parametrize('kind', ['gzip', 'zstd', 'none', 'prefetch', 'inflating'])
def test_every_reader_answers_check_after_its_end(kind):
    data = payload(200_000)
    if kind == 'prefetch':
        reader = streams.PrefetchReader(io.BytesIO(data))
    elif kind == 'inflating':
        reader = streams.inflating_reader(io.BytesIO(gzip.compress(data)))
    else:
        packed = {'gzip': gzip.compress, 'zstd': zstandard.compress, 'none': bytes}[kind](data)
        reader = streams.decompressing_reader(io.BytesIO(packed))
    try:
        out = io.BytesIO()
        assert streams.copy_verified(reader, out) == len(data)
        assert out.getvalue() == data
        assert reader.check() is None
    finally:
        reader.close()


def test_a_hashing_reader_checked_before_its_end_fails():
    data = os.urandom(10_000)
    reader = streams.HashingReader(io.BytesIO(data), expected=sha256(data), what='blob Z', expected_size=len(data))
    reader.read(100)
    with pytest.raises(CorruptImageError, match='blob Z is 100 bytes'):
        reader.check()


def test_hashing_writer_hashes_counts_and_passes_on_what_tarfile_writes():
    raw = io.BytesIO()
    out = streams.HashingWriter(raw)
    data = os.urandom(70_000)
    with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo('etc/data')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    written = raw.getvalue()
    assert out.size == out.tell() == len(written) and out.digest == sha256(written)
    with tarfile.open(fileobj=io.BytesIO(written)) as tar:
        assert tar.extractfile('etc/data').read() == data
    assert out.write(b'') == 0 and out.size == len(written)


def test_temporary_file_is_kept_when_filled_and_removed_when_filling_fails(tmp_path):
    with streams.temporary_file(str(tmp_path), 'layer-', '.tar') as (out, path):
        out.write(b'whole')
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith('layer-')
    with open(path, 'rb') as f:
        assert f.read() == b'whole'
    data = payload(100_000)
    with pytest.raises(DigestMismatchError):
        with streams.temporary_file(str(tmp_path), 'layer-', '.tar') as (out, failed), \
                streams.HashingReader(io.BytesIO(data), expected=sha256(data[:-1])) as reader:
            streams.copy_verified(reader, out)
    assert not os.path.exists(failed) and os.listdir(tmp_path) == [os.path.basename(path)]


def test_bytes_hidden_after_a_tars_end_are_still_verified_by_the_readers_of_layers(tmp_path):
    # Tar readers stop at the end-of-archive blocks; whatever follows must still reach the digest check, in
    # extraction (streams.drain on any stream) as in the filters' member walk (streams.drain_verified).
    from occystrap import extract
    from occystrap.filters import rewrite
    from occystrap.model import Blob, Layer, MEDIA_OCI_LAYER_TAR
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo('etc/motd')
        info.size = 5
        tar.addfile(info, io.BytesIO(b'hello'))
    clean = buffer.getvalue()
    tampered = clean + b'\0' * 10240 + b'smuggled'
    promised = sha256(clean)

    reader = streams.HashingReader(io.BytesIO(tampered), expected=promised, what='layer %s' % promised)
    with pytest.raises(DigestMismatchError, match=promised):
        extract.extract_layer(reader, str(tmp_path))
    assert streams.drain(io.BytesIO(tampered)) == len(tampered)

    layer = Layer(diffid=promised, origin=Blob(promised, MEDIA_OCI_LAYER_TAR, None, lambda: io.BytesIO(tampered)))
    with pytest.raises(DigestMismatchError, match=promised):
        list(rewrite.iter_members(layer, data=False))
    honest = Layer(diffid=promised, origin=Blob(promised, MEDIA_OCI_LAYER_TAR, None, lambda: io.BytesIO(clean)))
    assert [info.name for info, _ in rewrite.iter_members(honest, data=False)] == ['etc/motd']
