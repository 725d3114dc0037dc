"""registry://[user:pass@]host[:port]/name[:tag|@digest][?os=&arch=&variant=&insecure=true]: pull from a registry.

open() fetches the manifest (following a manifest list / OCI index to the wanted platform) and the config; layers
stay lazy and stream from the registry when read, with their digests verified by the model's readers.

registry://host/namespace/GLOB:tag names every repository of the registry's catalog (/v2/_catalog, Link pages
followed) that matches the glob component by component ('*' does not cross '/') and has the tag.

registry://host/repo:GLOB names every tag of the repository (/v2/NAME/tags/list, Link pages followed) that matches
the tag glob ('*', '[...]'; never '?', which starts a URI's query); with a repository glob, every matching tag of
every matching repository. Tags a registry lists are checked against the tag grammar before any use.
"""

import fnmatch
import functools
import logging
import threading

from occystrap import model, oci
from occystrap.errors import CorruptImageError, OccystrapError, RegistryError, UsageError
from occystrap.pipeline import ImageInput, ImageRef, current_image, lookup_workers
from occystrap.registry.client import RegistryClient, describe_reference

LOG = logging.getLogger(__name__)


def glob_match(text, pattern):
    """The one glob matcher of registry sources (repository components and tags): fnmatch syntax, case-sensitive,
    anchored at both ends."""
    return fnmatch.fnmatchcase(text, pattern)


def glob_matches(name, pattern):
    """True when a repository name matches a glob split on '/': same depth, each component by fnmatch."""
    parts = name.split('/')
    return len(parts) == len(pattern) and all(glob_match(p, g) for p, g in zip(parts, pattern))


