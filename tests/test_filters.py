"""Unit tests of the four filters and the shared tar rewriter, on images built in memory.

Layers are tar files written here with tarfile; results are looked at with GNU tar where an independent reader
makes sense.
"""

import gzip
import io
import json
import subprocess
import tarfile

import pytest

from occystrap import layertar, pipeline, streams
from occystrap.errors import CorruptImageError, DigestMismatchError, UsageError
from occystrap.filters import rewrite
from occystrap.filters.exclude import Exclude
from occystrap.filters.inspect import Inspect
from occystrap.filters.search import PathMatcher, Search
from occystrap.filters.timestamps import NormalizeTimestamps
from occystrap.model import Blob, Image, Layer, MEDIA_OCI_LAYER_GZIP
from occystrap.settings import Settings


# --- helpers ------------------------------------------------------------------------------------------------------

def tar_bytes(entries, mtime=1_600_000_000, uname='root', gname='root', pax=None, fmt=tarfile.PAX_FORMAT):
    """An uncompressed tar from [(path, spec)], spec bytes (a file) or a dict with type/data/target/mode."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=fmt) as tar:
        for path, spec in entries:
            spec = {'type': 'file', 'data': spec} if isinstance(spec, bytes) else dict(spec)
            info = tarfile.TarInfo(path)
            info.mtime = spec.get('mtime', mtime)
            info.uid, info.gid = spec.get('uid', 0), spec.get('gid', 0)
            info.uname, info.gname = uname, gname
            info.pax_headers = dict(pax or {})
            data = None
            if spec['type'] == 'file':
                data = spec.get('data', b'')
                info.size = len(data)
                info.mode = spec.get('mode', 0o644)
            elif spec['type'] == 'dir':
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif spec['type'] == 'symlink':
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, spec['target'], 0o777
            elif spec['type'] == 'hardlink':
                info.type, info.linkname, info.mode = tarfile.LNKTYPE, spec['target'], 0o644
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_layer(tmp_path, name, entries, **kwargs):
    path = tmp_path / name
    path.write_bytes(tar_bytes(entries, **kwargs))
    return Layer.from_file(str(path), created_by='RUN make %s' % name)


def blob_layer(data, corrupt=False):
    """A layer that streams from a gzip 'blob' like an input's layers do (digests from the true bytes)."""
    blob = gzip.compress(data, mtime=0)
    digest = streams.sha256_bytes(blob)
    stored = blob[:-12] + bytes([blob[-12] ^ 1]) + blob[-11:] if corrupt else blob
    origin = Blob(digest=digest, media_type=MEDIA_OCI_LAYER_GZIP, size=len(stored),
                  opener=lambda: io.BytesIO(stored))
    return Layer(diffid=streams.sha256_bytes(data), origin=origin, created_by='COPY blob')


def make_image(layers, name='example/app', tag='1.0', history=True):
    config = {'architecture': 'amd64', 'os': 'linux', 'created': '2021-01-02T03:04:05Z',
              'rootfs': {'type': 'layers', 'diff_ids': [layer.diffid for layer in layers]},
              'config': {'Cmd': ['/bin/sh']}}
    if history:
        config['history'] = [{'created': '2021-01-02T03:04:05Z', 'created_by': layer.created_by}
                             for layer in layers]
    return Image(name=name, tag=tag, config_bytes=json.dumps(config).encode(), layers=list(layers),
                 source='test', manifest_digest='sha256:' + 'ab' * 32)


class Collector(pipeline.ImageOutput):
    """An output that keeps what it is given."""

    def __init__(self, ctx):
        super().__init__(None, ctx)
        self.images = []

    def write(self, image):
        self.images.append(image)


@pytest.fixture
def ctx(tmp_path):
    context = pipeline.RunContext(Settings(parallel=3, temp_dir=str(tmp_path / 'work')))
    yield context
    context.close()


def run_filter(cls, options, image, ctx):
    collector = Collector(ctx)
    cls(collector, options, ctx).write(image)
    assert len(collector.images) == 1
    return collector.images[0]


