"""Deterministic container image generator for tests and benchmarks.

Writes OCI image layouts (``oci-layout``, ``index.json`` with an ``org.opencontainers.image.ref.name``
annotation, ``blobs/sha256/...``) that ``skopeo copy oci:DIR:TAG docker://HOST/NAME:TAG`` accepts, or,
with ``--format docker-archive``, legacy ``docker save`` tarballs (``manifest.json``, ``<config>.json``,
``<id>/layer.tar``, ``repositories``) that ``skopeo copy docker-archive:FILE`` accepts.

Layer contents are modelled on real images so that compression behaves like it does on real data: a mix
of text-like files (configuration, scripts, docs, Python and JavaScript sources; gzip about 3.5-4x),
binary-like files (executables and libraries built from structured records with noise; about 2.5x) and
incompressible random files (compressed archives, fonts, model weights). Trees have many small files plus
some large ones, symlinks, a hard link, and upper layers that delete lower files with whiteouts.

Models (sizes at ``--scale 1``; ``--scale F`` multiplies every size, and file counts by ``sqrt(F)``):

==========  ===========================================================================================
``base``    one layer shaped like ubuntu:latest: about 3,000 files, about 79 MB uncompressed and
            about 30 MB as gzip (ratio about 2.75 with zlib level 6, 2.6 with isal level 2).
``app``     an application image: the base layer plus 23 layers (24 in all; its history has 8 further
            empty-layer entries), about 420 MB uncompressed, about 190 MB gzip. Layers range from a few
            hundred bytes (``COPY requirements.txt``) through 30-40 MB (Python runtime, node_modules) to
            85 MB (``pip install``) and a 60 MB incompressible model-weights file. One layer deletes
            files of lower layers with whiteouts (``.wh.node_modules``, ``.wh.frontend``, a base file)
            and one directory with an opaque whiteout.
``fleet``   ``--count`` images (default 12) named ``fleet-NN-ROLE`` that all share the base layer; two
            thirds of them also share a 39 MB Python runtime layer. Each has 2-4 own layers of 0.05-25 MB,
            so images are about 100-200 MB uncompressed (40-70 MB gzip) each.
==========  ===========================================================================================

Determinism: the same model, seed, scale, tag, format and compressor give byte-identical output. All
timestamps are fixed, tar entries are sorted, owners are 0:0, gzip headers carry mtime 0, and every byte
comes from ``random.Random`` instances seeded from (seed, layer key). A layer's bytes depend only on the
seed, the scale and its key, so the base layer is the same blob in ``base``, ``app`` and ``fleet`` output
of one seed. Compressed bytes depend on the compressor: by default isal (``isal.isal_zlib`` level 2) when
it is importable, otherwise zlib level 6; pass ``--compressor`` to pin one and get identical blobs on
machines with and without isal. Uncompressed layers (diffids) do not depend on the compressor.

Usage::

    python tools/imagegen.py base OUTDIR [--seed N] [--scale F] [--tag T]
    python tools/imagegen.py app OUTDIR --scale 0.05
    python tools/imagegen.py fleet OUTDIR --count 12          # OUTDIR/<name>/ per image
    python tools/imagegen.py base OUT.tar --format docker-archive
    python tools/imagegen.py fleet OUTDIR --format docker-archive   # OUTDIR/<name>.tar per image

The names of the images written are printed one per line (``--json`` prints details instead).
"""

import argparse
import array
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import operator
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
import zlib

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a project dependency, but keep the tool standalone
    isal_zlib = None

MODELS = ('base', 'app', 'fleet')
FORMATS = ('oci', 'docker-archive')

# Fixed clock for every timestamp the generator writes.
EPOCH = 1700000000
ARCHITECTURE = 'amd64'
OS = 'linux'

OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'
REF_NAME = 'org.opencontainers.image.ref.name'

DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
MB = 1000 * 1000


# ---------------------------------------------------------------------------------------------------------
# Random content
# ---------------------------------------------------------------------------------------------------------

_SYLLABLES = ('a', 'e', 'i', 'o', 'u', 'ra', 'to', 'ne', 'li', 'si', 'con', 'fig', 'us', 'er', 'in', 'de',
              'st', 'ch', 'th', 'ex', 'pre', 'pro', 'ing', 'tion', 'ed', 'ly', 's', 'lib', 'sys', 'usr',
              'bin', 'net', 'x86', '64', 'gnu', 'py', 'var', 'get', 'set', 'ma', 'ko', 'zu')
_SEPARATORS = (' ',) * 14 + (', ', '. ', ' = ', ': ', '_', '/', '(', ') ', '"', '-')
_INDENTS = ('', '', '    ', '# ', '\t', '        ')

TEXT_POOL_SIZE = 2 * 1024 * 1024
BINARY_POOL_SIZE = 4 * 1024 * 1024


def derive_rng(seed, *key):
    """Return a random.Random seeded from the seed and a key path, independent of call order."""
    material = '/'.join([str(seed)] + [str(k) for k in key]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:16], 'big'))


def _skew_table():
    # Maps uniform random bytes onto a skewed alphabet (lots of 0x00 and 0xff, a few common opcodes), which
    # is what gives machine code its order-0 redundancy.
    table = bytearray(range(256))
    for i in range(256):
        if i < 112:
            table[i] = 0x00
        elif i < 142:
            table[i] = 0xff
        elif i < 170:
            table[i] = (0x48, 0x8b, 0x89, 0xe8)[i % 4]
    return bytes(table)


