"""Tar member names and whiteouts (occystrap/layertar.py): hostile names in both clean forms, and their users."""

import io
import tarfile

import pytest

from occystrap import extract, layertar
from occystrap.errors import CorruptImageError
from occystrap.filters.search import PathMatcher
from occystrap.inputs.tarball import TarIndex


@pytest.mark.parametrize('name, clean', [
    ('etc/passwd', 'etc/passwd'),
    ('./etc/passwd', 'etc/passwd'),
    ('/etc/passwd', 'etc/passwd'),
    ('.//./etc/', 'etc'),
    ('./', ''),
    ('.', ''),
    ('/', ''),
    ('', ''),
    # Left as written: a filter must see the member the way extraction will judge (and refuse) it.
    ('etc/../../x', 'etc/../../x'),
    ('a//b/./c', 'a//b/./c'),
    ('..', '..'),
])
def test_member_path_strips_only_the_leading_and_trailing_noise(name, clean):
    assert layertar.member_path(name) == clean


@pytest.mark.parametrize('name, clean', [
    ('blobs/sha256/abc', 'blobs/sha256/abc'),
    ('./blobs//sha256/./abc/', 'blobs/sha256/abc'),
    ('../../../../etc/passwd', 'etc/passwd'),
    ('/etc/shadow', 'etc/shadow'),
    ('//etc/shadow', 'etc/shadow'),
    ('blobs/sha256/../../../../x', 'x'),
    ('..\\..\\windows\\system32', 'windows/system32'),
    ('..', ''),
    ('.', ''),
    ('', ''),
])
def test_archive_name_resolves_every_climb_inside_the_archive(name, clean):
    assert layertar.archive_name(name) == clean


def test_member_parts_leaves_dot_dot_for_the_caller_and_extraction_refuses_it():
    assert layertar.member_parts('./usr//bin/./ls') == ['usr', 'bin', 'ls']
    assert layertar.member_parts('a/../../etc') == ['a', '..', '..', 'etc']
    assert layertar.member_parts('/') == []
    assert extract.split_member_name('./usr//bin/') == ['usr', 'bin']
    with pytest.raises(extract._Refused, match=r'\.\. component'):
        extract.split_member_name('usr/../../etc/passwd')


@pytest.mark.parametrize('path, hidden', [
    ('etc/.wh.passwd', 'etc/passwd'),
    ('.wh.opt', 'opt'),
    ('var/cache/.wh..wh..opq', 'var/cache'),
    ('.wh..wh..opq', ''),
    ('etc/passwd', None),
    ('etc/x.wh.y', None),
    ('etc/.wh.', 'etc/'),            # names nothing: extraction refuses it
])
def test_whiteout_target(path, hidden):
    assert layertar.whiteout_target(path) == hidden


def test_the_whiteout_names_are_the_oci_ones():
    assert (layertar.WHITEOUT_PREFIX, layertar.WHITEOUT_META_PREFIX, layertar.OPAQUE_WHITEOUT) == \
        ('.wh.', '.wh..wh.', '.wh..wh..opq')
    assert layertar.OPAQUE_WHITEOUT.startswith(layertar.WHITEOUT_META_PREFIX)


def test_member_type_names_every_kind_and_other_for_the_rest():
    kinds = {tarfile.REGTYPE: 'file', tarfile.DIRTYPE: 'dir', tarfile.SYMTYPE: 'symlink', tarfile.LNKTYPE: 'hardlink',
             tarfile.CHRTYPE: 'char', tarfile.BLKTYPE: 'block', tarfile.FIFOTYPE: 'fifo', b'X': 'other'}
    for kind, name in kinds.items():
        info = tarfile.TarInfo('x')
        info.type = kind
        assert layertar.member_type(info) == name


def write_tar(path, members):
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == 'file':
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
            else:
                info.type = tarfile.SYMTYPE if kind == 'symlink' else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)


def test_a_tarball_cannot_link_its_way_out_of_itself(tmp_path):
    path = tmp_path / 'hostile.tar'
    write_tar(path, [
        ('./etc/passwd', 'file', b'inside the archive'),
        ('blobs/sha256/climb', 'symlink', '../../../../../../etc/passwd'),
        ('blobs/sha256/absolute', 'symlink', '/etc/passwd'),
        ('blobs/sha256/hard', 'hardlink', '../../../etc/passwd'),
        ('blobs/sha256/away', 'symlink', '../../../../../../nowhere'),
    ])
    index = TarIndex(str(path))
    for name in ('blobs/sha256/climb', 'blobs/sha256/absolute', 'blobs/sha256/hard', '../../etc/passwd',
                 '/etc//./passwd'):
        assert index.resolve(name).name == 'etc/passwd'
        assert index.read(name) == b'inside the archive'
    assert index.resolve('blobs/sha256/away') is None
    with pytest.raises(CorruptImageError, match='has no member blobs/sha256/away'):
        index.read('blobs/sha256/away')


def test_search_patterns_and_paths_are_cleaned_alike():
    matcher = PathMatcher(['./etc/*.conf'])
    assert matcher.matches('/etc/resolv.conf') and matcher.matches('./etc/ld.so.conf')
    assert not matcher.matches('usr/etc/x.conf')
    assert PathMatcher(['etc']).matches_tree('./etc/ssl/certs/')