class RegistryInput(ImageInput):
    """Images from a registry speaking the OCI distribution API."""

    def __init__(self, uri, ctx):
        super().__init__(uri, ctx)
        settings = ctx.settings
        self.client = RegistryClient(ctx.http, uri.host, insecure=settings.insecure or uri.flag('insecure'),
                                     username=uri.username, password=uri.password,
                                     authenticators=ctx.authenticators, role='input', repository=uri.name,
                                     tls_verify=uri.flag('tls-verify', True))
        options = uri.options
        self.platform = (options.get('os') or settings.os,
                         options.get('arch') or options.get('architecture') or settings.architecture,
                         options.get('variant') or settings.variant)
        self._rejected = {}     # ImageRef -> the error opening it gives (a catalog name that is not a valid name)
        self._listed = {}       # (name, tag) -> the digest its HEAD answered while a catalog glob was listed
        self._lock = threading.Lock()
        self._tags = {}             # repository -> its tags, listed once a run (--referrers looks for tags there)
        self._no_referrers_api = set()      # repositories whose registry answered 404 to the referrers API

    @property
    def multi(self):
        return self.uri.is_glob or self.uri.tag_is_glob

    def references(self):
        """The one image the URI names (catalog globs are expanded by references_for_glob, tag globs of one
        repository by references_for_tag_glob)."""
        if self.uri.is_glob:
            return self.references_for_glob()
        if self.uri.tag_is_glob:
            return self.references_for_tag_glob()
        return [ImageRef(self.uri.name, self.uri.tag, self.uri.digest)]

    def references_for_glob(self):
        """Every catalog repository matching the glob (component by component) that has the tag, sorted by name."""
        pattern = self.uri.name.split('/')
        matches, rejected = [], []
        for name in self.client.catalog():
            if not isinstance(name, str) or not glob_matches(name, pattern):
                continue
            if oci.valid_repository(name):
                matches.append(name)
            else:
                # Never sent back to the registry nor handed to an output: the image fails when opened.
                ref = ImageRef(oci.shown(name), self.uri.tag)
                self._rejected[ref] = oci.InvalidNameError('the catalog of %s lists an invalid repository name %s'
                                                           % (self.client.host, oci.shown(name)))
                rejected.append(ref)
        matches.sort()
        if not matches and not rejected:
            raise OccystrapError('no repository in the catalog of %s matches %s' % (self.client.host, self.uri.name))
        if not matches:
            return rejected
        if self.uri.tag_is_glob:
            return self._refs_with_tag_glob(matches, rejected)
        # One tags request per repository: keep many in flight so a long catalog costs a few round trips.
        present = self.ctx.map(self._has_tag, matches, workers=lookup_workers(self.ctx.settings, len(matches)))
        for name, ok in zip(matches, present):
            if not ok:
                LOG.info('skipping %s: it has no tag %s', name, self.uri.tag)
        refs = [ImageRef(name, self.uri.tag) for name, ok in zip(matches, present) if ok] + rejected
        if not refs:
            raise OccystrapError('no repository of %s matching %s has tag %s'
                                 % (self.client.host, self.uri.name, self.uri.tag))
        return refs

    def references_for_tag_glob(self):
        """Every tag of the repository matching the tag glob, sorted; tags that break the grammar come last and
        fail when opened. The repository must exist."""
        valid, rejected = self._tags_matching(self.uri.name, missing_ok=False)
        refs = self._register_rejected(valid, rejected)
        if not refs:
            raise OccystrapError('no tag of %s on %s matches %s' % (self.uri.name, self.client.host, self.uri.tag))
        return refs

    def _refs_with_tag_glob(self, names, rejected):
        """References of every tag matching the tag glob in each repository of `names` (a catalog glob's)."""
        found = self.ctx.map(self._tags_matching, names, workers=lookup_workers(self.ctx.settings, len(names)))
        refs = self._register_rejected([ref for valid, _ in found for ref in valid],
                                       [ref for _, bad in found for ref in bad]) + rejected
        if not refs:
            raise OccystrapError('no repository of %s matching %s has a tag matching %s'
                                 % (self.client.host, self.uri.name, self.uri.tag))
        return refs

    def _tags_matching(self, name, missing_ok=True):
        """(valid refs sorted by tag, [(ref, error)] for tags that match but break the grammar) of one repository."""
        try:
            tags = self.client.list_tags(name)
        except RegistryError as e:
            if missing_ok and e.status == 404:       # deleted since the catalog was read
                return [], []
            raise
        valid, rejected = set(), {}
        for tag in tags:
            if not isinstance(tag, str) or not glob_match(tag, self.uri.tag):
                continue
            if oci.valid_tag(tag):
                valid.add(tag)
            else:
                # Never sent back to the registry nor handed to an output: the image fails when opened.
                ref = ImageRef(name, oci.shown(tag))
                rejected[ref] = oci.InvalidNameError('registry %s lists an invalid tag %s for %s'
                                                     % (self.client.host, oci.shown(tag), name))
        if not valid and not rejected:
            LOG.info('skipping %s: no tag matches %s', name, self.uri.tag)
        return [ImageRef(name, tag) for tag in sorted(valid)], list(rejected.items())

    def _register_rejected(self, valid, rejected):
        for ref, error in rejected:
            self._rejected[ref] = error
        return valid + [ref for ref, _ in rejected]

    def _has_tag(self, name):
        """True when the repository holds the tag: one HEAD, whose digest listed_digest() keeps for the copy."""
        found, digest = self.client.head_manifest(name, self.uri.tag)
        if found and digest is not None:
            self._listed[(name, self.uri.tag)] = digest
        return found

    def listed_digest(self, ref):
        """The digest the registry named for a tag when the catalog glob was listed (a HEAD), or None.

        A copy whose destination already holds it needs nothing more from the source (mirror.Copier).
        """
        if ref.digest is not None:
            return None
        return self._listed.get((ref.name, ref.tag))

    # --- the small commands (tags, digest, manifest, config) ---------------------------------------------------

    def _one(self, command):
        if self.uri.is_glob:
            raise UsageError('occystrap %s needs one repository, not the glob %s' % (command, self.uri.name))

    def tags(self):
        """Every tag of the repository, all Link pages followed; a tag that breaks the grammar is left out."""
        self._one('tags')
        found = []
        for tag in self.client.list_tags(self.uri.name):
            if isinstance(tag, str) and oci.valid_tag(tag):
                found.append(tag)
            else:
                LOG.warning('registry %s lists an invalid tag %s for %s; left out', self.client.host,
                            oci.shown(tag if isinstance(tag, str) else repr(tag)), self.uri.name)
        return found

    def manifest_bytes(self, ref):
        """The manifest or index as the registry stores it (verified against a digest reference and the
        Docker-Content-Digest header)."""
        self._one('manifest')
        data, media_type, _ = self.client.get_manifest(ref.name, ref.digest or ref.tag or 'latest')
        return data, media_type

    def config_bytes(self, ref):
        """The config blob of the image for the run's platform, verified against the manifest's digest and size."""
        self._one('config')
        what = describe_reference(ref.name, ref.digest or ref.tag or 'latest')
        _, _, _, manifest = self.client.resolve_image(ref.name, ref.digest or ref.tag or 'latest', self.platform)
        descriptor = manifest.config
        data = self.client.get_blob_bytes(ref.name, descriptor.digest)
        if descriptor.size is not None and descriptor.size != len(data):
            raise CorruptImageError('config of %s is %d bytes, the manifest says %s'
                                    % (what, len(data), descriptor.size))
        return data

    def _count_bytes(self, nbytes):
        self.ctx.stats.add(downloaded=nbytes)

    def _checked(self, ref):
        """The reference to ask the registry for, once the name, tag and digest passed their grammars."""
        if ref in self._rejected:
            raise self._rejected[ref]
        # References from other listings (a Quay organisation) reach here unchecked: never put a bad one in a URL.
        oci.check_name(ref.name, ref.tag, 'image %s' % oci.shown(str(ref)))
        if ref.digest is not None:
            oci.parse_digest(ref.digest, 'image %s' % oci.shown(str(ref)))
        return ref.digest or ref.tag or 'latest'

    def resolve(self, ref):
        """What the reference names, fetched once and not followed: a model.SourceManifest (image or index)."""
        reference = self._checked(ref)
        data, media_type, digest, document = self.client.fetch_manifest(ref.name, reference)
        return model.SourceManifest(data, media_type, digest, document)

    def open(self, ref, resolved=None, child=None):
        """The Image a reference names, with lazy layers that stream (and resume) from the registry.

        `resolved` (from resolve()) spares fetching the manifest again; `child` (an oci.Descriptor of the index
        `resolved` holds) opens that entry instead of the platform of the settings.
        """
        reference = self._checked(ref)
        what = describe_reference(ref.name, reference)
        if child is not None:
            manifest_bytes, media_type, digest, manifest = self.client.fetch_manifest(
                ref.name, child.digest, oci.IMAGE_MANIFEST_TYPES)
            if isinstance(manifest, oci.Index):
                raise CorruptImageError('%s on registry %s nests one index in another' % (what, self.client.host))
        elif resolved is not None and not resolved.is_index:
            manifest_bytes, media_type, digest, manifest = (resolved.raw, resolved.media_type, resolved.digest,
                                                            resolved.document)
        else:
            manifest_bytes, media_type, digest, manifest = self.client.resolve_image(ref.name, reference,
                                                                                     self.platform)
        LOG.info('%s: manifest %s from %s over %s', what, digest, self.client.host,
                 self.ctx.http.http_version(self.client.host) or 'HTTP')
        config_desc = manifest.config
        config_bytes = self.client.get_blob_bytes(ref.name, config_desc.digest)
        if config_desc.size is not None and config_desc.size != len(config_bytes):
            raise CorruptImageError('config of %s is %d bytes, the manifest says %s'
                                    % (what, len(config_bytes), config_desc.size))
        where = 'config of %s on %s' % (what, self.client.host)
        config = oci.load_json_object(config_bytes, where)
        diff_ids = oci.config_diff_ids(config, where)
        descriptors = manifest.layers
        if len(descriptors) != len(diff_ids):
            raise CorruptImageError('%s has %d layers but its config lists %d diff_ids'
                                    % (what, len(descriptors), len(diff_ids)))
        history = [h for h in config.get('history') or [] if isinstance(h, dict) and not h.get('empty_layer')]
        location = model.BlobLocation(self.client.host, ref.name)
        progress = current_image()      # a chunk's bytes count for this image (process), else for the run (info)
        on_bytes = progress.count_download if progress is not None else self._count_bytes
        layers = []
        for index, (descriptor, diffid) in enumerate(zip(descriptors, diff_ids)):
            media = descriptor.media_type or oci.MEDIA_OCI_LAYER_GZIP
            blob = model.Blob(digest=descriptor.digest, media_type=media, size=descriptor.size,
                              opener=functools.partial(self.client.open_blob, ref.name, descriptor.digest,
                                                       descriptor.size, on_bytes),
                              location=location)
            created_by = history[index].get('created_by') if index < len(history) else None
            layers.append(model.Layer(diffid=diffid, origin=blob, created_by=created_by))
        return model.Image(name=ref.name, tag=ref.tag, config_bytes=config_bytes, layers=layers,
                           source='registry://%s/%s' % (self.client.host, what), manifest_digest=digest,
                           manifest_media_type=media_type, manifest_bytes=manifest_bytes,
                           config_media_type=config_desc.media_type or oci.MEDIA_OCI_CONFIG,
                           annotations=manifest.annotations, registry=self.client.host)

    def _blob(self, name, descriptor, media_type=None):
        return model.Blob(digest=descriptor.digest, media_type=media_type or descriptor.media_type or '',
                          size=descriptor.size,
                          opener=functools.partial(self.client.open_blob, name, descriptor.digest, descriptor.size,
                                                   self._count_bytes),
                          location=model.BlobLocation(self.client.host, name))

    def copy_child(self, ref, descriptor):
        """One child of an index as a model.ManifestCopy: its exact bytes (fetched by digest, so verified) and
        the blobs it references (config first). Any manifest of config + layers works, artifacts included."""
        data, media_type, _, manifest = self.client.fetch_manifest(ref.name, descriptor.digest)
        if isinstance(manifest, oci.Index):
            raise CorruptImageError('%s on registry %s nests one index in another'
                                    % (describe_reference(ref.name, descriptor.digest), self.client.host))
        blobs = [self._blob(ref.name, manifest.config, manifest.config.media_type or oci.MEDIA_OCI_CONFIG)]
        blobs.extend(self._blob(ref.name, layer) for layer in manifest.layers)
        return model.ManifestCopy(descriptor, data, media_type, blobs)

    def copy_index(self, ref, resolved, children=None):
        """The index `resolved` holds as a model.ImageIndex with every child (or those given) and its blobs.

        Children are fetched a few at a time (small requests, like tag checks).
        """
        children = list(resolved.document.manifests if children is None else children)
        copies = self.ctx.map(lambda d: self.copy_child(ref, d), children,
                              workers=lookup_workers(self.ctx.settings, len(children)))
        return model.ImageIndex(name=ref.name, tag=ref.tag, index=resolved.document, children=copies,
                                source='registry://%s/%s' % (self.client.host,
                                                             describe_reference(ref.name, self._checked(ref))))

    # --- what refers to a manifest (--referrers; occystrap/referrers.py walks them) ------------------------------

    def _repository_tags(self, name):
        """The tags of a repository, listed once a run (all Link pages) and kept: the referrers tag schema's tags and
        cosign's are looked up there rather than asked for one by one."""
        with self._lock:
            if name in self._tags:
                return self._tags[name]
        tags = frozenset(t for t in self.client.list_tags(name) if isinstance(t, str) and oci.valid_tag(t))
        with self._lock:
            self._tags[name] = tags
        return tags

    def referrers(self, ref, digest, most):
        """oci.Descriptors of what refers to `digest` in the repository of `ref`: the referrers API's list where the
        registry answers it, else the index under the referrers tag schema's tag (`sha256-<hex>`), else none.

        A 404 from the API means the registry has none (distribution spec 1.1), remembered for the repository; a
        tag that holds no valid referrers index is treated as no referrers, as the spec says, with a warning.
        """
        self._checked(ref)
        name = ref.name
        with self._lock:
            api = name not in self._no_referrers_api
        if api:
            listed = self.client.referrers(name, digest, most=most)
            if listed is not None:
                return listed
            LOG.info('registry %s has no referrers API for %s; reading the referrers tag schema', self.client.host,
                     name)
            with self._lock:
                self._no_referrers_api.add(name)
        tag = oci.referrers_tag(digest)
        if tag not in self._repository_tags(name):
            return []
        what = 'the referrers tag %s of %s on registry %s' % (tag, name, self.client.host)
        try:
            data, media_type, _ = self.client.get_manifest(name, tag)
            index = oci.parse_referrers(data, media_type, what)
        except CorruptImageError as e:
            LOG.warning('%s holds no valid referrers index (%s); taken as no referrers', what, e)
            return []
        if len(index.manifests) > most:
            raise RegistryError('%s lists more than %d referrers' % (what, most))
        return index.manifests

    def cosign_tags(self, ref, digest):
        """[(tag, manifest digest)] of cosign's tags for `digest` (`sha256-<hex>.sig`, `.att`, `.sbom`) that the
        repository of `ref` has."""
        self._checked(ref)
        present = self._repository_tags(ref.name)
        found = []
        for tag in oci.cosign_tags(digest):
            if tag not in present:
                continue
            target = self.client.manifest_digest(ref.name, tag)
            if target is None:      # no Docker-Content-Digest on the HEAD answer: the manifest itself tells
                target = self.client.get_manifest(ref.name, tag)[2]
            found.append((tag, target))
        return found

    def fetch_referrer(self, ref, digest):
        """(model.ManifestCopy, oci.Manifest) of a manifest that refers to another, fetched by digest (so verified),
        with the blobs it references, config first. A referrer that is an index is refused (CorruptImageError)."""
        self._checked(ref)
        data, media_type, _, document = self.client.fetch_manifest(ref.name, digest)
        if isinstance(document, oci.Index):
            raise CorruptImageError('referrer %s on registry %s is an index, which --referrers does not copy'
                                    % (describe_reference(ref.name, digest), self.client.host))
        blobs = [self._blob(ref.name, document.config, document.config.media_type or oci.MEDIA_OCI_CONFIG)]
        blobs.extend(self._blob(ref.name, layer) for layer in document.layers)
        descriptor = oci.Descriptor(media_type, digest, len(data))
        return model.ManifestCopy(descriptor, data, media_type, blobs), document