_SKEW = _skew_table()


@dataclasses.dataclass(frozen=True)
class _Pools:
    words: tuple
    text: bytes
    binary: bytes


def _urn(items, exponent):
    """A 65536-entry list in which items[i] appears in proportion to 1 / (i + 1) ** exponent."""
    weights = [1.0 / (i + 1) ** exponent for i in range(len(items))]
    scale = 65536 / sum(weights)
    urn = []
    for item, weight in zip(items, weights):
        urn.extend([item] * max(1, round(weight * scale)))
    return (urn * 2)[:65536]


def _draw(rng, urn, k):
    """k items drawn from a 65536-entry urn; bulk random bytes instead of per-item calls."""
    indexes = array.array('H')
    indexes.frombytes(rng.randbytes(2 * max(k, 2)))
    if sys.byteorder == 'big':
        indexes.byteswap()  # same draws on every platform
    return operator.itemgetter(*indexes)(urn)[:k]


@functools.lru_cache(maxsize=4)
def _pools(seed):
    """Shared material that file contents are sliced from, so large layers are cheap to generate."""
    rng = derive_rng(seed, 'pools')
    words = []
    for _ in range(1500):
        words.append(''.join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    # About one separator in five ends a line.
    separators = _SEPARATORS + tuple('\n' + indent for indent in _INDENTS)
    count = TEXT_POOL_SIZE // 12
    tokens = _draw(rng, _urn(words, 1.2), count)
    text = ''.join(map(operator.add, tokens, _draw(rng, _urn(separators, 0), count)))
    lines = text.splitlines(keepends=True)
    # Real text repeats whole lines (license headers, config keys, imports): every other line is drawn from
    # a Zipf-weighted set of common lines instead.
    repeated = _draw(rng, _urn(lines[:4000], 0.9), len(lines))
    text = ''.join(itertools.chain.from_iterable(zip(lines, repeated))).encode()[:TEXT_POOL_SIZE]

    snippets = _urn([rng.randbytes(rng.randint(4, 24)).translate(_SKEW) for _ in range(1024)], 0.8)
    parts, n = [], 0
    while n < BINARY_POOL_SIZE:
        length = rng.randint(256, 4096)
        if rng.random() < 0.42:
            piece = rng.randbytes(length).translate(_SKEW)
        else:
            piece = b''.join(_draw(rng, snippets, length // 14))
        parts.append(piece)
        n += len(piece)
    binary = b''.join(parts)[:BINARY_POOL_SIZE]
    return _Pools(tuple(words), text, binary)


def _slices(rng, pool, size):
    parts, n = [], 0
    while n < size:
        length = min(size - n, rng.randint(256, 4096))
        offset = rng.randrange(len(pool) - length)
        parts.append(pool[offset:offset + length])
        n += length
    return b''.join(parts)


def make_content(rng, pools, kind, size):
    """Bytes of one file: kind is 'text', 'binary' or 'random'."""
    if size <= 0:
        return b''
    if kind == 'text':
        return _slices(rng, pools.text, size)
    if kind == 'binary':
        header = b'\x7fELF\x02\x01\x01' + bytes(9)
        return (header + _slices(rng, pools.binary, size))[:size]
    if kind == 'random':
        return rng.randbytes(size)
    raise ValueError(f'unknown content kind {kind!r}')


# ---------------------------------------------------------------------------------------------------------
# Layer specifications
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Group:
    """A set of generated files: count files sharing `size` bytes (at scale 1) under `path`.

    `path` may contain '{w}', replaced by a generated word per file (one directory per file, as in
    /usr/share/doc/<package>/copyright); `name` then fixes the file name. `links` is the fraction of files
    that also get a versioned symlink pointing at them (libfoo.so.1 -> libfoo.so.1.2.3).
    """

    path: str
    kind: str
    count: int
    size: int
    ext: str = ''
    name: str = None
    links: float = 0.0
    mode: int = 0o644


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer: generated groups plus explicit entries (symlinks, hard links, whiteouts, directories)."""

    key: str
    created_by: str
    groups: tuple = ()
    symlinks: tuple = ()     # (path, target)
    hardlinks: tuple = ()    # (path, target path inside the layer)
    whiteouts: tuple = ()    # paths of lower files to delete; 'dir/' means an opaque whiteout of dir
    dirs: tuple = ()         # (path, mode)
    files: tuple = ()        # (path, bytes, mode) with fixed contents


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str
    type: str       # 'file', 'dir', 'symlink', 'hardlink'
    mode: int = 0o644
    kind: str = None
    size: int = 0
    target: str = None
    data: bytes = None


def _word(rng, pools):
    return rng.choice(pools.words) + rng.choice(pools.words)


def _scaled(group, scale):
    if group.count == 1:
        return 1, max(0, round(group.size * scale))
    count = max(1, round(group.count * math.sqrt(scale)))
    return count, max(0, round(group.size * scale))


def _sizes(rng, count, total):
    weights = [rng.lognormvariate(0, 1.2) for _ in range(count)]
    factor = total / sum(weights)
    sizes = [int(w * factor) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def plan_layer(spec, seed, scale):
    """Return the sorted tar entries of a layer (no contents yet) and the rng to generate contents with."""
    rng = derive_rng(seed, scale, 'layer', spec.key)
    pools = _pools(seed)
    entries = {}
    for group in spec.groups:
        count, total = _scaled(group, scale)
        for size in _sizes(rng, count, total):
            directory = group.path.replace('{w}', _word(rng, pools)) if '{w}' in group.path else group.path
            name = group.name or _word(rng, pools) + group.ext
            path = f'{directory}/{name}'
            suffix = 1
            while path in entries:
                suffix += 1
                path = f'{directory}/{name}-{suffix}'
            entries[path] = Entry(path, 'file', group.mode, group.kind, size)
            if group.links and rng.random() < group.links:
                link = f'{path}.{rng.randint(1, 9)}'
                entries[link] = Entry(link, 'symlink', 0o777, target=path.rsplit('/', 1)[1])
    for path, mode in spec.dirs:
        entries[path] = Entry(path, 'dir', mode)
    for path, data, mode in spec.files:
        entries[path] = Entry(path, 'file', mode, size=len(data), data=data)
    for path, target in spec.symlinks:
        entries[path] = Entry(path, 'symlink', 0o777, target=target)
    for path, target in spec.hardlinks:
        entries[path] = Entry(path, 'hardlink', entries[target].mode, target=target)
    for path in spec.whiteouts:
        if path.endswith('/'):
            whiteout = path + '.wh..wh..opq'
        else:
            head, _, tail = path.rpartition('/')
            whiteout = f'{head}/.wh.{tail}' if head else f'.wh.{tail}'
        entries[whiteout] = Entry(whiteout, 'file', 0o644, 'text', 0)
    for path in list(entries):
        parts = path.split('/')
        for i in range(1, len(parts)):
            parent = '/'.join(parts[:i])
            if parent not in entries:
                entries[parent] = Entry(parent, 'dir', 0o755)
    ordered = [entries[p] for p in sorted(entries, key=lambda p: p.split('/'))]
    return ordered, rng


def write_layer_tar(spec, seed, scale, fileobj):
    """Write the uncompressed tar of a layer to fileobj (anything with write())."""
    entries, rng = plan_layer(spec, seed, scale)
    pools = _pools(seed)
    with tarfile.open(fileobj=fileobj, mode='w|', format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mtime = EPOCH
            info.mode = entry.mode
            info.uid = info.gid = 0
            info.uname = info.gname = ''
            data = None
            if entry.type == 'dir':
                info.type = tarfile.DIRTYPE
            elif entry.type == 'symlink':
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
            elif entry.type == 'hardlink':
                info.type = tarfile.LNKTYPE
                info.linkname = entry.target
            else:
                data = entry.data if entry.data is not None else make_content(rng, pools, entry.kind, entry.size)
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------

def _base_layer():
    lib = 'usr/lib/x86_64-linux-gnu'
    groups = (
        Group('usr/bin', 'binary', 250, 7_400_000, mode=0o755),
        Group('usr/bin', 'binary', 1, 3_600_000, name='perl', mode=0o755),
        Group('usr/sbin', 'binary', 90, 3_000_000, mode=0o755),
        Group(lib, 'binary', 220, 22_000_000, ext='.so', links=0.5),
        Group(lib, 'binary', 1, 2_200_000, name='libc.so.6', mode=0o755),
        Group(lib, 'binary', 1, 4_500_000, name='libcrypto.so.3'),
        Group(lib, 'binary', 1, 2_300_000, name='libstdc++.so.6.0.32'),
        Group(lib, 'binary', 1, 3_000_000, name='libapt-pkg.so.6.0.0'),
        Group(lib, 'binary', 1, 240_000, name='ld-linux-x86-64.so.2', mode=0o755),
        Group(f'{lib}/perl-base', 'text', 280, 6_000_000, ext='.pm'),
        Group(f'{lib}/gconv', 'binary', 250, 5_000_000, ext='.so'),
        Group('usr/lib/apt/methods', 'binary', 12, 1_000_000, mode=0o755),
        Group('usr/libexec', 'binary', 20, 600_000, mode=0o755),
        Group('usr/share/doc/{w}', 'text', 100, 1_000_000, name='copyright'),
        Group('usr/share/doc/{w}', 'random', 100, 1_200_000, name='changelog.Debian.gz'),
        Group('usr/share/zoneinfo', 'binary', 400, 1_500_000),
        Group('usr/share/i18n/charmaps', 'text', 180, 3_500_000),
        Group('usr/share/perl5/Debconf', 'text', 150, 1_000_000, ext='.pm'),
        Group('usr/share/terminfo/x', 'binary', 30, 200_000),
        Group('usr/share/bash-completion/completions', 'text', 300, 600_000),
        Group('usr/share/common-licenses', 'text', 12, 200_000),
        Group('etc', 'text', 80, 200_000, ext='.conf'),
        Group('etc/apt/apt.conf.d', 'text', 10, 20_000),
        Group('etc/default', 'text', 20, 30_000),
        Group('etc/security', 'text', 15, 60_000),
        Group('etc/systemd/system', 'text', 25, 40_000),
        Group('etc', 'text', 1, 300, name='motd'),
        Group('var/lib/dpkg/info', 'text', 400, 2_500_000, ext='.list'),
        Group('var/lib/dpkg', 'text', 1, 300_000, name='status'),
        Group('var/lib/apt/lists', 'text', 6, 120_000, ext='_Packages'),
        Group('var/cache/debconf', 'text', 1, 1_500_000, name='templates.dat'),
        Group('var/cache/debconf', 'text', 1, 1_400_000, name='templates.dat-old'),
        Group('var/log/apt', 'text', 2, 100_000, ext='.log'),
        Group('var/log', 'text', 1, 100_000, name='dpkg.log'),
    )
    symlinks = (
        ('bin', 'usr/bin'), ('sbin', 'usr/sbin'), ('lib', 'usr/lib'), ('lib64', 'usr/lib64'),
        ('usr/lib64/ld-linux-x86-64.so.2', '../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2'),
        (f'{lib}/libstdc++.so.6', 'libstdc++.so.6.0.32'),
        ('usr/bin/sh', 'dash'), ('etc/localtime', '/usr/share/zoneinfo/Etc/UTC'),
    )
    dirs = tuple((d, 0o755) for d in ('boot', 'dev', 'home', 'media', 'mnt', 'opt', 'proc', 'run', 'srv',
                                      'sys', 'usr/local/bin', 'usr/local/sbin', 'var/mail'))
    dirs += (('tmp', 0o1777), ('var/tmp', 0o1777), ('root', 0o700))
    files = (('etc/passwd', BASE_PASSWD.encode(), 0o644), ('etc/group', BASE_GROUP.encode(), 0o644))
    return LayerSpec('base', None, groups, symlinks, (('usr/bin/perl5.38.2', 'usr/bin/perl'),), (), dirs, files)


BASE_PASSWD = (
    'root:x:0:0:root:/root:/bin/bash\n'
    'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n'
    'bin:x:2:2:bin:/bin:/usr/sbin/nologin\n'
    'sys:x:3:3:sys:/dev:/usr/sbin/nologin\n'
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n'
)
BASE_GROUP = 'root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nnogroup:x:65534:\n'
APP_PASSWD = BASE_PASSWD + 'app:x:999:999::/app:/bin/sh\n'
APP_GROUP = BASE_GROUP + 'app:x:999:\n'


BASE_HISTORY = (
    ('ARG RELEASE', True),
    ('ARG LAUNCHPAD_BUILD_ARCH', True),
    ('LABEL org.opencontainers.image.ref.name=ubuntu', True),
    ('LABEL org.opencontainers.image.version=24.04', True),
    (None, False),  # ADD file:<digest> in /, filled in with the base layer's diffid
    ('CMD ["/bin/bash"]', True),
)


def _run(command):
    return f'RUN /bin/sh -c {command} # buildkit'


PYTHON_RUNTIME = LayerSpec(
    'python-runtime',
    _run('apt-get update && apt-get install -y --no-install-recommends python3.12 python3.12-venv '
         '&& rm -rf /var/lib/apt/lists/*'),
    (Group('usr/lib/python3.12', 'text', 2400, 24_000_000, ext='.py'),
     Group('usr/lib/python3.12/lib-dynload', 'binary', 70, 5_000_000, ext='.so'),
     Group('usr/lib/python3.12/encodings', 'text', 120, 1_500_000, ext='.py'),
     Group('usr/bin', 'binary', 1, 6_800_000, name='python3.12', mode=0o755),
     Group('usr/lib/x86_64-linux-gnu', 'binary', 6, 1_700_000, ext='.so', links=1.0)),
    symlinks=(('usr/bin/python3', 'python3.12'),),
)


def _app_layers():
    """(spec, None) for layers and (created_by, True) for empty history entries, in Dockerfile order."""
    app = 'app'
    venv = 'opt/venv/lib/python3.12/site-packages'
    return (
        ('ARG BUILD_ID', True),
        (LayerSpec('app-certs', _run('apt-get update && apt-get install -y --no-install-recommends '
                                     'ca-certificates curl tzdata && rm -rf /var/lib/apt/lists/*'),
                   (Group('usr/share/ca-certificates/mozilla', 'text', 140, 300_000, ext='.crt'),
                    Group('usr/bin', 'binary', 1, 280_000, name='curl', mode=0o755),
                    Group('usr/lib/x86_64-linux-gnu', 'binary', 12, 4_200_000, ext='.so', links=1.0),
                    Group('usr/share/zoneinfo/Europe', 'binary', 60, 1_600_000),
                    Group('usr/share/zoneinfo/America', 'binary', 140, 1_700_000)),
                   symlinks=tuple((f'etc/ssl/certs/{(i * 0x9e3779b1) & 0xffffffff:08x}.0',
                                   f'/usr/share/ca-certificates/mozilla/ca-{i:03d}.crt') for i in range(140)),
                   whiteouts=('var/lib/apt/lists/',)), None),
        (PYTHON_RUNTIME, None),
        (LayerSpec('app-libs', _run('apt-get update && apt-get install -y --no-install-recommends libpq5 '
                                    'libxml2 libjpeg-turbo8 libssl3 && rm -rf /var/lib/apt/lists/*'),
                   (Group('usr/lib/x86_64-linux-gnu', 'binary', 30, 12_000_000, ext='.so', links=1.0),
                    Group('usr/share/doc/{w}', 'text', 12, 90_000, name='copyright'))), None),
        ('ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', True),
        ('ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1', True),
        (LayerSpec('app-user', _run('groupadd -r app && useradd -r -g app -d /app app'),
                   (Group('etc', 'text', 1, 600, name='shadow', mode=0o640),
                    Group('etc', 'text', 1, 480, name='gshadow', mode=0o640)),
                   files=(('etc/passwd', APP_PASSWD.encode(), 0o644), ('etc/group', APP_GROUP.encode(), 0o644),
                          ('etc/passwd-', BASE_PASSWD.encode(), 0o644))), None),
        ('WORKDIR /app', True),
        (LayerSpec('app-requirements', 'COPY requirements.txt . # buildkit',
                   (Group(app, 'text', 1, 1_200, name='requirements.txt'),)), None),
        (LayerSpec('app-pip', _run('python3 -m venv /opt/venv && pip install --no-cache-dir -r requirements.txt'),
                   (Group(venv + '/{w}', 'text', 5000, 44_000_000, ext='.py'),
                    Group(venv + '/{w}', 'binary', 120, 14_000_000, ext='.cpython-312-x86_64-linux-gnu.so'),
                    Group(venv + '/numpy.libs', 'binary', 1, 24_000_000, name='libopenblas64_p-r0.so'),
                    Group(venv + '/{w}-1.0.dist-info', 'text', 80, 400_000, name='RECORD'),
                    Group(venv + '/{w}/data', 'random', 30, 3_000_000, ext='.npz'),
                    Group('opt/venv/bin', 'text', 40, 60_000, mode=0o755)),
                   symlinks=(('opt/venv/bin/python', '/usr/bin/python3'),)), None),
        (LayerSpec('app-compileall', _run('python3 -m compileall -q /opt/venv'),
                   (Group(venv + '/{w}/__pycache__', 'binary', 3000, 18_000_000, ext='.cpython-312.pyc'),)), None),
        (LayerSpec('app-package-json', 'COPY package.json package-lock.json ./ # buildkit',
                   (Group(app, 'text', 1, 2_400, name='package.json'),
                    Group(app, 'text', 1, 310_000, name='package-lock.json'))), None),
        (LayerSpec('app-npm', _run('npm ci --no-audit --no-fund'),
                   (Group('app/node_modules/{w}', 'text', 4000, 30_000_000, ext='.js'),
                    Group('app/node_modules/{w}', 'text', 600, 4_000_000, name='package.json'),
                    Group('app/node_modules/{w}/build/Release', 'binary', 4, 5_000_000, ext='.node')),
                   symlinks=(('app/node_modules/.bin/vite', '../vite/bin/vite.js'),)), None),
        (LayerSpec('app-frontend', 'COPY frontend/ ./frontend/ # buildkit',
                   (Group('app/frontend/src', 'text', 300, 3_000_000, ext='.tsx'),)), None),
        (LayerSpec('app-build', _run('npm run build'),
                   (Group('app/static/assets', 'text', 60, 12_000_000, ext='.js'),
                    Group('app/static/assets', 'random', 50, 6_000_000, ext='.woff2'))), None),
        (LayerSpec('app-prune', _run('rm -rf node_modules frontend /var/cache/debconf/templates.dat-old'),
                   whiteouts=('app/node_modules', 'app/frontend', 'var/cache/debconf/templates.dat-old')), None),
        (LayerSpec('app-source', 'COPY . /app # buildkit',
                   (Group('app/src/{w}', 'text', 400, 4_000_000, ext='.py'),
                    Group('app/tests', 'text', 80, 600_000, ext='.py'))), None),
        (LayerSpec('app-config', 'COPY --chown=app:app config/ /app/config/ # buildkit',
                   (Group('app/config', 'text', 8, 40_000, ext='.yaml'),)), None),
        (LayerSpec('app-fonts', _run('apt-get update && apt-get install -y --no-install-recommends '
                                     'fonts-dejavu-core && rm -rf /var/lib/apt/lists/*'),
                   (Group('usr/share/fonts/truetype/dejavu', 'random', 6, 2_000_000, ext='.ttf'),
                    Group('usr/share/fonts/truetype/dejavu', 'binary', 4, 1_000_000, ext='.ttf'))), None),
        (LayerSpec('app-tini', 'ADD https://github.com/krallin/tini/releases/download/v0.19.0/tini '
                               '/usr/local/bin/tini # buildkit',
                   (Group('usr/local/bin', 'binary', 1, 850_000, name='tini', mode=0o755),)), None),
        (LayerSpec('app-data-dir', _run('mkdir -p /data /app/run && chown app:app /data /app/run'),
                   dirs=(('data', 0o755), ('app/run', 0o755))), None),
        (LayerSpec('app-entrypoint', 'COPY docker-entrypoint.sh /usr/local/bin/ # buildkit',
                   (Group('usr/local/bin', 'text', 1, 2_100, name='docker-entrypoint.sh', mode=0o755),)), None),
        (LayerSpec('app-collectstatic', _run('python -m app.manage collectstatic --noinput'),
                   (Group('app/staticfiles/{w}', 'text', 500, 6_000_000, ext='.css'),
                    Group('app/staticfiles/img', 'random', 200, 4_000_000, ext='.png'))), None),
        (LayerSpec('app-server', _run('pip install --no-cache-dir gunicorn==22.0.0 uvicorn==0.30.1'),
                   (Group(venv + '/{w}', 'text', 200, 2_500_000, ext='.py'),
                    Group(venv + '/uvloop', 'binary', 1, 800_000, name='loop.cpython-312-x86_64-linux-gnu.so'))),
         None),
        (LayerSpec('app-weights', _run('curl -fsSL -o /opt/model/weights.bin "$MODEL_URL"'),
                   (Group('opt/model', 'random', 1, 60_000_000, name='weights.bin'),)), None),
        (LayerSpec('app-locale', 'COPY locale/ /app/locale/ # buildkit',
                   (Group('app/locale/{w}/LC_MESSAGES', 'text', 40, 8_000_000, name='django.po'),
                    Group('app/locale/{w}/LC_MESSAGES', 'binary', 40, 3_000_000, name='django.mo'))), None),
        (LayerSpec('app-build-id', _run('echo "$BUILD_ID" > /app/BUILD'),
                   (Group(app, 'text', 1, 41, name='BUILD'),)), None),
        ('USER app', True),
        ('EXPOSE map[8000/tcp:{}]', True),
        ('ENTRYPOINT ["tini", "--", "docker-entrypoint.sh"]', True),
        ('CMD ["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-b", "0.0.0.0:8000", "app.asgi:application"]',
         True),
    )


FLEET_ROLES = ('api', 'worker', 'web', 'scheduler', 'auth', 'billing', 'search', 'notify', 'gateway', 'reports',
               'ingest', 'admin')

# Templates for a fleet image's own layers: (created_by, groups), sizes are the maximum at scale 1.
FLEET_TEMPLATES = (
    (_run('apt-get update && apt-get install -y --no-install-recommends {pkg} && rm -rf /var/lib/apt/lists/*'),
     (('usr/lib/x86_64-linux-gnu', 'binary', 25, 0.6, '.so'), ('usr/share/doc/{w}', 'text', 20, 0.05, ''))),
    (_run('pip install --no-cache-dir -r requirements.txt'),
     (('opt/venv/lib/python3.12/site-packages/{w}', 'text', 900, 0.6, '.py'),
      ('opt/venv/lib/python3.12/site-packages/{w}', 'binary', 20, 0.4, '.so'))),
    ('COPY . /srv/{name} # buildkit',
     (('srv/{name}/{w}', 'text', 150, 1.0, '.py'),)),
    ('COPY --from=build /out/{name} /usr/local/bin/{name} # buildkit',
     (('usr/local/bin', 'binary', 1, 1.0, ''),)),
    ('COPY static/ /srv/{name}/static/ # buildkit',
     (('srv/{name}/static', 'text', 60, 0.5, '.js'), ('srv/{name}/static', 'random', 30, 0.5, '.png'))),
)


@dataclasses.dataclass
class ImageSpec:
    """An image to write: its layers (bottom first), full history, and runtime config."""

    name: str
    layers: list
    history: list        # (created_by, empty_layer) with created_by None for the base ADD
    config: dict


def _base_image_config():
    return {'Env': [DEFAULT_PATH], 'Cmd': ['/bin/bash']}


def model_images(model, seed=0, count=12):
    """Return the ImageSpecs of a model."""
    base = _base_layer()
    if model == 'base':
        return [ImageSpec('base', [base], list(BASE_HISTORY), _base_image_config())]
    if model == 'app':
        layers, history = [base], list(BASE_HISTORY)
        for item, empty in _app_layers():
            if empty:
                history.append((item, True))
            else:
                layers.append(item)
                history.append((item.created_by, False))
        config = {
            'User': 'app',
            'ExposedPorts': {'8000/tcp': {}},
            'Env': ['PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                    'PYTHONUNBUFFERED=1', 'PYTHONDONTWRITEBYTECODE=1'],
            'Entrypoint': ['tini', '--', 'docker-entrypoint.sh'],
            'Cmd': ['gunicorn', '-k', 'uvicorn.workers.UvicornWorker', '-b', '0.0.0.0:8000', 'app.asgi:application'],
            'WorkingDir': '/app',
            'Labels': {'org.opencontainers.image.title': 'app', 'org.opencontainers.image.version': '1.0.0'},
        }
        return [ImageSpec('app', layers, history, config)]
    if model == 'fleet':
        return [_fleet_image(seed, i) for i in range(count)]
    raise ValueError(f'unknown model {model!r}; choose from {", ".join(MODELS)}')


def _fleet_image(seed, index):
    role = FLEET_ROLES[index % len(FLEET_ROLES)]
    name = f'fleet-{index:02d}-{role}'
    rng = derive_rng(seed, 'fleet', name)
    layers, history = [_base_layer()], list(BASE_HISTORY)
    if index % 3 != 2:
        layers.append(PYTHON_RUNTIME)
        history.append((PYTHON_RUNTIME.created_by, False))
    history.append((f'WORKDIR /srv/{name}', True))
    for n in range(rng.randint(2, 4)):
        created_by, templates = rng.choice(FLEET_TEMPLATES)
        created_by = created_by.format(name=name, pkg=rng.choice(('libpq5', 'libxml2', 'libyaml-0-2', 'libffi8')))
        budget = rng.uniform(0.05, 25.0) * MB
        groups = tuple(Group(path.replace('{name}', name), kind, files, int(budget * share), ext,
                             name=name if files == 1 else None, mode=0o755 if files == 1 else 0o644)
                       for path, kind, files, share, ext in templates)
        layers.append(LayerSpec(f'{name}-{n}', created_by, groups))
        history.append((created_by, False))
    history.append((f'CMD ["/usr/local/bin/{name}"]', True))
    config = {'Env': [DEFAULT_PATH, f'SERVICE={name}'], 'Cmd': [f'/usr/local/bin/{name}'],
              'WorkingDir': f'/srv/{name}'}
    return ImageSpec(name, layers, history, config)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------

def default_compressor():
    """'isal' when isal is importable, else 'zlib'."""
    return 'isal' if isal_zlib is not None else 'zlib'


def _compressobj(compressor):
    # wbits 31: gzip container; both libraries write a header with mtime 0, so output is reproducible.
    if compressor == 'isal':
        if isal_zlib is None:
            raise RuntimeError('isal is not installed; use --compressor zlib')
        return isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    if compressor == 'zlib':
        return zlib.compressobj(6, zlib.DEFLATED, 31)
    raise ValueError(f'unknown compressor {compressor!r}')


class _BlobWriter:
    """File-like sink: hashes the uncompressed stream and writes it (optionally gzip-compressed) to a file."""

    def __init__(self, path, compressor=None):
        self._file = open(path, 'wb')
        self._compress = _compressobj(compressor) if compressor else None
        self.diffid_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.uncompressed_size = 0
        self.size = 0
        self._pending, self._pending_size = [], 0

    def write(self, data):
        # tarfile writes 10 KiB records; hashing and compressing in 1 MiB batches is much cheaper.
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        if self._pending_size >= 1024 * 1024:
            self._drain()
        return len(data)

    def _drain(self):
        data = b''.join(self._pending)
        self._pending, self._pending_size = [], 0
        self.diffid_hash.update(data)
        self.uncompressed_size += len(data)
        self._emit(self._compress.compress(data) if self._compress else data)

    def _emit(self, data):
        if data:
            self.blob_hash.update(data)
            self.size += len(data)
            self._file.write(data)

    def close(self):
        self._drain()
        if self._compress:
            self._emit(self._compress.flush())
        self._file.close()


@dataclasses.dataclass
class LayerInfo:
    """A written layer: blob digest and size (gzip for OCI, the tar itself for docker-archive), diffid."""

    key: str
    digest: str
    size: int
    diffid: str
    uncompressed_size: int
    path: str
    created_by: str = None


@dataclasses.dataclass
class ImageInfo:
    """A written image."""

    name: str
    path: str
    tag: str
    manifest_digest: str
    config_digest: str
    layers: list

    def to_dict(self):
        return dataclasses.asdict(self)


def _json_bytes(obj):
    return json.dumps(obj, separators=(',', ':')).encode()


def _created(i):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(EPOCH + 60 * i))


def _config(spec, layers):
    history, layer_index = [], 0
    for i, (created_by, empty) in enumerate(spec.history):
        if created_by is None:
            created_by = f'/bin/sh -c #(nop) ADD file:{layers[layer_index].diffid[7:]} in / '
        entry = {'created': _created(i), 'created_by': created_by}
        if empty:
            entry['empty_layer'] = True
        else:
            entry['comment'] = 'buildkit.dockerfile.v0' if created_by.endswith('# buildkit') else ''
            if not entry['comment']:
                del entry['comment']
            layers[layer_index].created_by = created_by
            layer_index += 1
        history.append(entry)
    if layer_index != len(layers):
        raise AssertionError(f'{spec.name}: history has {layer_index} layer entries for {len(layers)} layers')
    return {
        'architecture': ARCHITECTURE,
        'os': OS,
        'created': _created(len(spec.history)),
        'config': spec.config,
        'rootfs': {'type': 'layers', 'diff_ids': [layer.diffid for layer in layers]},
        'history': history,
    }


class _LayerCache:
    """Builds each layer once per run; images sharing a layer reuse (copy) the same blob."""

    def __init__(self, workdir, seed, scale, compressor):
        self.workdir = workdir
        self.seed = seed
        self.scale = scale
        self.compressor = compressor
        self._built = {}

    def get(self, spec):
        if spec.key not in self._built:
            path = os.path.join(self.workdir, f'{spec.key}.blob')
            writer = _BlobWriter(path, self.compressor)
            write_layer_tar(spec, self.seed, self.scale, writer)
            writer.close()
            self._built[spec.key] = LayerInfo(
                spec.key, 'sha256:' + writer.blob_hash.hexdigest(), writer.size,
                'sha256:' + writer.diffid_hash.hexdigest(), writer.uncompressed_size, path)
        return dataclasses.replace(self._built[spec.key])


def _write_blob(blobs_dir, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs_dir, digest), 'wb') as f:
        f.write(data)
    return 'sha256:' + digest


def write_oci_layout(spec, outdir, cache, tag='latest'):
    """Write one image as an OCI image layout directory; return its ImageInfo."""
    blobs = os.path.join(outdir, 'blobs', 'sha256')
    os.makedirs(blobs, exist_ok=True)
    layers = [cache.get(layer) for layer in spec.layers]
    for layer in layers:
        target = os.path.join(blobs, layer.digest[7:])
        if not os.path.exists(target):
            shutil.copyfile(layer.path, target)
        layer.path = target
    config = _json_bytes(_config(spec, layers))
    config_digest = _write_blob(blobs, config)
    manifest = _json_bytes({
        'schemaVersion': 2,
        'mediaType': OCI_MANIFEST,
        'config': {'mediaType': OCI_CONFIG, 'digest': config_digest, 'size': len(config)},
        'layers': [{'mediaType': OCI_LAYER_GZIP, 'digest': layer.digest, 'size': layer.size} for layer in layers],
    })
    manifest_digest = _write_blob(blobs, manifest)
    index = {'schemaVersion': 2, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': manifest_digest, 'size': len(manifest),
         'annotations': {REF_NAME: tag}}]}
    with open(os.path.join(outdir, 'index.json'), 'wb') as f:
        f.write(_json_bytes(index))
    with open(os.path.join(outdir, 'oci-layout'), 'wb') as f:
        f.write(_json_bytes({'imageLayoutVersion': '1.0.0'}))
    return ImageInfo(spec.name, outdir, tag, manifest_digest, config_digest, layers)


def _tar_add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(spec, path, cache, tag='latest', repository=None):
    """Write one image as a legacy `docker save` tarball; return its ImageInfo (manifest_digest is None)."""
    layers = [cache.get(layer) for layer in spec.layers]
    config = _json_bytes(_config(spec, layers))
    config_hex = hashlib.sha256(config).hexdigest()
    repository = repository or spec.name
    ids, parent = [], ''
    for layer in layers:
        # Legacy v1 ids chain the parent, like docker save's, so equal stacks give equal ids.
        ids.append(hashlib.sha256(f'{parent}\n{layer.diffid}'.encode()).hexdigest())
        parent = ids[-1]
    manifest = [{'Config': f'{config_hex}.json', 'RepoTags': [f'{repository}:{tag}'],
                 'Layers': [f'{layer_id}/layer.tar' for layer_id in ids]}]
    tmp = f'{path}.tmp'
    with tarfile.open(tmp, 'w', format=tarfile.GNU_FORMAT) as tar:
        entries = []
        for i, (layer_id, layer) in enumerate(zip(ids, layers)):
            v1 = {'id': layer_id, 'created': _created(i), 'container_config': {'Cmd': None}}
            if i:
                v1['parent'] = ids[i - 1]
            entries.append((f'{layer_id}/VERSION', b'1.0'))
            entries.append((f'{layer_id}/json', _json_bytes(v1)))
            entries.append((f'{layer_id}/layer.tar', layer))
        entries.append((f'{config_hex}.json', config))
        entries.append(('manifest.json', _json_bytes(manifest)))
        entries.append(('repositories', _json_bytes({repository: {tag: ids[-1]}})))
        for name, data in sorted(entries, key=lambda e: e[0]):
            if isinstance(data, LayerInfo):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = data.size, EPOCH, 0o644
                with open(data.path, 'rb') as f:
                    tar.addfile(info, f)
            else:
                if name.endswith('/VERSION'):
                    dir_info = tarfile.TarInfo(name.split('/')[0])
                    dir_info.type, dir_info.mtime, dir_info.mode = tarfile.DIRTYPE, EPOCH, 0o755
                    tar.addfile(dir_info)
                _tar_add_bytes(tar, name, data)
    os.replace(tmp, path)
    for layer_id, layer in zip(ids, layers):
        layer.path = f'{layer_id}/layer.tar'
    return ImageInfo(spec.name, path, tag, None, 'sha256:' + config_hex, layers)


def generate(model, outdir, seed=0, scale=1.0, fmt='oci', tag='latest', count=12, compressor=None):
    """Generate a model's images and return a list of ImageInfo.

    For 'base' and 'app', outdir is the OCI layout directory (fmt 'oci') or the tarball path
    (fmt 'docker-archive'). For 'fleet', outdir is a directory that receives <name>/ layouts or <name>.tar
    archives. Existing files at those paths are overwritten.
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; choose from {", ".join(FORMATS)}')
    if scale <= 0:
        raise ValueError('scale must be positive')
    specs = model_images(model, seed, count)
    compressor = None if fmt == 'docker-archive' else (compressor or default_compressor())
    results = []
    parent = outdir if model == 'fleet' else os.path.dirname(os.path.abspath(outdir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.imagegen-', dir=parent) as workdir:
        cache = _LayerCache(workdir, seed, scale, compressor)
        for spec in specs:
            if model == 'fleet':
                target = os.path.join(outdir, spec.name + ('.tar' if fmt == 'docker-archive' else ''))
            else:
                target = outdir
            if fmt == 'oci':
                results.append(write_oci_layout(spec, target, cache, tag))
            else:
                results.append(write_docker_archive(spec, target, cache, tag))
    return results


def gzip_ratio(info):
    """Uncompressed / compressed size over an image's layers."""
    return sum(layer.uncompressed_size for layer in info.layers) / sum(layer.size for layer in info.layers)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Generate deterministic container images for tests and benchmarks.')
    parser.add_argument('model', choices=MODELS)
    parser.add_argument('outdir', help='layout directory, tarball path (docker-archive), or directory for fleet')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--scale', type=float, default=1.0, help='multiply all sizes (default 1.0)')
    parser.add_argument('--tag', default='latest')
    parser.add_argument('--count', type=int, default=12, help='number of fleet images (default 12)')
    parser.add_argument('--format', dest='fmt', choices=FORMATS, default='oci')
    parser.add_argument('--compressor', choices=('isal', 'zlib'), default=None,
                        help=f'gzip implementation (default {default_compressor()})')
    parser.add_argument('--json', action='store_true', help='print image details as JSON')
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error('--scale must be positive')
    results = generate(args.model, args.outdir, seed=args.seed, scale=args.scale, fmt=args.fmt, tag=args.tag,
                       count=args.count, compressor=args.compressor)
    if args.json:
        json.dump([r.to_dict() for r in results], sys.stdout, indent=2)
        print()
    else:
        for result in results:
            print(result.name)
    return 0


if __name__ == '__main__':
    sys.exit(main())
