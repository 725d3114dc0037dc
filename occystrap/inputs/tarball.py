"""Read images from a tarball: `docker save` (legacy or Docker 25+ layout) or an OCI image layout.

Three layouts are understood:

- legacy `docker save`: manifest.json ([{Config, RepoTags, Layers}]), `<config-hex>.json`, `<id>/layer.tar`
  (skopeo writes `<diffid-hex>.tar` with symlinks from `<id>/layer.tar`), `repositories`;
- Docker 25+: the same manifest.json beside an OCI layout (oci-layout, index.json, blobs/sha256); manifest.json
  is preferred when present, its Config and Layers point into blobs/;
- a plain OCI image layout (skopeo's `oci-archive:`, ours from `tar://?format=oci`): oci-layout, index.json and
  blobs, where index.json may point at manifests or nested indexes (the platform is picked from
  --os/--architecture/--variant) and layers may be gzip, zstd or plain tar. It is read by the one reader of OCI
  layouts, `occystrap.inputs.layout`, with this tarball's members as its store of files.

The tarball is never extracted. It is indexed once with `tarfile` (where each member's data starts and how long it
is) and every blob is read straight from its byte range through a reader with its own file handle, so many layers
can be read at once. A compressed tarball (`docker save | gzip`) is first decompressed into the run's workdir.
Every layer is verified while it is read: the blob digest and then the diffid the config promises.
"""

import dataclasses
import hashlib
import logging
import os
import posixpath
import re
import tarfile
import threading
from typing import Optional

from occystrap import layertar, oci, streams
from occystrap.errors import CorruptImageError, OccystrapError
from occystrap.inputs.layout import (Layout, assemble_image, default_name, named_ref,  # noqa: F401
                                     settings_platform, split_reference)
from occystrap.model import Blob
from occystrap.oci import MEDIA_DOCKER_CONFIG, layer_media_type
from occystrap.pipeline import ImageInput, ImageRef

LOG = logging.getLogger(__name__)

LEGACY_CONFIG_RE = re.compile(r'^([a-f0-9]{64})\.json$')
MAX_JSON_BYTES = 64 * 1024 * 1024      # manifests and configs are small; refuse to load a huge member into memory
MAX_LINK_DEPTH = 16
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

    noun = 'member'

    def __init__(self, path, shown=None):
        self.path = path
        self.shown = shown or path
        self.what = 'tarball %s' % self.shown
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

    def size(self, name):
        """The size of a member (links followed), or None when there is no such member."""
        found = self.resolve(name)
        return None if found is None else found.size

    def opener(self, name):
        """A callable giving a fresh reader of a member's bytes each time (each with its own file handle)."""
        path, member = self.path, self.member(name)
        return lambda: RangeReader(path, member)

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

    def read_verified(self, name, digest=None):
        """A metadata member's bytes; when `digest` (a validated one) is given the bytes must hash to it."""
        data = self.read(name)
        if digest is not None:
            actual = oci.digest_of(data, digest.split(':', 1)[0])
            if actual != digest:
                self._fail('member %s does not match its digest %s (it hashes to %s)' % (name, digest, actual))
        return data

    def source(self, name):
        """How messages name a member of this tarball."""
        return 'tarball %s member %s' % (self.shown, name)

    def read_json(self, name, digest=None):
        """A member's bytes and the JSON they hold; when `digest` is given the bytes must hash to it."""
        data = self.read_verified(name, digest)
        return data, oci.load_json(data, self.source(name))

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


def blob_digest(name):
    """The digest a member path 'blobs/<algorithm>/<hex>' stands for, or None when it is not such a path."""
    parts = layertar.archive_name(name).split('/')
    if len(parts) != 3 or parts[0] != 'blobs':
        return None
    digest = '%s:%s' % (parts[1], parts[2])
    return digest if oci.is_digest(digest) else None


@dataclasses.dataclass
class LayerSpec:
    """Where one layer blob of a docker save tarball lives and what manifest.json says about it (None: work it
    out)."""

    member: str
    digest: Optional[str] = None
    media_type: Optional[str] = None


