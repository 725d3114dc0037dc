"""Property-based tests of the one extraction routine: whatever tar stream a layer is, nothing outside the root is
created, changed or deleted, nothing inside links to a file outside, and every failure is an OccystrapError.

Each example extracts generated layers into `root/dest` beside a sentinel tree `root/outside` (files, a directory, a
symlink), with link targets that aim at the sentinels by relative and absolute paths, and compares the sentinel tree
before and after. Bounded: a few hundred examples in total, well under the suite's budget.
"""

import dataclasses
import io
import os
import shutil
import tarfile
import tempfile
from typing import Optional

from hypothesis import HealthCheck, example, given, settings, strategies as st

from occystrap import extract, streams
from occystrap.errors import OccystrapError
from occystrap.model import Layer
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from tests.helpers import assert_contained, picture, sandbox

PROPERTY_SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Path components chosen to collide: few plain names (so members replace and link to each other), the escapes, the
# whiteout forms, odd bytes (an undecodable byte, ESC, a newline, a backslash) and one long name.
COMPONENTS = ['a', 'b', 'd', '..', '.', '', '.wh.a', '.wh.d', '.wh..wh..opq', '.wh.', '.wh...', 'x\x1b[2J',
              'odd\udcff', 'new\nline', 'back\\slash', 'l' * 120, 'outside', 'sub']
KINDS = ['file', 'dir', 'symlink', 'hardlink', 'fifo', 'chr', 'blk', 'contiguous', 'unknown']
FORMATS = [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]


@dataclasses.dataclass
class Entry:
    name: str
    kind: str
    link: str = ''
    mode: int = 0o644
    data: bytes = b''
    pax_path: Optional[str] = None       # a PAX 'path' record overriding the header's name
    pax_linkpath: Optional[str] = None
    uid: int = 0
    mtime: int = 1_600_000_000


def names():
    parts = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4)     # with the prefix, at most 5 '..'
    prefix = st.sampled_from(['', '', '/', './', '../', '//'])
    return st.builds(lambda p, parts: p + '/'.join(parts), prefix, parts)


# A link target that stands for the sentinel tree's absolute path, which differs per example: build_tar puts the
# real path in its place.
OUTSIDE = '<outside>'


def link_targets():
    """Targets that climb out, name the sentinels absolutely, point at themselves or at other members."""
    fixed = ['../outside/file', '../../outside/file', '../' * 8 + 'etc/passwd', OUTSIDE + '/file', OUTSIDE,
             OUTSIDE + '/dir', OUTSIDE + '/link', '/', '.', '..', 'a', 'a/b', 'd', 'sub/../../outside/file', '']
    return st.one_of(st.sampled_from(fixed), names())


def entries():
    return st.builds(
        Entry,
        name=names(),
        kind=st.sampled_from(KINDS),
        link=link_targets(),
        mode=st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o1777, 0o7777]),
        data=st.sampled_from([b'', b'data\n', b'x' * 5000]),
        pax_path=st.one_of(st.none(), names()),
        pax_linkpath=st.one_of(st.none(), link_targets()),
        uid=st.sampled_from([0, 1000, 65534, 2 ** 32 - 1]),
        mtime=st.sampled_from([0, 1_600_000_000, 2 ** 33, -1]),
    )


@dataclasses.dataclass
class LayerSpec:
    """One generated layer: its members, the tar format, and damage done to the stream (cut or one byte flipped)."""

    items: list
    tar_format: int = tarfile.PAX_FORMAT
    damage: str = 'none'
    where: float = 0.5


def layer_specs():
    layer = st.builds(LayerSpec, items=st.lists(entries(), min_size=1, max_size=12),
                      tar_format=st.sampled_from(FORMATS),
                      damage=st.sampled_from(['none', 'none', 'none', 'cut', 'flip']),
                      where=st.floats(min_value=0, max_value=1))
    return st.lists(layer, min_size=1, max_size=3)