def gnu_tar_list(path, verbose=False):
    """Member names as GNU tar lists them (an independent reader), './' and trailing '/' stripped."""
    args = ['tar', '--numeric-owner', '--full-time', '-tvf' if verbose else '-tf', path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    if verbose:
        return out
    return [line.removeprefix('./').rstrip('/') for line in out]


def members(layer):
    with tarfile.open(layer.path) as tar:
        return {info.name: info for info in tar}


# --- rewrite ------------------------------------------------------------------------------------------------------

def test_member_path_and_whiteout_target():
    assert layertar.member_path('./etc/passwd') == 'etc/passwd'
    assert layertar.member_path('/usr/bin/') == 'usr/bin'
    assert layertar.member_path('./') == ''
    assert layertar.whiteout_target('etc/.wh.passwd') == 'etc/passwd'
    assert layertar.whiteout_target('.wh.opt') == 'opt'
    assert layertar.whiteout_target('var/cache/.wh..wh..opq') == 'var/cache'
    assert layertar.whiteout_target('etc/passwd') is None


def test_rewrite_drops_hard_links_to_dropped_members(tmp_path):
    layer = file_layer(tmp_path, 'l.tar', [('data', b'secret\n'), ('copy', {'type': 'hardlink', 'target': 'data'}),
                                           ('keep', b'k')])
    new = rewrite.rewrite_layer(layer, lambda info: None if info.name == 'data' else info, str(tmp_path))
    assert gnu_tar_list(new.path) == ['keep']
    assert new.origin is None and new.created_by == 'RUN make l.tar'
    assert new.diffid == streams.sha256_file(new.path)


def test_rewrite_keeps_long_names_links_and_whiteouts(tmp_path):
    long_name = 'opt/' + 'x' * 150 + '/file.txt'
    entries = [(long_name, b'long'), ('etc/.wh.old', b''), ('var/.wh..wh..opq', b''),
               ('bin/sh', {'type': 'symlink', 'target': 'busybox'}),
               ('bin/ln', {'type': 'hardlink', 'target': long_name})]
    layer = file_layer(tmp_path, 'l.tar', entries)
    new = rewrite.rewrite_layer(layer, lambda info: info, str(tmp_path))
    assert gnu_tar_list(new.path) == [name for name, _ in entries]
    got = members(new)
    assert got['bin/sh'].linkname == 'busybox' and got['bin/ln'].linkname == long_name
    with tarfile.open(new.path) as tar:
        assert tar.extractfile(long_name).read() == b'long'


def test_rewrite_renames_even_when_a_stale_pax_path_exists(tmp_path):
    long_name = 'a/' + 'y' * 120
    layer = file_layer(tmp_path, 'l.tar', [(long_name, b'1')])

    def rename(info):
        info.name = 'short'
        return info

    new = rewrite.rewrite_layer(layer, rename, str(tmp_path))
    assert gnu_tar_list(new.path) == ['short']


def test_rewrite_streams_from_origin_and_verifies_it(tmp_path):
    data = tar_bytes([('a', b'1'), ('b', b'2')])
    new = rewrite.rewrite_layer(blob_layer(data), lambda info: info, str(tmp_path))
    assert gnu_tar_list(new.path) == ['a', 'b']
    with pytest.raises((DigestMismatchError, CorruptImageError)):
        rewrite.rewrite_layer(blob_layer(data, corrupt=True), lambda info: info, str(tmp_path))
    # a failed rewrite leaves no temporary file behind
    assert sorted(p.name for p in tmp_path.glob('rewrite-*')) == [new.path.rsplit('/', 1)[1]]


def test_iter_members_verifies_the_diffid_of_a_streamed_layer():
    data = tar_bytes([('a', b'1')])
    lying = Layer(diffid='sha256:' + '0' * 64, origin=blob_layer(data).origin)
    with pytest.raises(DigestMismatchError):
        list(rewrite.iter_members(lying))


def test_rewrite_reports_a_truncated_layer(tmp_path):
    data = tar_bytes([('big', b'x' * 5000)])
    path = tmp_path / 'short.tar'
    path.write_bytes(data[:3000])
    with pytest.raises(CorruptImageError, match='truncated'):
        rewrite.rewrite_layer(Layer.from_file(str(path)), lambda info: info, str(tmp_path))
    assert not list(tmp_path.glob('rewrite-*'))


def test_iter_members_reports_a_non_tar_layer(tmp_path):
    path = tmp_path / 'junk.tar'
    path.write_bytes(b'this is not a tar file at all' * 40)
    with pytest.raises(CorruptImageError, match='not a valid tar'):
        list(rewrite.iter_members(Layer.from_file(str(path))))


# --- normalize-timestamps -----------------------------------------------------------------------------------------

def test_normalize_makes_layers_differing_only_in_times_and_names_identical(tmp_path, ctx):
    entries = [('etc', {'type': 'dir'}), ('etc/hosts', b'127.0.0.1 localhost\n'),
               ('bin/sh', {'type': 'symlink', 'target': 'dash'}),
               ('home/u/f', {'type': 'file', 'data': b'x', 'uid': 1000, 'gid': 1000})]
    first = file_layer(tmp_path, 'a.tar', entries, mtime=1_500_000_000, uname='root', gname='root')
    second = file_layer(tmp_path, 'b.tar', entries, mtime=1_700_000_123, uname='builder', gname='wheel',
                        pax={'atime': '1700000999.5', 'ctime': '1700000998.25'})
    assert first.diffid != second.diffid
    image = make_image([first, second])
    out = run_filter(NormalizeTimestamps, {}, image, ctx)
    assert out.layers[0].diffid == out.layers[1].diffid
    assert all(layer.origin is None for layer in out.layers)
    assert out.diffids == [layer.diffid for layer in out.layers]
    listing = gnu_tar_list(out.layers[1].path, verbose=True)
    assert all('1970-01-01 00:00:00' in line for line in listing), listing
    assert any(' 1000/1000 ' in line for line in listing), listing   # numeric owners kept
    for info in members(out.layers[1]).values():
        assert info.mtime == 0 and info.uname == '' and info.gname == ''
        assert not {'atime', 'ctime', 'mtime'} & set(info.pax_headers)
    assert out.config['created'] == '1970-01-01T00:00:00Z'
    assert [h['created'] for h in out.config['history']] == ['1970-01-01T00:00:00Z'] * 2
    assert out.config_digest != image.config_digest
    assert out.manifest_digest is None


def test_normalize_is_deterministic_and_honours_ts(tmp_path, ctx):
    layer = file_layer(tmp_path, 'a.tar', [('f', b'1'), ('d', {'type': 'dir'})], mtime=1_234_567_890)
    once = run_filter(NormalizeTimestamps, {'ts': '1600000000'}, make_image([layer]), ctx)
    twice = run_filter(NormalizeTimestamps, {'ts': '1600000000'}, make_image([layer]), ctx)
    assert once.layers[0].diffid == twice.layers[0].diffid
    assert once.config_bytes == twice.config_bytes
    assert once.layers[0].path != twice.layers[0].path
    assert {info.mtime for info in members(once.layers[0]).values()} == {1_600_000_000}
    assert once.config['created'] == '2020-09-13T12:26:40Z'


def test_normalize_streams_layers_from_their_blobs(ctx):
    a = blob_layer(tar_bytes([('f', b'same')], mtime=1))
    b = blob_layer(tar_bytes([('f', b'same')], mtime=2))
    out = run_filter(NormalizeTimestamps, {}, make_image([a, b]), ctx)
    assert out.layers[0].diffid == out.layers[1].diffid
    assert out.layers[0].path.startswith(ctx.workdir)


@pytest.mark.parametrize('ts', ['yesterday', '-5', '1.5'])
def test_normalize_rejects_bad_ts(ts, ctx):
    with pytest.raises(UsageError, match='ts'):
        NormalizeTimestamps(Collector(ctx), {'ts': ts}, ctx)


# --- exclude ------------------------------------------------------------------------------------------------------

def test_exclude_drops_matching_files_and_directory_contents(tmp_path, ctx):
    lower = file_layer(tmp_path, 'lower.tar', [
        ('etc', {'type': 'dir'}), ('etc/hosts', b'h'), ('etc/ssl/key.pem', b'KEY'),
        ('var/cache/apt/pkgcache.bin', b'cache'), ('var/cache', {'type': 'dir'}), ('var/log/x.log', b'l'),
        ('usr/lib/python3/a.pyc', b'pyc'), ('usr/lib/python3/a.py', b'py'),
        ('link-to-key', {'type': 'hardlink', 'target': 'etc/ssl/key.pem'})])
    upper = file_layer(tmp_path, 'upper.tar', [('app/main.py', b'print(1)\n'), ('app/README', b'r')])
    image = make_image([lower, upper])
    out = run_filter(Exclude, {'pattern': '*.pyc,var/cache,*.pem'}, image, ctx)
    assert gnu_tar_list(out.layers[0].path) == ['etc', 'etc/hosts', 'var/log/x.log', 'usr/lib/python3/a.py']
    assert out.layers[0].origin is None
    assert out.layers[1] is upper              # nothing matched: the very same layer goes on
    assert out.diffids == [out.layers[0].diffid, upper.diffid]
    assert out.config_digest != image.config_digest
    assert out.layers[0].diffid == streams.sha256_file(out.layers[0].path)


def test_exclude_leaves_an_image_without_matches_untouched(tmp_path, ctx):
    layer = blob_layer(tar_bytes([('etc/hosts', b'h')]))
    image = make_image([layer])
    out = run_filter(Exclude, {'pattern': 'nothing/*'}, image, ctx)
    assert out is image
    assert out.layers[0] is layer and layer.origin is not None
    assert out.config_bytes == image.config_bytes and out.manifest_digest == image.manifest_digest


def test_exclude_judges_whiteouts_by_the_path_they_hide(tmp_path, ctx):
    layer = file_layer(tmp_path, 'l.tar', [('etc/.wh.secret', b''), ('etc/.wh.other', b''),
                                           ('tmp/.wh..wh..opq', b''), ('.wh..wh..opq', b''), ('etc/ok', b'1')])
    out = run_filter(Exclude, {'pattern': 'etc/secret,tmp'}, make_image([layer]), ctx)
    assert gnu_tar_list(out.layers[0].path) == ['etc/.wh.other', '.wh..wh..opq', 'etc/ok']


def test_exclude_needs_a_pattern(ctx):
    with pytest.raises(UsageError, match='pattern'):
        Exclude(Collector(ctx), {}, ctx)
    with pytest.raises(UsageError, match='pattern'):
        Exclude(Collector(ctx), {'pattern': ' , '}, ctx)


# --- search -------------------------------------------------------------------------------------------------------

def test_path_matcher_globs_and_regexes():
    glob = PathMatcher(['*.conf', 'etc/ssl'])
    assert glob.matches('./etc/nginx/nginx.conf')
    assert glob.matches('/etc/ssl') and not glob.matches('etc/ssl/cert.pem')
    assert glob.matches_tree('etc/ssl/cert.pem') and not glob.matches_tree('etc/sslx/cert.pem')
    assert not glob.matches('etc/nginx/nginx.conf.d/x')
    assert PathMatcher('/usr/*').matches('usr/bin/env')
    regex = PathMatcher(r'bin/(ba)?sh$', regex=True)
    assert regex.matches('usr/bin/bash') and regex.matches('bin/sh') and not regex.matches('bin/shell')
    with pytest.raises(UsageError, match='regular expression'):
        PathMatcher('(', regex=True)
    with pytest.raises(UsageError):
        PathMatcher('')


def search_image(tmp_path):
    first = file_layer(tmp_path, 'a.tar', [('etc/passwd', b'root:x:0:0\n'), ('etc/shadow', b'root:!:1::\n'),
                                           ('usr/bin/bash', b'ELF'), ('usr/bin', {'type': 'dir'})])
    second = file_layer(tmp_path, 'b.tar', [('usr/bin/sh', {'type': 'symlink', 'target': 'bash'}),
                                            ('home/me/.bashrc', b'alias')])
    return make_image([first, second])


def test_search_filter_prints_glob_matches_and_passes_the_image_on(tmp_path, ctx, capsys):
    image = search_image(tmp_path)
    out = run_filter(Search, {'pattern': 'usr/bin/*'}, image, ctx)
    assert out is image
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['example/app:1.0 %s usr/bin/bash' % image.layers[0].diffid,
                     'example/app:1.0 %s usr/bin/sh' % image.layers[1].diffid]
    # the search read the layers into the workdir, where the output can reuse them
    assert all(layer.path.startswith(ctx.workdir) for layer in image.layers if layer.origin is not None)


def test_search_filter_regex_and_script_friendly(tmp_path, ctx, capsys):
    image = search_image(tmp_path)
    run_filter(Search, {'pattern': r'(^|/)\.?bash', 'regex': 'true', 'script_friendly': 'true'}, image, ctx)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['example/app:1.0:%s:usr/bin/bash' % image.layers[0].diffid,
                     'example/app:1.0:%s:home/me/.bashrc' % image.layers[1].diffid]


def test_search_filter_json_lines(tmp_path, capsys):
    context = pipeline.RunContext(Settings(output_format='json', temp_dir=str(tmp_path / 'w')))
    try:
        image = search_image(tmp_path)
        run_filter(Search, {'pattern': 'etc/*'}, image, context)
    finally:
        context.close()
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [('etc/passwd', 'file', 11), ('etc/shadow', 'file', 11)]
    assert [(r['path'], r['type'], r['size']) for r in records] == expected
    assert {r['image'] for r in records} == {'example/app'} and records[0]['tag'] == '1.0'


def test_search_filter_validates_options(ctx):
    with pytest.raises(UsageError):
        Search(Collector(ctx), {'pattern': 'x', 'regex': 'maybe'}, ctx)
    with pytest.raises(UsageError):
        Search(Collector(ctx), {}, ctx)


# --- inspect ------------------------------------------------------------------------------------------------------

def test_inspect_appends_one_json_line_per_layer(tmp_path, ctx):
    report = tmp_path / 'layers.jsonl'
    streamed = blob_layer(tar_bytes([('f', b'from a blob')]))
    local = file_layer(tmp_path, 'a.tar', [('g', b'local')])
    image = make_image([streamed, local])
    assert run_filter(Inspect, {'file': str(report)}, image, ctx) is image
    run_filter(Inspect, {'file': str(report)}, make_image([local], name='other/img', tag='2'), ctx)
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(records) == 3
    assert records[0] == {'image': 'example/app', 'tag': '1.0', 'diffid': streamed.diffid,
                          'size': len(tar_bytes([('f', b'from a blob')])), 'created_by': 'COPY blob',
                          'digest': streamed.origin.digest}
    assert records[1]['digest'] is None and records[1]['size'] == local.size
    assert (records[2]['image'], records[2]['tag']) == ('other/img', '2')


def test_inspect_after_exclude_reports_rewritten_layers(tmp_path, ctx):
    report = tmp_path / 'r.jsonl'
    layer = blob_layer(tar_bytes([('keep', b'1'), ('drop.tmp', b'2')]))
    collector = Collector(ctx)
    chain = Exclude(Inspect(collector, {'file': str(report)}, ctx), {'pattern': '*.tmp'}, ctx)
    chain.write(make_image([layer]))
    record = json.loads(report.read_text())
    assert record['digest'] is None
    assert record['diffid'] == collector.images[0].layers[0].diffid != layer.diffid


def test_inspect_unwritable_file_is_a_clear_error(tmp_path, ctx):
    layer = file_layer(tmp_path, 'a.tar', [('g', b'1')])
    with pytest.raises(Exception, match='cannot append to inspect file'):
        run_filter(Inspect, {'file': str(tmp_path / 'missing-dir' / 'x.jsonl')}, make_image([layer]), ctx)


# --- filters through the pipeline's option checking --------------------------------------------------------------

@pytest.mark.parametrize('name,allowed', [('normalize-timestamps', ('ts',)), ('exclude', ('pattern',)),
                                          ('search', ('pattern', 'regex', 'script_friendly')),
                                          ('inspect', ('file',))])
def test_filters_are_registered_with_their_options(name, allowed):
    assert pipeline.load(pipeline.FILTERS, name).option_names() == allowed
