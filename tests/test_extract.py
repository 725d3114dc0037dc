"""The safe extraction routine: hostile layers never touch anything outside the root; whiteouts follow the OCI spec."""

import io
import os
import stat
import tarfile

import pytest

from occystrap import extract
from occystrap.errors import CorruptImageError
from tests.helpers import snapshot


def tar_bytes(entries):
    """An uncompressed tar from (name, kind, extra) tuples: kind file/dir/sym/link/chr/fifo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name, kind = entry[0], entry[1]
            extra = entry[2] if len(entry) > 2 else None
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            data = None
            if kind == 'file':
                data = extra if isinstance(extra, bytes) else b'data of %s\n' % name.encode()
                info.size = len(data)
                info.mode = 0o644
            elif kind == 'dir':
                info.type = tarfile.DIRTYPE
                info.mode = extra if isinstance(extra, int) else 0o755
            elif kind == 'sym':
                info.type = tarfile.SYMTYPE
                info.linkname = extra
            elif kind == 'link':
                info.type = tarfile.LNKTYPE
                info.linkname = extra
            elif kind == 'chr':
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
                info.mode = 0o666
            elif kind == 'fifo':
                info.type = tarfile.FIFOTYPE
                info.mode = 0o644
            else:
                raise ValueError(kind)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def apply(root, entries, **kwargs):
    warnings = []
    summary = extract.extract_layer(io.BytesIO(tar_bytes(entries)), str(root), warn=warnings.append, **kwargs)
    return summary, warnings


@pytest.fixture
def jail(tmp_path):
    """A root inside a sentinel directory: anything that escapes the root lands in the sentinel and is caught."""
    sentinel = tmp_path / 'sentinel'
    root = sentinel / 'a' / 'b' / 'root'
    root.mkdir(parents=True)
    (sentinel / 'keep.txt').write_text('unchanged')
    return sentinel, root


def outside(sentinel, root):
    """What exists under the sentinel but outside the root."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(sentinel):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not (full == str(root) or full.startswith(str(root) + os.sep)):
                found.add(os.path.relpath(full, sentinel))
    return found


BEFORE = {'keep.txt', 'a', 'a/b'}


def test_hostile_members_are_refused_and_nothing_escapes(jail, tmp_path):
    sentinel, root = jail
    victim = sentinel / 'keep.txt'
    hostile = [
        ('../escape', 'file'),
        ('../../../escape2', 'file'),
        ('ok/../../escape3', 'file'),
        ('evil', 'sym', str(sentinel)),              # absolute target: fine as a link, interpreted in the container
        ('evil/file', 'file'),                         # but never written through
        ('evil/keep.txt', 'file', b'overwritten'),
        ('up', 'sym', '../../..'),                     # relative target climbing out: refused
        ('up/file', 'file'),                           # up was refused, so this is an ordinary file in a new dir
        ('deep/up2', 'sym', '../../x'),
        ('hard', 'link', '/etc/passwd'),               # absolute: means root/etc/passwd, which does not exist
        ('hard2', 'link', '../outside'),
        ('hard3', 'link', '../../../keep.txt'),
        ('.wh...', 'file'),                            # whiteout naming ..
        ('sub/.wh.', 'file'),                          # whiteout naming nothing
        ('evil/.wh.keep.txt', 'file'),                 # whiteout through a symlink
        ('dev/null', 'chr'),
        ('pipe', 'fifo'),
    ]
    summary, warnings = apply(root, hostile)
    refused = {name for name, _ in summary.refused}
    assert refused == {'../escape', '../../../escape2', 'ok/../../escape3', 'evil/file', 'evil/keep.txt', 'up',
                       'deep/up2', 'hard', 'hard2', 'hard3', '.wh...', 'sub/.wh.', 'evil/.wh.keep.txt',
                       'dev/null', 'pipe'}
    assert len(warnings) == len(summary.refused)
    assert all('refused' in w for w in warnings)
    assert outside(sentinel, root) == BEFORE
    assert victim.read_text() == 'unchanged'
    assert os.readlink(root / 'evil') == str(sentinel)
    assert not os.path.islink(root / 'up') and (root / 'up' / 'file').is_file()
    assert sorted(os.listdir(root)) == ['evil', 'up']
    reasons = dict(summary.refused)
    assert 'symlink' in reasons['evil/file']
    assert '..' in reasons['../escape']
    assert 'not been extracted' in reasons['hard']
    assert 'device' in reasons['dev/null']


