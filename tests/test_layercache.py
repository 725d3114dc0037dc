"""Unit tests of the layer cache file: keys, merging with other writers, atomic writes, broken files."""

import json
import multiprocessing
import os
import threading

from occystrap.layercache import FORMAT, LayerCache, cache_key
from occystrap.uris import FilterSpec

DIFFID = 'sha256:' + 'a' * 64
BLOB = 'sha256:' + 'b' * 64
OTHER_BLOB = 'sha256:' + 'c' * 64
GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'


def test_lookup_misses_then_hits_after_record(tmp_path):
    cache = LayerCache(str(tmp_path / 'cache.json'))
    assert cache.lookup(DIFFID, 'gzip') is None
    cache.record(DIFFID, 'gzip', (), BLOB, 123, GZIP, '127.0.0.1:5000', 'lib/a')
    hit = cache.lookup(DIFFID, 'gzip')
    assert (hit.digest, hit.size, hit.media_type) == (BLOB, 123, GZIP)
    assert hit.repositories_in('127.0.0.1:5000') == ['lib/a']
    assert hit.repositories_in('127.0.0.1:6000') == []


def test_key_separates_compression_and_filters():
    plain = cache_key(DIFFID, 'gzip', ())
    assert plain != cache_key(DIFFID, 'zstd', ())
    ts = FilterSpec('normalize-timestamps', {'ts': '0'})
    assert cache_key(DIFFID, 'gzip', [ts]) != plain
    assert cache_key(DIFFID, 'gzip', [ts]) == cache_key(DIFFID, 'gzip', ['normalize-timestamps:ts=0'])
    ex = FilterSpec('exclude', {'pattern': '*.pyc'})
    assert cache_key(DIFFID, 'gzip', [ts, ex]) != cache_key(DIFFID, 'gzip', [ex, ts])


def test_saved_file_is_read_by_a_new_run(tmp_path):
    path = tmp_path / 'sub' / 'cache.json'
    cache = LayerCache(str(path))
    cache.record(DIFFID, 'gzip', ['exclude:pattern=*.pyc'], BLOB, 9, GZIP, 'reg:1', 'x/y')
    assert cache.save() is True
    payload = json.loads(path.read_text())
    assert payload['format'] == FORMAT
    assert len(payload['entries']) == 1
    again = LayerCache(str(path))
    assert again.lookup(DIFFID, 'gzip', ['exclude:pattern=*.pyc']).digest == BLOB
    assert again.lookup(DIFFID, 'gzip') is None
    assert again.save() is False   # nothing new: the file is left alone
    assert not [p for p in os.listdir(path.parent) if p.endswith('.tmp')]


def test_save_merges_with_entries_another_process_wrote(tmp_path):
    path = str(tmp_path / 'cache.json')
    first = LayerCache(path)
    second = LayerCache(path)          # both loaded the (empty) file before either wrote
    first.record(DIFFID, 'gzip', (), BLOB, 1, GZIP, 'reg:1', 'a/one')
    second.record(DIFFID, 'zstd', (), OTHER_BLOB, 2, GZIP, 'reg:1', 'a/two')
    second.record(DIFFID, 'gzip', (), BLOB, 1, GZIP, 'reg:1', 'a/three')
    first.save()
    second.save()
    merged = LayerCache(path)
    assert merged.lookup(DIFFID, 'zstd').digest == OTHER_BLOB
    assert sorted(merged.lookup(DIFFID, 'gzip').repositories_in('reg:1')) == ['a/one', 'a/three']


def test_a_newer_digest_replaces_an_old_one(tmp_path):
    path = str(tmp_path / 'cache.json')
    old = LayerCache(path)
    old.record(DIFFID, 'gzip', (), BLOB, 1, GZIP, 'reg:1', 'a/one')
    old.save()
    new = LayerCache(path)
    new.record(DIFFID, 'gzip', (), OTHER_BLOB, 5, GZIP, 'reg:1', 'a/two')
    new.save()
    hit = LayerCache(path).lookup(DIFFID, 'gzip')
    assert (hit.digest, hit.size, hit.repositories_in('reg:1')) == (OTHER_BLOB, 5, ['a/two'])


def test_broken_or_foreign_file_is_an_empty_cache_with_a_warning(tmp_path):
    path = tmp_path / 'cache.json'
    warnings = []
    path.write_text('{not json')
    assert len(LayerCache(str(path), warn=warnings.append)) == 0
    path.write_text(json.dumps({'something': 'else'}))
    assert len(LayerCache(str(path), warn=warnings.append)) == 0
    assert len(warnings) == 2 and all(str(path) in w for w in warnings)
    # Malformed entries are dropped one by one, good ones kept.
    path.write_text(json.dumps({'format': FORMAT, 'version': 1, 'entries': {
        'good': {'digest': BLOB, 'size': 1, 'media_type': GZIP, 'locations': [['r', 'x']]},
        'bad': {'digest': 7, 'size': 'x'}}}))
    assert len(LayerCache(str(path))) == 1
    # Writing replaces the broken content with a valid file.
    path.write_text('garbage')
    cache = LayerCache(str(path), warn=warnings.append)
    cache.record(DIFFID, 'gzip', (), BLOB, 1, GZIP, 'r', 'x')
    cache.save()
    assert json.loads(path.read_text())['format'] == FORMAT


def test_concurrent_records_from_threads_all_land(tmp_path):
    cache = LayerCache(str(tmp_path / 'cache.json'))

    def work(n):
        for i in range(50):
            cache.record('sha256:%064x' % (n * 1000 + i), 'gzip', (), BLOB, i, GZIP, 'r', 'repo/%d' % n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.save()
    assert len(LayerCache(str(tmp_path / 'cache.json'))) == 400


def _write_entries(path, start):
    cache = LayerCache(path)
    for i in range(start, start + 20):
        cache.record('sha256:%064x' % i, 'gzip', (), BLOB, i, GZIP, 'r', 'repo')
    cache.save()


def test_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / 'cache.json')
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_write_entries, args=(path, n * 100)) for n in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(LayerCache(path)) == 120
