"""Staged output directories and files (outputs/staging.py): whole or absent, never over something that exists."""

import os

import pytest

from occystrap.errors import OccystrapError
from occystrap.outputs import staging


def test_a_staged_directory_appears_only_when_committed(tmp_path):
    dest = tmp_path / 'bundle'
    staged = staging.StagedDirectory(str(dest), 'oci://%s' % dest)
    open(os.path.join(staged.path, 'config.json'), 'w').close()
    assert not dest.exists()
    assert os.path.dirname(staged.path) == str(tmp_path) and os.path.basename(staged.path).startswith('.')
    staged.commit()
    assert sorted(os.listdir(dest)) == ['config.json']
    assert os.listdir(tmp_path) == ['bundle']


def test_a_staged_directory_may_replace_an_empty_directory_but_nothing_else(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    staged = staging.StagedDirectory(str(empty), 'x')
    staged.commit()
    assert empty.is_dir()

    full = tmp_path / 'full'
    full.mkdir()
    (full / 'keep').write_text('mine')
    with pytest.raises(OccystrapError, match='cannot write oci:///full: .* exists and is not an empty directory'):
        staging.StagedDirectory(str(full), 'oci:///full')
    assert (full / 'keep').read_text() == 'mine'


def test_a_symlink_to_an_empty_directory_is_not_a_destination(tmp_path):
    # Renaming over the link would be harmless, but following it would build the image wherever it points.
    target = tmp_path / 'elsewhere'
    target.mkdir()
    link = tmp_path / 'dest'
    link.symlink_to(target)
    with pytest.raises(OccystrapError, match='not an empty directory'):
        staging.StagedDirectory.check(str(link), 'mounts:///dest')
    assert link.is_symlink() and os.listdir(target) == []


def test_commit_refuses_a_destination_filled_meanwhile_and_discard_leaves_nothing(tmp_path):
    dest = tmp_path / 'dest'
    staged = staging.StagedDirectory(str(dest), 'oci:///dest')
    dest.mkdir()
    (dest / 'other').write_text('someone else')
    with pytest.raises(OccystrapError, match='not an empty directory'):
        staged.commit()
    staged.discard()
    assert sorted(os.listdir(tmp_path)) == ['dest'] and os.listdir(dest) == ['other']


def test_a_missing_parent_is_a_clear_error(tmp_path):
    with pytest.raises(OccystrapError, match='directory %s does not exist' % (tmp_path / 'no')):
        staging.StagedDirectory(str(tmp_path / 'no' / 'dest'), 'oci:///no/dest')


def test_write_atomically_and_replace_directory_leave_no_temporary_names(tmp_path):
    path = tmp_path / 'catalog.json'
    staging.write_atomically(str(path), b'{}')
    staging.write_atomically(str(path), b'{"a": 1}')
    assert path.read_bytes() == b'{"a": 1}' and oct(path.stat().st_mode & 0o777) == '0o644'
    (tmp_path / 'taken').mkdir()
    with pytest.raises(IsADirectoryError):
        staging.write_atomically(str(tmp_path / 'taken'), b'x')
    assert sorted(os.listdir(tmp_path)) == ['catalog.json', 'taken']
    (tmp_path / 'taken').rmdir()

    old, new = tmp_path / 'rootfs', tmp_path / '.rootfs-new'
    old.mkdir()
    (old / 'stale').write_text('old')
    new.mkdir()
    (new / 'fresh').write_text('new')
    staging.replace_directory(str(new), str(old))
    assert os.listdir(old) == ['fresh']
    assert sorted(os.listdir(tmp_path)) == ['catalog.json', 'rootfs']