def test_absolute_names_land_inside_the_root(jail):
    sentinel, root = jail
    summary, _ = apply(root, [('/abs/path', 'file', b'abs'), ('/abs/link', 'link', '/abs/path')])
    assert summary.refused == []
    assert (root / 'abs' / 'path').read_bytes() == b'abs'
    assert os.stat(root / 'abs' / 'link').st_ino == os.stat(root / 'abs' / 'path').st_ino
    assert outside(sentinel, root) == BEFORE


def test_symlink_planted_in_an_earlier_layer_is_not_followed(jail):
    sentinel, root = jail
    first, _ = apply(root, [('etc', 'sym', '../../..'), ('lib', 'sym', str(sentinel))])
    assert [name for name, _ in first.refused] == ['etc']
    summary, _ = apply(root, [('lib/keep.txt', 'file', b'x'), ('lib/.wh.keep.txt', 'file'),
                              ('lib/.wh..wh..opq', 'file'), ('lib2', 'link', 'lib/keep.txt')])
    expected = {'lib/keep.txt', 'lib/.wh.keep.txt', 'lib/.wh..wh..opq', 'lib2'}
    assert {name for name, _ in summary.refused} == expected
    assert outside(sentinel, root) == BEFORE
    assert (sentinel / 'keep.txt').read_text() == 'unchanged'


