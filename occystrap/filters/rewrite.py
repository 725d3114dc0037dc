"""Reading layer tars member by member, and rewriting them into new layers; shared by the filters and reports.

A rewrite streams: the old tar is read once (tarfile stream mode, or random access when the layer is already a
file on disk), each member goes through an edit function, and the new tar is written to a temporary file while it is
hashed, so layers of any size never sit in memory. The result is a new Layer without origin: its bytes changed, so
the compressed blob it came from no longer describes it.

Decisions every rewrite shares:

- The output is PAX format, members in input order. pax keys that mirror a TarInfo field (path, mtime, uname...)
  are dropped when the edit changes that field, because tarfile would otherwise write the stale pax value over it.
- Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are ordinary empty files to tar and are written through as they are; the
  edit function decides about them like any other member (`layertar.whiteout_target` says which path one hides).
- A hard link whose target was dropped earlier in the same layer is dropped too, rather than turned into a copy
  of the target: a dangling link would make the layer fail to extract, and a copy would bring back the very bytes
  the edit removed.
"""

import tarfile

from occystrap import layertar, model, streams
from occystrap.errors import CorruptImageError

# TarInfo fields that a pax header can carry a copy of (pax keyword -> attribute).
_PAX_MIRRORS = {'path': 'name', 'linkpath': 'linkname', 'uname': 'uname', 'gname': 'gname', 'uid': 'uid',
                'gid': 'gid', 'mtime': 'mtime', 'size': 'size'}


def _layer_name(layer):
    # repr says the diffid (or blob digest) without computing anything, unlike the diffid property.
    return repr(layer).removeprefix('<Layer ').removesuffix('>')


def iter_members(layer, data=True):
    """Yield (TarInfo, file object or None) for every member of the layer's uncompressed tar, in order.

    The file object (regular files only, and only when `data`) must be read before the next member is asked for.
    A materialized layer is read with random access; otherwise the layer's stream is read once and, after the last
    member, drained to its end so that its digests are verified. Malformed tars raise CorruptImageError.
    """
    what = 'layer %s' % _layer_name(layer)
    reader = None
    try:
        if layer.path is not None:
            tar = tarfile.open(layer.path, mode='r:', copybufsize=streams.CHUNK)
        else:
            reader = layer.open()
            try:
                tar = tarfile.open(fileobj=reader, mode='r|', bufsize=streams.CHUNK, copybufsize=streams.CHUNK)
            except tarfile.ReadError as e:
                # Go's archive/tar (and so Docker) reads an empty stream as an empty archive; so do we.
                if str(e) != 'empty file':
                    raise
                tar = None
        if tar is not None:
            with tar:
                for info in tar:
                    yield info, (tar.extractfile(info) if data and info.isreg() else None)
        if reader is not None:
            streams.drain_verified(reader)
    except tarfile.TarError as e:
        raise CorruptImageError('%s is not a valid tar: %s' % (what, e))
    except streams.DECOMPRESS_ERRORS as e:
        raise CorruptImageError('%s is corrupt: %s' % (what, e))
    except EOFError as e:
        raise CorruptImageError('%s is truncated: %s' % (what, e))
    finally:
        if reader is not None:
            reader.close()


def _mirrored(info):
    return {key: getattr(info, attr) for key, attr in _PAX_MIRRORS.items()}


def rewrite_layer(layer, edit, workdir=None):
    """A new Layer whose tar is `layer`'s with `edit` applied to every member.

    `edit(info)` gets each TarInfo (`layertar.member_path(info.name)` is its clean path) and returns the TarInfo to
    write (usually the same object, changed in place) or None to drop the member. It must not change a regular
    file's size. Hard links to dropped members are dropped without asking `edit`. The new tar goes to a temporary
    file in `workdir` while it is hashed; the returned layer owns that file, keeps `created_by`, and has no origin.
    """
    try:
        with streams.temporary_file(workdir, 'rewrite-', '.tar') as (raw, tmp):
            out = streams.HashingWriter(raw)
            # Plain 'w' mode writes each block straight through; stream mode ('w|') buffers by concatenating
            # bytes, which is quadratic in its buffer size.
            with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT, copybufsize=streams.CHUNK) as tar:
                dropped = set()
                for info, data in iter_members(layer):
                    path = layertar.member_path(info.name)
                    if info.islnk() and layertar.member_path(info.linkname) in dropped:
                        new = None
                    else:
                        before = _mirrored(info)
                        new = edit(info)
                    if new is None:
                        dropped.add(path)
                        continue
                    after = _mirrored(new)
                    for key in _PAX_MIRRORS:
                        if key in new.pax_headers and after[key] != before[key]:
                            del new.pax_headers[key]
                    if new.isreg() and data is None:
                        raise CorruptImageError('member %s of layer %s has no data' % (path, _layer_name(layer)))
                    tar.addfile(new, data if new.isreg() else None)
    except (tarfile.TarError, EOFError) as e:
        # Reading a member's data happens here, outside iter_members: a short member is a corrupt layer.
        raise CorruptImageError('layer %s is truncated or not a valid tar: %s' % (_layer_name(layer), e))
    return model.Layer.from_file(tmp, diffid=out.digest, created_by=layer.created_by, owned=True)