@dataclasses.dataclass
class ImageSpec:
    """One image of a docker save tarball as manifest.json describes it, before its config is read."""

    ref: ImageRef
    config_member: str
    config_digest: Optional[str]
    layers: list
    oci_blobs: bool                  # layers named in OCI vocabulary (blobs/) rather than Docker's
    what: str = ''
    error: Optional[OccystrapError] = None       # why the image cannot be opened (a name that is not valid)


class TarballInput(ImageInput):
    """Images from a tarball file (`tar:///path.tar`, alias `file://`)."""

    def __init__(self, uri, ctx):
        super().__init__(uri, ctx)
        self.path = uri.path
        self._lock = threading.Lock()
        self._index = None
        self._specs = None
        self._layout = None        # the OCI layout reader, when the tarball is one (and has no manifest.json)
        self._temp = None

    # --- indexing ---------------------------------------------------------------------------------------------

    def _ensure(self):
        with self._lock:
            if self._specs is None:
                self._index = TarIndex(self._readable_path(), shown=self.path)
                self._specs = self._read_layout()
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
        """{ImageRef: [spec, ...]}: ImageSpecs of manifest.json, or the Entries of an OCI layout's index.json."""
        index = self._index
        if index.has('manifest.json'):
            specs = {}
            for spec in self._docker_specs():
                specs.setdefault(spec.ref, []).append(spec)
            return specs
        if index.has('index.json'):
            if not index.has('oci-layout'):
                self._fail('has index.json but no oci-layout member, so it is neither docker save nor OCI layout')
            self._layout = Layout(index, default_name(self.path))
            return self._layout.groups()
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
            config_digest = blob_digest(config)
            legacy = LEGACY_CONFIG_RE.match(posixpath.basename(config))
            if config_digest is None and legacy:
                config_digest = 'sha256:' + legacy.group(1)
            sources = entry.get('LayerSources') or {}
            layer_specs = []
            for name in layers:
                digest = blob_digest(name)
                media_type = None
                source = sources.get(digest) if digest and isinstance(sources, dict) else None
                if isinstance(source, dict) and isinstance(source.get('mediaType'), str):
                    media_type = source['mediaType']
                layer_specs.append(LayerSpec(name, digest, media_type))
            tags = entry.get('RepoTags') or []
            if not isinstance(tags, list):
                self._fail('%s has RepoTags that are not a list' % where)
            tag_text = next((t for t in tags if isinstance(t, str) and t), None)
            error = None
            if tag_text:
                ref, error = named_ref(tag_text, 'RepoTags of %s of tarball %s' % (where, self.path))
            else:
                ref = ImageRef(default_name(self.path), digest=config_digest or 'sha256:unknown-%d' % number)
            specs.append(ImageSpec(ref=ref, config_member=config, config_digest=config_digest, layers=layer_specs,
                                   oci_blobs=blob_digest(config) is not None, what=where, error=error))
        return specs

    # --- ImageInput -------------------------------------------------------------------------------------------

    def references(self):
        return list(self._ensure())

    @property
    def multi(self):
        return len(self._ensure()) > 1

    def _candidates(self, ref):
        """The specs (docker save) or index.json entries (OCI layout) one name stands for; the image's own
        error when its name was not valid."""
        specs = self._ensure()
        candidates = specs.get(ref)
        if not candidates:
            names = ', '.join(str(r) for r in specs) or 'none'
            raise OccystrapError('tarball %s has no image %s (it has: %s)' % (self.path, ref, names))
        if candidates[0].error is not None:
            raise candidates[0].error
        return candidates

    def open(self, ref):
        candidates = self._candidates(ref)
        if self._layout is not None:
            return self._layout.image(candidates, ref, settings_platform(self.ctx.settings), str(self.uri))
        return self._build_image(candidates[0])

    # --- the small commands (tags, digest, manifest, config) ---------------------------------------------------

    def tags(self):
        """The references of the images the tarball names (RepoTags or ref names), as skopeo list-tags shows them."""
        return [str(ref) for ref, candidates in self._ensure().items()
                if ref.tag and candidates[0].error is None]

    def manifest_bytes(self, ref):
        """An OCI layout's manifest or index (the index.json entry's blob, exact bytes); for docker save, the
        Docker schema 2 manifest that skopeo's docker-archive: reading generates, so the digests agree."""
        candidates = self._candidates(ref)
        if self._layout is not None:
            return self._layout.manifest_bytes(candidates, ref, settings_platform(self.ctx.settings))
        return self._generated_manifest(candidates[0]), oci.MEDIA_DOCKER_MANIFEST

    def _generated_manifest(self, spec):
        """containers/image's manifest for a docker-archive image: the config, then per diffid the layer's
        uncompressed size and the diffid itself as digest, in Docker's gzip layer media type."""
        index = self._index
        config_bytes = index.read_verified(spec.config_member, digest=spec.config_digest)
        where = '%s (an image config)' % index.source(spec.config_member)
        diffids = oci.config_diff_ids(oci.load_json_object(config_bytes, where), where)
        if len(diffids) != len(spec.layers):
            self._fail('%s names %d layers but its config %s lists %d diff_ids'
                       % (spec.what, len(spec.layers), spec.config_member, len(diffids)))
        config = oci.Descriptor(MEDIA_DOCKER_CONFIG, oci.digest_of(config_bytes), len(config_bytes))
        layers = [oci.Descriptor(oci.MEDIA_DOCKER_LAYER_GZIP, diffid, self._uncompressed_size(layer.member))
                  for layer, diffid in zip(spec.layers, diffids)]
        return oci.Manifest.build(config, layers, oci.MEDIA_DOCKER_MANIFEST).raw

    def _uncompressed_size(self, name):
        member = self._index.member(name)
        if streams.sniff_compression(self._index.head(name)) == 'none':
            return member.size
        reader = streams.decompressing_reader(self._index.open(name))
        try:
            total = 0
            while True:
                data = reader.read(streams.CHUNK * 4)
                if not data:
                    return total
                total += len(data)
        except streams.DECOMPRESS_ERRORS as e:
            self._fail('member %s is corrupt: %s' % (name, e))
        finally:
            reader.close()

    def config_bytes(self, ref):
        """The config's exact bytes, verified against the digest the tarball names it by."""
        candidates = self._candidates(ref)
        if self._layout is not None:
            return self._layout.config_bytes(candidates, ref, settings_platform(self.ctx.settings))
        spec = candidates[0]
        if not self._index.has(spec.config_member):
            self._fail('has no member %s (the config named by %s)' % (spec.config_member, spec.what))
        return self._index.read_verified(spec.config_member, digest=spec.config_digest)

    def close(self):
        if self._temp and os.path.exists(self._temp):
            os.unlink(self._temp)
        self._temp = None

    # --- docker save images -----------------------------------------------------------------------------------

    def _build_image(self, spec):
        index = self._index
        if not index.has(spec.config_member):
            self._fail('has no member %s (the config named by %s)' % (spec.config_member, spec.what))
        config_bytes = index.read_verified(spec.config_member, digest=spec.config_digest)
        where = '%s (an image config)' % index.source(spec.config_member)
        return assemble_image(spec.ref, config_bytes, spec.config_member, where, len(spec.layers),
                              lambda number, diffid: self._layer_blob(spec.layers[number], diffid, spec),
                              self._fail, spec.what, source=str(self.uri),
                              config_media_type=MEDIA_DOCKER_CONFIG)

    def _layer_blob(self, layer, diffid, spec):
        index = self._index
        member = index.resolve(layer.member)
        if member is None:
            self._fail('has no member %s (a layer named by %s)' % (layer.member, spec.what))
        media_type, digest = layer.media_type, layer.digest
        if media_type is None or digest is None:
            compression = streams.sniff_compression(index.head(layer.member))
            if media_type is None:
                media_type = layer_media_type(compression, oci=spec.oci_blobs)
            if digest is None:
                # An uncompressed legacy layer.tar is its own blob, so its digest is the diffid (verified on read);
                # a compressed one has to be hashed to learn its digest.
                digest = diffid if compression == 'none' else index.hash_member(layer.member)
        return Blob(digest=digest, media_type=media_type, size=member.size, opener=index.opener(layer.member))
