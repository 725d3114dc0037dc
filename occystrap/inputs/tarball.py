"""Read images from a tarball: `docker save` (legacy or Docker 25+ layout) or an OCI image layout.

Three layouts are understood:

- legacy `docker save`: manifest.json ([{Config, RepoTags, Layers}]), `<config-hex>.json`, `<id>/layer.tar`
  (skopeo writes `<diffid-hex>.tar` with symlinks from `<id>/layer.tar`), `repositories`;
- Docker 25+: the same manifest.json beside an OCI layout (oci-layout, index.json, blobs/sha256); manifest.json
  is preferred when present, its Config and Layers point into blobs/;
- a plain OCI image layout: oci-layout, index.json and blobs, where index.json may point at manifests or nested
  indexes (the platform is picked from --os/--architecture/--variant) and layers may be gzip, zstd or plain tar.

The tarball is never extracted. It is indexed once with `tarfile` (where each member's data starts and how long it
is) and every blob is read straight from its byte range through a reader with its own file handle, so many layers
can be read at once. A compressed tarball (`docker save | gzip`) is first decompressed into the run's workdir.
Every layer is verified while it is read: the blob digest and then the diffid the config promises.
"""

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
import tarfile
import threading
from typing import Optional

from occystrap import layertar, streams
from occystrap.errors import CorruptImageError, OccystrapError
from occystrap.model import (Blob, Image, Layer, MANIFEST_LIST_TYPES, MEDIA_DOCKER_CONFIG, MEDIA_OCI_CONFIG,
                             MEDIA_OCI_MANIFEST, layer_media_type)
from occystrap.pipeline import ImageInput, ImageRef

LOG = logging.getLogger(__name__)

BLOB_PATH_RE = re.compile(r'^blobs/(sha256|sha512)/([a-f0-9]{64}|[a-f0-9]{128})$')
LEGACY_CONFIG_RE = re.compile(r'^([a-f0-9]{64})\.json$')
MAX_JSON_BYTES = 64 * 1024 * 1024      # manifests and configs are small; refuse to load a huge member into memory
MAX_LINK_DEPTH = 16
MAX_INDEX_DEPTH = 4
BLOCK = tarfile.BLOCKSIZE


@dataclasses.dataclass(frozen=True)
class Member:
    """A regular file inside the tarball: where its data starts and how many bytes it has."""

    name: str
    offset: int
    size: int


class RangeReader(streams.ChunkReader):
    """Reads `size` bytes at `offset` of a file through its own file handle (safe to use beside other readers)."""

    def __init__(self, path, member):
        self.path = path
        self.member = member
        self.remaining = member.size
        try:
            self.handle = open(path, 'rb')
            self.handle.seek(member.offset)
        except OSError as e:
            raise OccystrapError('cannot read tarball %s: %s' % (path, e.strerror or e))

    def read(self, size=-1):
        if self.remaining <= 0:
            return b''
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self.handle.read(min(want, streams.CHUNK * 4))
        if not data:
            raise CorruptImageError('tarball %s is truncated: it ends inside member %s'
                                    % (self.path, self.member.name))
        self.remaining -= len(data)
        return data

    def close(self):
        try:
            self.handle.close()
        finally:
            super().close()


def unreadable(shown, error):
    """The one-line OccystrapError for a tarball `shown` that opening or reading failed with OSError `error`."""
    if isinstance(error, FileNotFoundError):
        return OccystrapError('tarball %s does not exist' % shown)
    if isinstance(error, IsADirectoryError):
        return OccystrapError('tarball %s is a directory, not a tar file' % shown)
    return OccystrapError('cannot read tarball %s: %s' % (shown, error.strerror or error))


