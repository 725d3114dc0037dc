"""OCI image layouts, read from a store of files: a directory (`ocidir://`) or the members of a tarball (`tar://`).

A layout is `oci-layout`, `index.json` and `blobs/<algorithm>/<hex>` (the image-spec's image-layout.md). This is
the one reader of it; `inputs/ocidir.py` gives it a directory, `inputs/tarball.py` the members of a tarball. Every
byte of a layout is hostile:

- index.json, indexes, manifests and configs are parsed only through `occystrap.oci` (digests checked against the
  digest grammar, JSON through the one loader, so nesting too deep is one line) and read with a size cap;
- blob names are built only from digests that passed the grammar (`oci.blob_path`), never from text of the layout;
- a blob's size must be the size its descriptor gives, manifests and configs must hash to their digests before
  they are parsed, and layers are verified while they are read (blob digest, then the diffid the config promises);
- names come from the `org.opencontainers.image.ref.name` and `io.containerd.image.name` annotations and must
  follow the URI grammar (a ref name alone is a tag), or that image fails alone when opened;
- indexes nest at most MAX_INDEX_DEPTH deep.

A store answers `what` (how messages name it: 'tarball PATH'), `noun` ('member', 'file'), `size(name)` (None when
absent), `read(name, limit)`, `head(name)`, `opener(name)` (a callable giving a fresh raw stream) and
`source(name)` (how a message names one of its files).
"""

import dataclasses
import os
import re
from typing import Optional

from occystrap import oci, streams
from occystrap.errors import CorruptImageError, OccystrapError
from occystrap.model import Blob, Image, ImageIndex, Layer, ManifestCopy, SourceManifest
from occystrap.pipeline import ImageRef

REF_NAME = 'org.opencontainers.image.ref.name'
CONTAINERD_NAME = 'io.containerd.image.name'
MAX_INDEX_DEPTH = 4
MAX_LAYOUT_BYTES = 64 * 1024           # oci-layout holds one short field
MAX_MANIFEST_BYTES = 4 * 1024 * 1024   # the cap registries put on manifests
MAX_JSON_BYTES = 64 * 1024 * 1024      # index.json and configs: small, but never a huge file read into memory


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of index.json: the reference it names its image by, and its descriptor."""

    ref: ImageRef
    ref_name: Optional[str]          # the ref.name annotation as the layout wrote it (only valid ones)
    descriptor: oci.Descriptor
    what: str
    error: Optional[OccystrapError] = None   # why the image cannot be opened (a name that is not valid)


def default_name(path):
    """A repository name for images a tarball or layout does not name, from its file name ('busybox.tar' ->
    'busybox')."""
    stem = os.path.basename(os.path.normpath(path))
    for suffix in ('.gz', '.tgz', '.zst', '.tar'):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return re.sub(r'[^a-z0-9]+', '-', stem.lower()).strip('-') or 'image'


def settings_platform(settings):
    """The platform --os/--architecture/--variant ask for, as an oci.Platform."""
    return oci.Platform(settings.os, settings.architecture, settings.variant or '')


def split_reference(text):
    """'host/name:tag' -> ('host/name', 'tag'); a reference without a tag gives tag None."""
    text = text.split('@', 1)[0]
    last = text.rsplit('/', 1)[-1]
    if ':' in last:
        name, tag = text.rsplit(':', 1)
        return name, tag
    return text, None


def valid_ref_name(text):
    """True when `text` may name an image of a layout: a tag, or NAME[:TAG] in the grammar of registry:// URIs."""
    if oci.valid_tag(text):
        return True
    if not isinstance(text, str) or '@' in text:
        return False
    name, tag = split_reference(text)
    return oci.valid_repository(name) and (tag is None or oci.valid_tag(tag))


def named_ref(text, what, default_tag='latest'):
    """(ImageRef, error) for a name a tarball or layout gives an image: a valid ref and None, or a placeholder ref
    (the escaped text, never a usable name) and the error that opening it raises."""
    name, tag = split_reference(text)
    try:
        oci.check_name(name, tag or default_tag, what)
    except oci.InvalidNameError as e:
        return ImageRef(oci.shown(text)), e
    return ImageRef(name, tag or default_tag), None