def build_tar(items, tar_format, outside='/nonexistent'):
    """The tar stream of `items`; a name a format cannot carry is written in PAX form instead (tarfile refuses it)."""
    buf = io.BytesIO()
    for item in items:
        info = tarfile.TarInfo(item.name)
        info.mode, info.uid, info.gid, info.mtime = item.mode, item.uid, item.uid, item.mtime
        data = None
        if item.kind in ('file', 'contiguous'):
            info.type = tarfile.REGTYPE if item.kind == 'file' else tarfile.CONTTYPE
            data = item.data
            info.size = len(data)
        elif item.kind == 'dir':
            info.type = tarfile.DIRTYPE
        elif item.kind in ('symlink', 'hardlink'):
            info.type = tarfile.SYMTYPE if item.kind == 'symlink' else tarfile.LNKTYPE
            info.linkname = item.link.replace(OUTSIDE, outside)
        elif item.kind == 'unknown':
            info.type = b'Z'
        else:
            info.type = {'fifo': tarfile.FIFOTYPE, 'chr': tarfile.CHRTYPE, 'blk': tarfile.BLKTYPE}[item.kind]
            info.devmajor, info.devminor = 1, 3
        pax = {}
        if item.pax_path is not None:
            pax['path'] = item.pax_path
        if item.pax_linkpath is not None:
            pax['linkpath'] = item.pax_linkpath.replace(OUTSIDE, outside)
        info.pax_headers = pax
        try:
            block = info.tobuf(tar_format, 'utf-8', 'surrogateescape')
        except ValueError:
            block = info.tobuf(tarfile.PAX_FORMAT, 'utf-8', 'surrogateescape')
        buf.write(block)
        if data:
            buf.write(data + b'\0' * (-len(data) % tarfile.BLOCKSIZE))
    buf.write(b'\0' * tarfile.BLOCKSIZE * 2)
    return buf.getvalue()


def layer_bytes(spec, outside):
    data = build_tar(spec.items, spec.tar_format, outside)
    at = min(int(spec.where * len(data)), len(data) - 1)
    if spec.damage == 'cut':
        return data[:at]
    if spec.damage == 'flip':
        return data[:at] + bytes([data[at] ^ 0xff]) + data[at + 1:]
    return data


@settings(max_examples=200, **PROPERTY_SETTINGS)
@given(specs=layer_specs(), whiteouts=st.sampled_from([extract.APPLY, extract.KEEP, extract.OVERLAY]),
       allow_devices=st.booleans())
@example(specs=[LayerSpec([Entry('evil', 'symlink', link='../outside'), Entry('evil/file', 'file', data=b'x')])],
         whiteouts=extract.APPLY, allow_devices=False)
@example(specs=[LayerSpec([Entry('evil', 'symlink', link=OUTSIDE), Entry('evil/file', 'file', data=b'x')])],
         whiteouts=extract.APPLY, allow_devices=False)
@example(specs=[LayerSpec([Entry('a', 'file', data=b'x', pax_path='../outside/file')])],
         whiteouts=extract.APPLY, allow_devices=False)
@example(specs=[LayerSpec([Entry('h', 'hardlink', link=OUTSIDE + '/file')])], whiteouts=extract.APPLY,
         allow_devices=False)
@example(specs=[LayerSpec([Entry('d', 'dir')]),
                LayerSpec([Entry('d', 'symlink', link=OUTSIDE), Entry('d/.wh.file', 'file'),
                           Entry('d/.wh..wh..opq', 'file')])],
         whiteouts=extract.APPLY, allow_devices=False)
def test_generated_layers_never_touch_anything_outside_the_root(specs, whiteouts, allow_devices):
    with tempfile.TemporaryDirectory(prefix='extract-prop-') as top:
        top = os.path.realpath(top)
        outside, dest, before, inodes = sandbox(top)
        for spec in specs:
            try:
                extract.extract_layer(io.BytesIO(layer_bytes(spec, outside)), dest, whiteouts=whiteouts,
                                      allow_devices=allow_devices, warn=lambda message: None)
            except OccystrapError:
                pass                           # refusing a whole layer is fine; any other exception fails the test
        assert picture(top, dest) == before
        assert_contained(dest, inodes)


@settings(max_examples=40, **PROPERTY_SETTINGS)
@given(specs=layer_specs(), parallel=st.sampled_from([1, 3]))
def test_apply_layers_of_generated_layers_stays_inside(specs, parallel):
    """The same through apply_layers (the path oci:// and dir://?expand take), with layers as verified files."""
    with tempfile.TemporaryDirectory(prefix='apply-prop-') as top:
        top = os.path.realpath(top)
        outside, dest, before, inodes = sandbox(top)
        files = os.path.join(top + '-files')
        os.mkdir(files)
        layers = []
        for number, spec in enumerate(specs):
            data = layer_bytes(spec, outside)
            path = os.path.join(files, '%d.tar' % number)
            with open(path, 'wb') as f:
                f.write(data)
            layers.append(Layer(diffid=streams.sha256_bytes(data), path=path))
        ctx = RunContext(Settings(parallel=parallel))      # its workdir is elsewhere, so top's picture holds
        try:
            extract.apply_layers(ctx, layers, dest, what='generated')
        except OccystrapError:
            pass
        finally:
            ctx.close()
            shutil.rmtree(files)
        assert picture(top, dest) == before
        assert_contained(dest, inodes)