class TarIndex:
    """The regular files of a tarball by name, with symlinks and hard links between members resolved."""

    def __init__(self, path, shown=None):
        self.path = path
        self.shown = shown or path
        self.files = {}
        self.links = {}
        self._build()

    def _fail(self, message):
        raise CorruptImageError('tarball %s %s' % (self.shown, message))

    def _build(self):
        try:
            file_size = os.path.getsize(self.path)
            with tarfile.open(self.path, mode='r:') as tar:
                last = None
                for info in tar:
                    name = layertar.archive_name(info.name)
                    if info.isreg():
                        if info.offset_data + info.size > file_size:
                            self._fail('is truncated: member %s needs %d bytes, the file ends %d bytes in'
                                       % (name, info.size, max(0, file_size - info.offset_data)))
                        self.files[name] = Member(name, info.offset_data, info.size)
                        self.links.pop(name, None)
                    elif info.issym():
                        target = posixpath.join(posixpath.dirname(name), info.linkname)
                        self.links[name] = layertar.archive_name(target)
                        self.files.pop(name, None)
                    elif info.islnk():
                        self.links[name] = layertar.archive_name(info.linkname)
                        self.files.pop(name, None)
                    last = name
                end = tar.offset
        except CorruptImageError:
            raise
        except OSError as e:
            raise unreadable(self.shown, e)
        except (tarfile.TarError, EOFError, ValueError) as e:
            self._fail('is not a readable tar archive: %s' % e)
        # tarfile stops quietly at a damaged or missing header after the first member; a complete archive has a
        # zero end-of-archive block right after the last member, so its absence means truncation or damage.
        with open(self.path, 'rb') as f:
            f.seek(end)
            marker = f.read(BLOCK)
        if len(marker) < BLOCK or marker.strip(b'\x00'):
            where = 'after member %s' % last if last else 'at its start'
            self._fail('is truncated or damaged %s (no end-of-archive marker at byte %d)' % (where, end))

    def resolve(self, name):
        """The Member a name refers to (following links), or None when the tarball has no such file."""
        name = layertar.archive_name(name)
        for _ in range(MAX_LINK_DEPTH):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                return None
            name = self.links[name]
        return None

    def has(self, name):
        return self.resolve(name) is not None

    def member(self, name, why=''):
        found = self.resolve(name)
        if found is None:
            self._fail('has no member %s%s' % (name, why))
        return found

    def open(self, name):
        return RangeReader(self.path, self.member(name))

    def read(self, name, limit=MAX_JSON_BYTES):
        member = self.member(name)
        if member.size > limit:
            self._fail('member %s is %d bytes, too large for metadata' % (name, member.size))
        reader = RangeReader(self.path, member)
        try:
            chunks = []
            while True:
                data = reader.read()
                if not data:
                    return b''.join(chunks)
                chunks.append(data)
        finally:
            reader.close()

    def read_json(self, name, digest=None):
        """A member parsed as JSON; when `digest` is given the bytes must hash to it."""
        data = self.read(name)
        if digest is not None:
            actual = _digest_bytes(data, digest)
            if actual != digest:
                self._fail('member %s does not match its digest %s (it hashes to %s)' % (name, digest, actual))
        try:
            return data, json.loads(data)
        except ValueError as e:
            self._fail('member %s is not valid JSON: %s' % (name, e))

    def head(self, name, count=4):
        reader = self.open(name)
        try:
            return reader.read(count)
        finally:
            reader.close()

    def hash_member(self, name, algorithm='sha256'):
        h = hashlib.new(algorithm)
        reader = self.open(name)
        try:
            while True:
                data = reader.read(streams.CHUNK)
                if not data:
                    return '%s:%s' % (algorithm, h.hexdigest())
                h.update(data)
        finally:
            reader.close()


def _digest_bytes(data, like):
    algorithm = like.split(':', 1)[0] if ':' in like else 'sha256'
    if algorithm not in ('sha256', 'sha512'):
        return None
    return '%s:%s' % (algorithm, hashlib.new(algorithm, data).hexdigest())


def blob_member(digest):
    """The member name of a blob in an OCI layout."""
    algorithm, _, hexpart = digest.partition(':')
    return 'blobs/%s/%s' % (algorithm, hexpart)


def split_reference(text):
    """'host/name:tag' -> ('host/name', 'tag'); a reference without a tag gives tag None."""
    text = text.split('@', 1)[0]
    last = text.rsplit('/', 1)[-1]
    if ':' in last:
        name, tag = text.rsplit(':', 1)
        return name, tag
    return text, None


def default_name(path):
    """A repository name for images the tarball does not name, from its file name ('busybox.tar' -> 'busybox')."""
    stem = os.path.basename(path)
    for suffix in ('.gz', '.tgz', '.zst', '.tar'):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return re.sub(r'[^a-z0-9]+', '-', stem.lower()).strip('-') or 'image'


@dataclasses.dataclass
class LayerSpec:
    """Where one layer blob lives in the tarball and what the layout says about it (None: work it out)."""

    member: str
    digest: Optional[str] = None
    media_type: Optional[str] = None
    size: Optional[int] = None


