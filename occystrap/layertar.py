"""Names inside tar archives, and the whiteout files of layer tars: defined here once, for every module that reads
them (tarball input, filters, reports, extraction).

A member name is untrusted text. Two clean forms exist because two questions are asked of it:

- `member_path`: the path a layer member is listed under, as tools show it (no leading './' or '/', no trailing
  '/'). Nothing else is changed, so a filter or search sees the member as written; extraction refuses the
  dangerous ones (`member_parts` gives it the components to judge).
- `archive_name`: the name another member (a manifest, a link) reaches a member of a tarball by; '..', '.',
  repeated '/' and backslashes are resolved lexically and cannot climb above the archive's root.

Whiteouts (OCI image spec, "Representing Changes"): `.wh.NAME` hides NAME of lower layers; `.wh..wh..opq` in a
directory hides everything lower layers put there; other `.wh..wh.` names are metadata with no meaning to us.
"""

import posixpath
import tarfile

WHITEOUT_PREFIX = '.wh.'
WHITEOUT_META_PREFIX = '.wh..wh.'
OPAQUE_WHITEOUT = '.wh..wh..opq'

_TYPE_NAMES = {tarfile.REGTYPE: 'file', tarfile.AREGTYPE: 'file', tarfile.CONTTYPE: 'file',
               tarfile.GNUTYPE_SPARSE: 'file', tarfile.DIRTYPE: 'dir', tarfile.SYMTYPE: 'symlink',
               tarfile.LNKTYPE: 'hardlink', tarfile.CHRTYPE: 'char', tarfile.BLKTYPE: 'block',
               tarfile.FIFOTYPE: 'fifo'}


def member_path(name):
    """A tar member name as a clean relative path: no leading './' or '/', no trailing '/', '' for the root."""
    while name.startswith('./') or name.startswith('/'):
        name = name[2:] if name.startswith('./') else name[1:]
    name = name.rstrip('/')
    return '' if name == '.' else name


def archive_name(name):
    """A member name as other members of the same archive refer to it: '\\' read as '/', '.', '..' and repeated
    '/' resolved lexically from the root (so '../../x' is 'x'), no leading or trailing '/'; '' for the root."""
    return member_path(posixpath.normpath('/' + name.replace('\\', '/')))


def member_parts(name):
    """The path components of a member name, '' and '.' left out; '..' is kept for the caller to refuse."""
    return [part for part in name.split('/') if part not in ('', '.')]


def member_type(info):
    """'file', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo' (or 'other') for a TarInfo."""
    return _TYPE_NAMES.get(info.type, 'other')


def whiteout_target(path):
    """For a whiteout member path, the path it hides ('dir' for an opaque 'dir/.wh..wh..opq'); None otherwise."""
    parent, _, base = path.rpartition('/')
    if base == OPAQUE_WHITEOUT:
        return parent
    if base.startswith(WHITEOUT_PREFIX):
        return (parent + '/' if parent else '') + base[len(WHITEOUT_PREFIX):]
    return None