def assemble_image(ref, config_bytes, config_name, config_where, count, blob_for, fail, what, **fields):
    """An Image of verified config bytes and `count` layers (bottom first), whose Blobs `blob_for(number, diffid)`
    gives: the config must list one diff_id per layer.

    `fail(message)` raises for the store; `what` names what listed the layers, `config_name` the config's file and
    `config_where` how JSON errors name it. History labels layers for display only, so a malformed one is dropped
    rather than failing the image.
    """
    config = oci.load_json_object(config_bytes, config_where)
    diffids = oci.config_diff_ids(config, config_where)
    if len(diffids) != count:
        fail('%s names %d layers but its config %s lists %d diff_ids' % (what, count, config_name, len(diffids)))
    history = config.get('history') if isinstance(config.get('history'), list) else []
    history = [h for h in history if isinstance(h, dict) and not h.get('empty_layer')]
    layers = []
    for number, diffid in enumerate(diffids):
        created_by = history[number].get('created_by') if number < len(history) else None
        layers.append(Layer(diffid=diffid, origin=blob_for(number, diffid),
                            created_by=created_by if isinstance(created_by, str) else None))
    return Image(name=ref.name, tag=ref.tag, config_bytes=config_bytes, layers=layers, **fields)


class Layout:
    """The images of one OCI image layout in `store` (see the module docstring for what a store answers)."""

    def __init__(self, store, name=None):
        self.store = store
        self.name = name or 'image'     # the repository name of images the layout does not name
        self._groups = None

    def fail(self, message):
        raise CorruptImageError('%s %s' % (self.store.what, message))

    # --- index.json ---------------------------------------------------------------------------------------------

    def entries(self):
        """Every entry of index.json, in order, each named (or failing alone when its name is not valid)."""
        store = self.store
        if store.size('oci-layout') is None:
            self.fail('has no oci-layout %s, so it is not an OCI image layout' % store.noun)
        marker = oci.load_json_object(store.read('oci-layout', MAX_LAYOUT_BYTES), store.source('oci-layout'))
        if not isinstance(marker.get('imageLayoutVersion'), str):
            self.fail('%s oci-layout has no imageLayoutVersion' % store.noun)
        if store.size('index.json') is None:
            self.fail('has no index.json %s' % store.noun)
        top = oci.Index.parse(store.read('index.json', MAX_JSON_BYTES), source=store.source('index.json'))
        if not top.manifests:
            self.fail('%s index.json lists no manifests' % store.noun)
        return [self._entry(number, descriptor) for number, descriptor in enumerate(top.manifests)]

    def _entry(self, number, descriptor):
        where = 'entry %d of index.json' % number
        annotations = descriptor.annotations or {}
        full = annotations.get(CONTAINERD_NAME)
        ref_name = annotations.get(REF_NAME)
        error = None
        if full:
            ref, error = named_ref(full, 'the io.containerd.image.name of %s of %s' % (where, self.store.what))
        elif ref_name and ('/' in ref_name or ':' in ref_name):
            ref, error = named_ref(ref_name, 'the ref.name of %s of %s' % (where, self.store.what))
        elif ref_name:
            ref = ImageRef(self.name, ref_name)
            if not oci.valid_tag(ref_name):
                ref = ImageRef(oci.shown(ref_name))
                error = oci.InvalidNameError('the ref.name of %s of %s names an invalid tag %s'
                                             % (where, self.store.what, oci.shown(ref_name)))
        else:
            ref = ImageRef(self.name, digest=descriptor.digest)
        return Entry(ref=ref, ref_name=ref_name if error is None else None, descriptor=descriptor, what=where,
                     error=error)

    def groups(self, entries=None):
        """{ImageRef: [Entry, ...]} in index order: several entries under one name are one image in several
        platforms."""
        groups = {}
        for entry in self.entries() if entries is None else entries:
            groups.setdefault(entry.ref, []).append(entry)
        return groups

    # --- resolving an image -------------------------------------------------------------------------------------

    def pick_platform(self, descriptors, ref, platform):
        """The descriptor for `platform` (an oci.Platform) among several, by the one matching rule."""
        if len(descriptors) == 1 and descriptors[0].platform is None:
            return descriptors[0]
        with_platform = [d for d in descriptors if d.platform is not None]
        found = oci.select_platform(with_platform, platform)
        if found is not None:
            return found
        without = [d for d in descriptors if d.platform is None]
        if len(without) == 1 and not with_platform:
            return without[0]
        have = ', '.join(sorted(str(d.platform) for d in with_platform)) or 'no platforms named'
        raise OccystrapError('%s has no %s image for %s (it has: %s)' % (self.store.what, platform, ref, have))

    def blob(self, descriptor, limit):
        """The bytes of a metadata blob (a manifest, an index, a config), its size and digest checked."""
        name = oci.blob_path(descriptor.digest)
        size = self.store.size(name)
        if size is None:
            self.fail('has no %s %s' % (self.store.noun, name))
        if descriptor.size is not None and size != descriptor.size:
            self.fail('%s %s is %d bytes but its descriptor says %d' % (self.store.noun, name, size, descriptor.size))
        data = self.store.read(name, limit)
        actual = oci.digest_of(data, descriptor.digest.split(':', 1)[0])
        if actual != descriptor.digest:
            self.fail('%s %s does not match its digest %s (it hashes to %s)'
                      % (self.store.noun, name, descriptor.digest, actual))
        return data

    def resolve(self, entries, ref, platform, start=None):
        """(descriptor, oci.Manifest) of the image `entries` (one name's) stand for, indexes followed to
        `platform`; from the descriptor `start` (a child of an index) instead when given."""
        descriptors = [entry.descriptor for entry in entries]
        descriptor = start
        if descriptor is None:
            descriptor = self.pick_platform(descriptors, ref, platform) if len(descriptors) > 1 else descriptors[0]
        for _ in range(MAX_INDEX_DEPTH):
            raw = self.blob(descriptor, MAX_MANIFEST_BYTES)
            source = self.store.source(oci.blob_path(descriptor.digest))
            document = oci.load_json_object(raw, source)
            if not oci.is_index_document(descriptor.media_type or document.get('mediaType'), document):
                return descriptor, oci.Manifest.parse(raw, descriptor.media_type, source)
            index = oci.Index.parse(raw, descriptor.media_type, source)
            if not index.manifests:
                self.fail('%s %s is an index that lists no manifests' % (self.store.noun, oci.blob_path(index.digest)))
            descriptor = self.pick_platform(index.manifests, ref, platform)
        self.fail('nests indexes more than %d deep for %s' % (MAX_INDEX_DEPTH, ref))

    def manifest_bytes(self, entries, ref, platform):
        """(exact bytes, media type) of what one name's index.json entry points at: a manifest, or an index as it
        is (the small commands: `digest` of a multi-platform name is the index's)."""
        if entries[0].error is not None:
            raise entries[0].error
        descriptors = [entry.descriptor for entry in entries]
        descriptor = descriptors[0] if len(descriptors) == 1 else self.pick_platform(descriptors, ref, platform)
        data = self.blob(descriptor, MAX_MANIFEST_BYTES)
        document = oci.load_json_object(data, self.store.source(oci.blob_path(descriptor.digest)))
        media_type = descriptor.media_type or document.get('mediaType')
        if not isinstance(media_type, str) or not media_type:
            media_type = oci.MEDIA_OCI_INDEX if oci.is_index_document(None, document) else oci.MEDIA_OCI_MANIFEST
        return data, media_type

    def config_bytes(self, entries, ref, platform):
        """The exact config blob of the image one name stands for (indexes followed to `platform`)."""
        if entries[0].error is not None:
            raise entries[0].error
        _, manifest = self.resolve(entries, ref, platform)
        return self.blob(manifest.config, MAX_JSON_BYTES)

    def image(self, entries, ref, platform, source, start=None):
        """The Image one name's entries stand for (or the child `start` of its index): metadata verified now,
        layers lazy and verified when read."""
        if entries[0].error is not None:
            raise entries[0].error
        descriptor, manifest = self.resolve(entries, ref, platform, start)
        store = self.store
        config_bytes = self.blob(manifest.config, MAX_JSON_BYTES)
        config_name = oci.blob_path(manifest.config.digest)
        manifest_name = oci.blob_path(descriptor.digest)
        blobs = [self._layer_blob(layer, manifest_name) for layer in manifest.layers]
        where = '%s (an image config)' % store.source(config_name)
        return assemble_image(ref, config_bytes, config_name, where, len(blobs), lambda number, _: blobs[number],
                              self.fail, manifest_name, source=source, manifest_digest=descriptor.digest,
                              manifest_media_type=manifest.media_type, manifest_bytes=manifest.raw,
                              config_media_type=manifest.config.media_type or oci.MEDIA_OCI_CONFIG,
                              annotations=manifest.annotations)

    def _layer_blob(self, layer, manifest_name):
        """The Blob of a layer (or any blob) a manifest names: present, of the size its descriptor says."""
        store = self.store
        name = oci.blob_path(layer.digest)
        size = store.size(name)
        if size is None:
            self.fail('has no %s %s (a blob named by %s)' % (store.noun, name, manifest_name))
        if layer.size is not None and layer.size != size:
            self.fail('%s %s is %d bytes but %s says %d' % (store.noun, name, size, manifest_name, layer.size))
        media_type = layer.media_type
        if media_type is None:
            media_type = oci.layer_media_type(streams.sniff_compression(store.head(name)))
        return Blob(digest=layer.digest, media_type=media_type, size=size, opener=store.opener(name))

    # --- whole indexes, for mirror.Copier (the registry input's resolve / copy_index / copy_child) ---------------

    def source_manifest(self, entries, ref, platform):
        """A model.SourceManifest of what one name stands for: the index or manifest its one index.json entry
        points at, exact bytes. For a name with several entries (one per platform), or an index that holds indexes
        (copied whole by no one: a registry refuses them too), the manifest of `platform`, followed as open() does."""
        if entries[0].error is not None:
            raise entries[0].error
        if len(entries) == 1:
            descriptor = entries[0].descriptor
            data = self.blob(descriptor, MAX_MANIFEST_BYTES)
            source = self.store.source(oci.blob_path(descriptor.digest))
            document = oci.load_json_object(data, source)
            media_type = descriptor.media_type or document.get('mediaType')
            if not oci.is_index_document(media_type, document):
                parsed = oci.Manifest.parse(data, media_type, source)
                return SourceManifest(data, parsed.media_type, descriptor.digest, parsed)
            parsed = oci.Index.parse(data, media_type, source)
            if parsed.manifests and not any(d.media_type in oci.MANIFEST_LIST_TYPES for d in parsed.manifests):
                return SourceManifest(data, parsed.media_type, descriptor.digest, parsed)
        descriptor, manifest = self.resolve(entries, ref, platform)
        return SourceManifest(manifest.raw, manifest.media_type, descriptor.digest, manifest)

    def copy_child(self, descriptor):
        """One child of an index as a model.ManifestCopy: its exact bytes (digest and size checked) and its blobs,
        config first, each present and of its size. An index inside an index is refused (as from a registry)."""
        data = self.blob(descriptor, MAX_MANIFEST_BYTES)
        name = oci.blob_path(descriptor.digest)
        source = self.store.source(name)
        document = oci.load_json_object(data, source)
        media_type = descriptor.media_type or document.get('mediaType')
        if oci.is_index_document(media_type, document):
            self.fail('%s %s is an index inside an index, which is not copied whole' % (self.store.noun, name))
        manifest = oci.Manifest.parse(data, media_type, source)
        config = manifest.config
        blobs = [dataclasses.replace(self._layer_blob(config, name), media_type=config.media_type
                                     or oci.MEDIA_OCI_CONFIG)]
        blobs.extend(self._layer_blob(layer, name) for layer in manifest.layers)
        return ManifestCopy(descriptor, data, manifest.media_type, blobs)

    def copy_index(self, ref, resolved, children, source):
        """The index `resolved` holds as a model.ImageIndex with `children` (descriptors of it) and their blobs."""
        copies = [self.copy_child(descriptor) for descriptor in children]
        return ImageIndex(name=ref.name, tag=ref.tag, index=resolved.document, children=copies, source=source)