@dataclasses.dataclass
class ImageSpec:
    """One image of the tarball as its layout describes it, before its config is read."""

    ref: ImageRef
    config_member: str
    config_digest: Optional[str]
    layers: list
    oci_blobs: bool                  # layers named in OCI vocabulary (blobs/) rather than Docker's
    config_media_type: str = MEDIA_DOCKER_CONFIG
    manifest_digest: Optional[str] = None
    manifest_media_type: Optional[str] = None
    manifest_bytes: Optional[bytes] = None
    annotations: dict = dataclasses.field(default_factory=dict)
    what: str = ''
    descriptor: Optional[dict] = None  # OCI layout: the index.json entry, resolved to a manifest by open()


def platform_matches(platform, want_os, want_arch, want_variant):
    if platform.get('os') != want_os or platform.get('architecture') != want_arch:
        return False
    if want_variant:
        variant = platform.get('variant') or ('v8' if want_arch == 'arm64' else None)
        return variant == want_variant
    return True


def describe_platform(platform):
    parts = [platform.get('os', '?'), platform.get('architecture', '?')]
    if platform.get('variant'):
        parts.append(platform['variant'])
    return '/'.join(parts)


class TarballInput(ImageInput):
    """Images from a tarball file (`tar:///path.tar`, alias `file://`)."""

    def __init__(self, uri, ctx):
        super().__init__(uri, ctx)
        self.path = uri.path
        self._lock = threading.Lock()
        self._index = None
        self._specs = None
        self._temp = None

    # --- indexing ---------------------------------------------------------------------------------------------

    def _ensure(self):
        with self._lock:
            if self._specs is None:
                self._index = TarIndex(self._readable_path(), shown=self.path)
                # Several index.json entries under one name are one image in several platforms.
                self._specs = {}
                for spec in self._read_layout():
                    self._specs.setdefault(spec.ref, []).append(spec)
            return self._specs

    def _readable_path(self):
        """The tarball itself, or a decompressed copy in the workdir when it is gzip or zstd compressed."""
        try:
            with open(self.path, 'rb') as f:
                head = f.read(4)
        except OSError as e:
            raise unreadable(self.path, e)
        if streams.sniff_compression(head) == 'none':
            return self.path
        LOG.info('decompressing %s into the work directory', self.path)
        try:
            with streams.temporary_file(self.ctx.workdir, 'tarball-', '.tar') as (out, tmp), \
                    streams.decompressing_reader(open(self.path, 'rb')) as reader:
                streams.read_all_to(reader, out)
        except CorruptImageError as e:
            raise CorruptImageError('tarball %s: %s' % (self.path, e))
        self._temp = tmp
        return tmp

    def _fail(self, message):
        raise CorruptImageError('tarball %s %s' % (self.path, message))

    def _read_layout(self):
        index = self._index
        if index.has('manifest.json'):
            return self._docker_specs()
        if index.has('index.json'):
            return self._oci_specs()
        self._fail('has neither manifest.json (docker save) nor index.json (OCI layout)')

    def _docker_specs(self):
        _, entries = self._index.read_json('manifest.json')
        if not isinstance(entries, list) or not entries:
            self._fail('member manifest.json is not a list of images')
        specs = []
        for number, entry in enumerate(entries):
            where = 'entry %d of manifest.json' % number
            if not isinstance(entry, dict):
                self._fail('%s is not an object' % where)
            config = entry.get('Config')
            layers = entry.get('Layers')
            if not isinstance(config, str) or not config:
                self._fail('%s has no Config' % where)
            if not isinstance(layers, list) or not all(isinstance(name, str) and name for name in layers):
                self._fail('%s has no list of Layers' % where)
            config_digest = None
            blob = BLOB_PATH_RE.match(layertar.archive_name(config))
            legacy = LEGACY_CONFIG_RE.match(posixpath.basename(config))
            if blob:
                config_digest = '%s:%s' % blob.groups()
            elif legacy:
                config_digest = 'sha256:' + legacy.group(1)
            sources = entry.get('LayerSources') or {}
            layer_specs = []
            for name in layers:
                layer_blob = BLOB_PATH_RE.match(layertar.archive_name(name))
                digest = '%s:%s' % layer_blob.groups() if layer_blob else None
                media_type = None
                source = sources.get(digest) if digest and isinstance(sources, dict) else None
                if isinstance(source, dict) and isinstance(source.get('mediaType'), str):
                    media_type = source['mediaType']
                layer_specs.append(LayerSpec(name, digest, media_type))
            tags = entry.get('RepoTags') or []
            tag_text = next((t for t in tags if isinstance(t, str) and t), None)
            if tag_text:
                name, tag = split_reference(tag_text)
                ref = ImageRef(name, tag or 'latest')
            else:
                ref = ImageRef(default_name(self.path), digest=config_digest or 'sha256:unknown-%d' % number)
            specs.append(ImageSpec(ref=ref, config_member=config, config_digest=config_digest, layers=layer_specs,
                                   oci_blobs=bool(blob), what=where))
        return specs

    def _oci_specs(self):
        if not self._index.has('oci-layout'):
            self._fail('has index.json but no oci-layout member, so it is neither docker save nor OCI layout')
        _, top = self._index.read_json('index.json')
        manifests = top.get('manifests') if isinstance(top, dict) else None
        if not isinstance(manifests, list) or not manifests:
            self._fail('member index.json lists no manifests')
        specs = []
        for number, descriptor in enumerate(manifests):
            if not isinstance(descriptor, dict) or not isinstance(descriptor.get('digest'), str):
                self._fail('member index.json entry %d has no digest' % number)
            annotations = descriptor.get('annotations') or {}
            full = annotations.get('io.containerd.image.name')
            ref_name = annotations.get('org.opencontainers.image.ref.name')
            if full:
                name, tag = split_reference(full)
                ref = ImageRef(name, tag or 'latest')
            elif ref_name and ('/' in ref_name or ':' in ref_name):
                name, tag = split_reference(ref_name)
                ref = ImageRef(name, tag or 'latest')
            elif ref_name:
                ref = ImageRef(default_name(self.path), ref_name)
            else:
                ref = ImageRef(default_name(self.path), digest=descriptor['digest'])
            specs.append(ImageSpec(ref=ref, config_member='', config_digest=None, layers=[], oci_blobs=True,
                                   what='entry %d of index.json' % number, descriptor=descriptor))
        return specs

    # --- ImageInput -------------------------------------------------------------------------------------------

    def references(self):
        return list(self._ensure())

    @property
    def multi(self):
        return len(self._ensure()) > 1

    def open(self, ref):
        specs = self._ensure()
        candidates = specs.get(ref)
        if not candidates:
            names = ', '.join(str(r) for r in specs) or 'none'
            raise OccystrapError('tarball %s has no image %s (it has: %s)' % (self.path, ref, names))
        if candidates[0].descriptor is not None:
            spec = self._resolve_oci([c.descriptor for c in candidates], ref)
        else:
            spec = candidates[0]
        return self._build_image(spec)

    def close(self):
        if self._temp and os.path.exists(self._temp):
            os.unlink(self._temp)
        self._temp = None

    # --- OCI layout resolution --------------------------------------------------------------------------------

    def _descriptor_kind(self, descriptor, document):
        media_type = descriptor.get('mediaType') or document.get('mediaType')
        if media_type in MANIFEST_LIST_TYPES or (media_type is None and 'manifests' in document):
            return 'index'
        return 'manifest'

    def _pick_platform(self, descriptors, ref):
        settings = self.ctx.settings
        if len(descriptors) == 1 and not descriptors[0].get('platform'):
            return descriptors[0]
        with_platform = [d for d in descriptors if isinstance(d.get('platform'), dict)]
        for descriptor in with_platform:
            if platform_matches(descriptor['platform'], settings.os, settings.architecture, settings.variant):
                return descriptor
        without = [d for d in descriptors if not isinstance(d.get('platform'), dict)]
        if len(without) == 1 and not with_platform:
            return without[0]
        want = '/'.join(p for p in (settings.os, settings.architecture, settings.variant) if p)
        have = ', '.join(sorted(describe_platform(d['platform']) for d in with_platform)) or 'no platforms named'
        raise OccystrapError('tarball %s has no %s image for %s (it has: %s)' % (self.path, want, ref, have))

    def _resolve_oci(self, descriptors, ref):
        descriptor = self._pick_platform(descriptors, ref) if len(descriptors) > 1 else descriptors[0]
        for _ in range(MAX_INDEX_DEPTH):
            digest = descriptor['digest']
            raw, document = self._index.read_json(blob_member(digest), digest=digest)
            if not isinstance(document, dict):
                self._fail('member %s is not a JSON object' % blob_member(digest))
            if self._descriptor_kind(descriptor, document) == 'manifest':
                return self._manifest_spec(ref, descriptor, document, raw)
            children = [d for d in document.get('manifests') or []
                        if isinstance(d, dict) and isinstance(d.get('digest'), str)]
            if not children:
                self._fail('member %s is an index that lists no manifests' % blob_member(digest))
            descriptor = self._pick_platform(children, ref)
        self._fail('nests indexes more than %d deep for %s' % (MAX_INDEX_DEPTH, ref))

    def _manifest_spec(self, ref, descriptor, manifest, raw):
        member = blob_member(descriptor['digest'])
        config = manifest.get('config')
        layers = manifest.get('layers')
        if not isinstance(config, dict) or not isinstance(config.get('digest'), str):
            self._fail('member %s (a manifest) has no config descriptor' % member)
        if not isinstance(layers, list):
            self._fail('member %s (a manifest) has no layers list' % member)
        layer_specs = []
        for number, layer in enumerate(layers):
            if not isinstance(layer, dict) or not isinstance(layer.get('digest'), str):
                self._fail('member %s (a manifest) has a layer %d without a digest' % (member, number))
            size = layer.get('size')
            layer_specs.append(LayerSpec(blob_member(layer['digest']), layer['digest'],
                                         layer.get('mediaType') or None, size if isinstance(size, int) else None))
        return ImageSpec(ref=ref, config_member=blob_member(config['digest']), config_digest=config['digest'],
                         layers=layer_specs, oci_blobs=True,
                         config_media_type=config.get('mediaType') or MEDIA_OCI_CONFIG,
                         manifest_digest=descriptor['digest'],
                         manifest_media_type=descriptor.get('mediaType') or manifest.get('mediaType')
                         or MEDIA_OCI_MANIFEST, manifest_bytes=raw,
                         annotations=dict(manifest.get('annotations') or {}), what=member)

    # --- images -----------------------------------------------------------------------------------------------

    def _build_image(self, spec):
        index = self._index
        if not index.has(spec.config_member):
            self._fail('has no member %s (the config named by %s)' % (spec.config_member, spec.what))
        config_bytes, config = index.read_json(spec.config_member, digest=spec.config_digest)
        if not isinstance(config, dict):
            self._fail('member %s (an image config) is not a JSON object' % spec.config_member)
        rootfs = config.get('rootfs') if isinstance(config.get('rootfs'), dict) else {}
        diffids = rootfs.get('diff_ids')
        if not isinstance(diffids, list) or not all(isinstance(d, str) for d in diffids):
            self._fail('member %s (an image config) has no rootfs.diff_ids list' % spec.config_member)
        if len(diffids) != len(spec.layers):
            self._fail('%s names %d layers but its config %s lists %d diff_ids'
                       % (spec.what, len(spec.layers), spec.config_member, len(diffids)))
        history = [h for h in config.get('history') or [] if isinstance(h, dict) and not h.get('empty_layer')]
        layers = []
        for number, (layer, diffid) in enumerate(zip(spec.layers, diffids)):
            blob = self._layer_blob(layer, diffid, spec)
            created_by = history[number].get('created_by') if number < len(history) else None
            layers.append(Layer(diffid=diffid, origin=blob, created_by=created_by))
        ref = spec.ref
        return Image(name=ref.name, tag=ref.tag, config_bytes=config_bytes, layers=layers, source=str(self.uri),
                     manifest_digest=spec.manifest_digest, manifest_media_type=spec.manifest_media_type,
                     config_media_type=spec.config_media_type, annotations=spec.annotations,
                     manifest_bytes=spec.manifest_bytes)

    def _layer_blob(self, layer, diffid, spec):
        index = self._index
        member = index.resolve(layer.member)
        if member is None:
            self._fail('has no member %s (a layer named by %s)' % (layer.member, spec.what))
        if layer.size is not None and layer.size != member.size:
            self._fail('member %s is %d bytes but %s says %d' % (layer.member, member.size, spec.what, layer.size))
        media_type, digest = layer.media_type, layer.digest
        if media_type is None or digest is None:
            compression = streams.sniff_compression(index.head(layer.member))
            if media_type is None:
                media_type = layer_media_type(compression, oci=spec.oci_blobs)
            if digest is None:
                # An uncompressed legacy layer.tar is its own blob, so its digest is the diffid (verified on read);
                # a compressed one has to be hashed to learn its digest.
                digest = diffid if compression == 'none' else index.hash_member(layer.member)
        path = index.path

        def opener():
            return RangeReader(path, member)

        return Blob(digest=digest, media_type=media_type, size=member.size, opener=opener)