def test_a_file_and_a_directory_replace_each_other(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    apply(root, [('a', 'dir'), ('a/inner', 'file'), ('b', 'file'), ('c', 'sym', 'b')])
    apply(root, [('a', 'file', b'now a file'), ('b', 'dir'), ('b/x', 'file', b'x'), ('c', 'dir')])
    assert (root / 'a').read_bytes() == b'now a file'
    assert (root / 'b' / 'x').read_bytes() == b'x'
    assert (root / 'c').is_dir() and not (root / 'c').is_symlink()


def test_whiteouts_delete_what_lower_layers_made(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    apply(root, [('etc', 'dir'), ('etc/a', 'file'), ('etc/b', 'file'), ('opt', 'dir'), ('opt/x', 'file'),
                 ('opt/sub', 'dir'), ('opt/sub/y', 'file'), ('gone', 'dir'), ('gone/z', 'file')])
    summary, warnings = apply(root, [
        ('etc/.wh.a', 'file'),
        ('.wh.gone', 'file'),
        ('opt/new', 'file', b'new'),           # same layer, before the opaque marker: stays
        ('opt/sub', 'dir'),
        ('opt/sub/kept', 'file', b'kept'),
        ('opt/.wh..wh..opq', 'file'),
        ('etc/c', 'file', b'c'),
        ('etc/.wh.c', 'file'),                 # a whiteout never hides its own layer's file
    ])
    assert warnings == []
    assert summary.whiteouts == 4
    assert snapshot(root) == {
        'etc': ('dir', 0o755), 'etc/b': ('file', 0o644, b'data of etc/b\n'), 'etc/c': ('file', 0o644, b'c'),
        'opt': ('dir', 0o755), 'opt/new': ('file', 0o644, b'new'), 'opt/sub': ('dir', 0o755),
        'opt/sub/kept': ('file', 0o644, b'kept'),
    }


def test_keep_mode_writes_whiteouts_as_files(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    summary, _ = apply(root, [('a', 'file'), ('.wh.a', 'file'), ('d/.wh..wh..opq', 'file')], whiteouts=extract.KEEP)
    assert sorted(os.listdir(root)) == ['.wh.a', 'a', 'd']
    assert os.listdir(root / 'd') == ['.wh..wh..opq']
    assert summary.whiteouts == 0


def test_overlay_mode_makes_overlayfs_whiteouts(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    apply(root, [('.wh.gone', 'file'), ('d/.wh..wh..opq', 'file'), ('d/kept', 'file')], whiteouts=extract.OVERLAY)
    st = os.lstat(root / 'gone')
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / 'd', 'trusted.overlay.opaque') == b'y'
    assert sorted(os.listdir(root)) == ['d', 'gone']


@pytest.mark.parametrize('entries', [
    [('.wh.d', 'file'), ('d', 'dir'), ('d/x', 'file')],     # whited out, then made again
    [('.wh.d', 'file'), ('d/x', 'file')],                   # made again implicitly
    [('d/x', 'file'), ('.wh.d', 'file')],                   # the whiteout after the layer's own directory
])
def test_overlay_mode_turns_a_replaced_directory_opaque(tmp_path, entries):
    root = tmp_path / 'root'
    root.mkdir()
    summary, warnings = apply(root, entries, whiteouts=extract.OVERLAY)
    assert warnings == []
    assert (root / 'd').is_dir() and (root / 'd' / 'x').is_file()
    assert os.getxattr(root / 'd', 'trusted.overlay.opaque') == b'y'


def test_devices_only_when_asked_for_as_root(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    summary, _ = apply(root, [('null', 'chr'), ('pipe', 'fifo')], allow_devices=True)
    if os.geteuid() == 0:
        assert summary.refused == []
        assert os.lstat(root / 'null').st_rdev == os.makedev(1, 3)
        assert stat.S_ISFIFO(os.lstat(root / 'pipe').st_mode)
    else:
        assert len(summary.refused) == 2


def test_metadata_modes_mtimes_and_owners(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode in (('d', tarfile.DIRTYPE, 0o750), ('d/f', tarfile.REGTYPE, 0o4755),
                                 ('d/l', tarfile.SYMTYPE, 0o777)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 1_234_567_890, 1234, 5678
            if kind == tarfile.SYMTYPE:
                info.linkname = 'f'
            if kind == tarfile.REGTYPE:
                info.pax_headers = {'SCHILY.xattr.user.note': 'hello'}
            tar.addfile(info, io.BytesIO(b'') if kind == tarfile.REGTYPE else None)
    extract.extract_layer(io.BytesIO(buffer.getvalue()), str(root))
    for name in ('d', 'd/f', 'd/l'):
        assert os.lstat(root / name).st_mtime == 1_234_567_890, name
    assert stat.S_IMODE(os.stat(root / 'd').st_mode) == (0o750 if os.geteuid() == 0 else 0o750 | 0o700)
    if os.geteuid() == 0:
        assert stat.S_IMODE(os.stat(root / 'd' / 'f').st_mode) == 0o4755
        assert (os.lstat(root / 'd' / 'f').st_uid, os.lstat(root / 'd' / 'l').st_gid) == (1234, 5678)
    assert os.getxattr(root / 'd' / 'f', 'user.note') == b'hello'


def test_not_a_tar_is_a_clear_error(tmp_path):
    with pytest.raises(CorruptImageError, match='not a valid tar'):
        extract.extract_layer(io.BytesIO(b'this is not a tar file at all' * 30), str(tmp_path), what='layer X')


def test_read_file_in_does_not_follow_symlinks(tmp_path):
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    (tmp_path / 'secret').write_text('host secret')
    os.symlink(str(tmp_path / 'secret'), root / 'etc' / 'passwd')
    os.symlink(str(tmp_path), root / 'link')
    (root / 'etc' / 'group').write_text('root:x:0:\n')
    assert extract.read_file_in(str(root), '/etc/passwd') is None
    assert extract.read_file_in(str(root), 'link/secret') is None
    assert extract.read_file_in(str(root), '/etc/group') == b'root:x:0:\n'


def test_a_name_too_long_is_refused_not_fatal(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    summary, warnings = apply(root, [('x' * 300, 'file'), ('fine', 'file')])
    assert [name for name, _ in summary.refused] == ['x' * 300]
    assert 'too long' in summary.refused[0][1]
    assert os.listdir(root) == ['fine']
