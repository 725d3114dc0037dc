"""The OCI and Docker value types every transport shares: media types, digests, platforms, descriptors, manifests
and indexes, and the one loader for JSON from outside.

Modelled on go-containerregistry's `pkg/v1` and regclient's `types/`: a Manifest or Index keeps the exact bytes it
was parsed from (so a copy can write them back and keep the digest) and exposes validated Descriptors. Everything
read from a tarball, a layout or a registry passes through here before it reaches a path, a URL or a script:
digests are checked against the digest grammar, names and tags against the URI grammar of `uris.py`.
"""

import dataclasses
import hashlib
import json
from typing import Optional

from occystrap.errors import CorruptImageError
from occystrap import uris
from occystrap.uris import DIGEST_RE, InvalidNameError  # noqa: F401 (one class for every name check)

MEDIA_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
MEDIA_DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
MEDIA_DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json'
MEDIA_DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip'
MEDIA_DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar'
MEDIA_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
MEDIA_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
MEDIA_OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
MEDIA_OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar'
MEDIA_OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'
MEDIA_OCI_LAYER_ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd'
MEDIA_SCHEMA1 = ('application/vnd.docker.distribution.manifest.v1+json',
                 'application/vnd.docker.distribution.manifest.v1+prettyjws')

MANIFEST_LIST_TYPES = (MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX)
IMAGE_MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
ALL_MANIFEST_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)

ALGORITHMS = ('sha256', 'sha512')
# What cosign tags beside an image: `sha256-<hex>.sig` (signatures), `.att` (attestations), `.sbom` (SBOMs).
COSIGN_SUFFIXES = ('.sig', '.att', '.sbom')
SHOWN_MAX = 80


class InvalidDigestError(CorruptImageError):
    """A digest read from outside does not follow the digest grammar (sha256:<64 hex>, sha512:<128 hex>)."""


def shown(value, limit=SHOWN_MAX):
    """Untrusted text made safe to put in a one-line message: quoted, control characters escaped, truncated."""
    if not isinstance(value, str):
        text = repr(value)       # None, numbers, lists: shown as JSON-ish Python values, without quotes
        return text[:limit] + '...' if len(text) > limit else text
    quoted = repr(value[:limit])
    return quoted + '...' if len(value) > limit else quoted


# --- media types -------------------------------------------------------------------------------------------------

def compression_of_media_type(media_type):
    """'gzip', 'zstd' or 'none' as a layer media type says."""
    if media_type.endswith('gzip'):
        return 'gzip'
    if media_type.endswith('zstd'):
        return 'zstd'
    return 'none'


def layer_media_type(compression, oci=True):
    """The layer media type for a compression, in the OCI or Docker vocabulary."""
    if oci:
        return {'gzip': MEDIA_OCI_LAYER_GZIP, 'zstd': MEDIA_OCI_LAYER_ZSTD, 'none': MEDIA_OCI_LAYER_TAR}[compression]
    if compression == 'zstd':
        return MEDIA_OCI_LAYER_ZSTD  # Docker's vocabulary has no zstd type; engines accept the OCI one
    return {'gzip': MEDIA_DOCKER_LAYER_GZIP, 'none': MEDIA_DOCKER_LAYER_TAR}[compression]


# --- digests -----------------------------------------------------------------------------------------------------

def is_digest(text):
    """True when `text` is a well-formed digest."""
    # fullmatch: the shared patterns end in '$', which also matches before a trailing newline
    return isinstance(text, str) and DIGEST_RE.fullmatch(text) is not None


def parse_digest(text, what):
    """`text` when it is a well-formed digest, else InvalidDigestError naming `what` and the (escaped) value."""
    if not is_digest(text):
        raise InvalidDigestError('%s has a malformed digest %s (expected sha256:<64 hex> or sha512:<128 hex>)'
                                 % (what, shown(text)))
    return text


def digest_hex(digest, what='a file name'):
    """The hex part of a digest, checked first: it names files and directories."""
    return parse_digest(digest, what).split(':', 1)[1]


def digest_of(data, algorithm='sha256'):
    """The digest of bytes, 'sha256:<hex>' (or sha512)."""
    if algorithm not in ALGORITHMS:
        raise ValueError('unknown digest algorithm %r' % algorithm)
    return '%s:%s' % (algorithm, hashlib.new(algorithm, data).hexdigest())


def blob_path(digest):
    """Where a blob lives inside an OCI image layout: 'blobs/<algorithm>/<hex>' (the digest is checked first)."""
    algorithm, _, hexpart = parse_digest(digest, 'blob').partition(':')
    return 'blobs/%s/%s' % (algorithm, hexpart)


# --- names -------------------------------------------------------------------------------------------------------

def valid_repository(name):
    """True when `name` is a repository name URIs accept, optionally led by a registry host ('host:port/a/b')."""
    return uris.is_repository(name, host=True)


def valid_tag(tag):
    """True when `tag` is a tag URIs accept."""
    return uris.is_tag(tag)


def check_name(name, tag, what):
    """(name, tag) when both follow the URI grammar (tag may be None), else InvalidNameError naming `what`."""
    if not valid_repository(name):
        raise InvalidNameError('%s names an invalid repository %s' % (what, shown(name)))
    if tag is not None and not valid_tag(tag):
        raise InvalidNameError('%s names an invalid tag %s' % (what, shown(tag)))
    return name, tag


# --- untrusted JSON ----------------------------------------------------------------------------------------------

def load_json(data, source):
    """JSON from outside (bytes or str) parsed, or a one-line CorruptImageError naming `source`.

    Invalid JSON, text that is not UTF-8 and documents nested too deeply for the parser all end the same way.
    """
    try:
        text = data.decode('utf-8-sig') if isinstance(data, (bytes, bytearray, memoryview)) else data
    except UnicodeDecodeError as e:
        raise CorruptImageError('%s is not UTF-8 text: %s' % (source, e.reason))
    try:
        return json.loads(text)
    except RecursionError:
        raise CorruptImageError('%s is JSON nested too deeply to read' % source)
    except ValueError as e:
        raise CorruptImageError('%s is not valid JSON: %s' % (source, e))


def load_json_object(data, source):
    """Like load_json, and the document must be a JSON object."""
    document = load_json(data, source)
    if not isinstance(document, dict):
        raise CorruptImageError('%s is not a JSON object' % source)
    return document


def _dumps(value, sort_keys):
    return json.dumps(value, separators=(',', ':'), sort_keys=sort_keys).encode()


def config_diff_ids(config, source):
    """The validated rootfs.diff_ids of an image config (a dict); CorruptImageError naming `source` otherwise."""
    rootfs = config.get('rootfs') if isinstance(config, dict) else None
    diff_ids = rootfs.get('diff_ids') if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise CorruptImageError('%s has no rootfs.diff_ids list' % source)
    return [parse_digest(diff_id, '%s diff_id %d' % (source, number)) for number, diff_id in enumerate(diff_ids)]


# --- platforms ---------------------------------------------------------------------------------------------------

_ARCH_ALIASES = {'x86_64': ('amd64', ''), 'x86-64': ('amd64', ''), 'aarch64': ('arm64', ''),
                 'armhf': ('arm', 'v7'), 'armel': ('arm', 'v6'), 'i386': ('386', '')}
_DEFAULT_VARIANT = {'arm64': 'v8', 'arm': 'v7'}


@dataclasses.dataclass(frozen=True)
class Platform:
    """An image platform: os, architecture, optional variant (plus the rarer fields a descriptor may carry).

    Matching follows containerd: both sides are normalised (x86_64 -> amd64, aarch64 -> arm64, arm64 without a
    variant is arm64/v8, arm without one is arm/v7) and must then agree exactly, so arm/v6 is not arm/v7.
    """

    os: str
    architecture: str
    variant: str = ''
    os_version: str = ''
    os_features: tuple = ()
    features: tuple = ()

    @classmethod
    def parse(cls, text):
        """'os/arch[/variant]' as users write it (ValueError when it is not of that form)."""
        parts = text.split('/') if isinstance(text, str) else []
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ValueError('platform %s is not os/arch[/variant]' % shown(text))
        return cls(*parts)

    @classmethod
    def from_dict(cls, value, what):
        """A descriptor's platform object; CorruptImageError when it is not one."""
        if not isinstance(value, dict):
            raise CorruptImageError('%s has a platform that is not an object' % what)
        fields = {}
        for key, name in (('os', 'os'), ('architecture', 'architecture'), ('variant', 'variant'),
                          ('os.version', 'os_version')):
            item = value.get(key)
            if item is not None and not isinstance(item, str):
                raise CorruptImageError('%s has a platform whose %s is not a string' % (what, key))
            fields[name] = item or ''
        for key, name in (('os.features', 'os_features'), ('features', 'features')):
            item = value.get(key)
            if item is not None and not (isinstance(item, list) and all(isinstance(i, str) for i in item)):
                raise CorruptImageError('%s has a platform whose %s is not a list of strings' % (what, key))
            fields[name] = tuple(item or ())
        return cls(**fields)

    def to_dict(self):
        out = {'architecture': self.architecture, 'os': self.os}
        if self.os_version:
            out['os.version'] = self.os_version
        if self.os_features:
            out['os.features'] = list(self.os_features)
        if self.variant:
            out['variant'] = self.variant
        if self.features:
            out['features'] = list(self.features)
        return out

    def normalized(self):
        """The same platform in containerd's canonical spelling, variant defaults filled in."""
        os_name = (self.os or '').lower()
        architecture = (self.architecture or '').lower()
        variant = (self.variant or '').lower()
        if architecture in _ARCH_ALIASES:
            architecture, implied = _ARCH_ALIASES[architecture]
            variant = variant or implied
        if architecture == 'arm64' and variant == '8':
            variant = 'v8'
        if architecture == 'arm' and variant in ('5', '6', '7', '8'):
            variant = 'v' + variant
        variant = variant or _DEFAULT_VARIANT.get(architecture, '')
        return dataclasses.replace(self, os=os_name, architecture=architecture, variant=variant)

    def matches(self, other):
        """True when `other` (a Platform) is this platform by the one rule (see the class docstring)."""
        mine, theirs = self.normalized(), other.normalized()
        return (mine.os, mine.architecture, mine.variant) == (theirs.os, theirs.architecture, theirs.variant)

    def __str__(self):
        return '/'.join(part for part in (self.os or '?', self.architecture or '?', self.variant) if part)


# --- descriptors -------------------------------------------------------------------------------------------------

def _optional_string(document, key, what):
    """document[key] when it is a string or absent (None); CorruptImageError naming `what` otherwise."""
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise CorruptImageError('%s has a%s %s that is not a string' % (what, 'n' if key[0] in 'aeiou' else '', key))
    return value


def _annotations(document, what):
    """document['annotations'] when it is an object of strings or absent (None)."""
    annotations = document.get('annotations')
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        raise CorruptImageError('%s has annotations that are not an object of strings' % what)
    return annotations


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """What a manifest or index says about one blob: media type, digest (validated), size and the optional rest."""

    media_type: Optional[str]
    digest: str
    size: Optional[int]
    platform: Optional[Platform] = None
    annotations: Optional[dict] = None
    artifact_type: Optional[str] = None
    urls: Optional[tuple] = None

    @classmethod
    def from_dict(cls, value, what):
        """A descriptor object from outside, every field checked; CorruptImageError naming `what` when malformed."""
        if not isinstance(value, dict):
            raise CorruptImageError('%s is not a descriptor object' % what)
        digest = parse_digest(value.get('digest'), what)
        size = value.get('size')
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise CorruptImageError('%s has a size %s that is not a non-negative integer' % (what, shown(size)))
        media_type = _optional_string(value, 'mediaType', what)
        artifact_type = _optional_string(value, 'artifactType', what)
        annotations = _annotations(value, what)
        urls = value.get('urls')
        if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
            raise CorruptImageError('%s has urls that are not a list of strings' % what)
        platform = value.get('platform')
        return cls(media_type=media_type or None, digest=digest, size=size,
                   platform=Platform.from_dict(platform, what) if platform is not None else None,
                   annotations=dict(annotations) if annotations else None, artifact_type=artifact_type,
                   urls=tuple(urls) if urls else None)

    def to_dict(self, docker=False):
        """The JSON object, fields in the order containers/image writes them (Docker schema 2 puts size first)."""
        out = {}
        if self.media_type:
            out['mediaType'] = self.media_type
        if docker:
            out['size'] = self.size
            out['digest'] = self.digest
        else:
            out['digest'] = self.digest
            out['size'] = self.size
        if self.urls:
            out['urls'] = list(self.urls)
        if self.annotations:
            out['annotations'] = dict(self.annotations)
        if self.platform is not None:
            out['platform'] = self.platform.to_dict()
        if self.artifact_type:
            out['artifactType'] = self.artifact_type
        return out

    @property
    def compression(self):
        return compression_of_media_type(self.media_type or '')


# --- manifests and indexes ---------------------------------------------------------------------------------------

def _document(data, media_type, source, kind):
    document = load_json_object(data, source)
    declared = _optional_string(document, 'mediaType', source)
    _optional_string(document, 'artifactType', source)
    _annotations(document, source)
    if document.get('subject') is not None:
        Descriptor.from_dict(document['subject'], '%s subject' % source)
    return document, media_type or declared or kind


class _Document:
    """What manifests and indexes share: the exact bytes (and so the digest), the media type, the parsed document."""

    def __init__(self, raw, media_type, document, source):
        self.raw = bytes(raw)
        self.media_type = media_type
        self.document = document
        self.source = source

    @property
    def digest(self):
        return digest_of(self.raw)

    @property
    def annotations(self):
        return dict(self.document.get('annotations') or {})

    @property
    def subject(self):
        """The descriptor of the manifest this one refers to (OCI 1.1 `subject`), or None; checked when parsed."""
        value = self.document.get('subject')
        return Descriptor.from_dict(value, '%s subject' % self.source) if value is not None else None

    @property
    def artifact_type(self):
        return self.document.get('artifactType') or None


class Manifest(_Document):
    """An image manifest (OCI or Docker schema 2): its exact bytes, digest, media type, config and layers."""

    def __init__(self, raw, media_type, document, config, layers, source='manifest'):
        super().__init__(raw, media_type, document, source)
        self.config = config
        self.layers = layers

    @classmethod
    def parse(cls, data, media_type=None, source='manifest'):
        """Parse exact bytes; `media_type` (e.g. a Content-Type) wins over the document's own mediaType.

        Every descriptor is validated; CorruptImageError naming `source` when anything is malformed.
        """
        document, media_type = _document(data, media_type, source, MEDIA_OCI_MANIFEST)
        if 'config' not in document:
            raise CorruptImageError('%s has no config descriptor' % source)
        config = Descriptor.from_dict(document['config'], '%s config' % source)
        layers = document.get('layers')
        if layers is None:
            layers = []
        if not isinstance(layers, list):
            raise CorruptImageError('%s has no layers list' % source)
        descriptors = [Descriptor.from_dict(layer, '%s layer %d' % (source, number))
                       for number, layer in enumerate(layers)]
        return cls(data, media_type, document, config, descriptors, source)

    @classmethod
    def build(cls, config, layers, media_type=MEDIA_OCI_MANIFEST, annotations=None, sort_keys=False):
        """A new manifest serialised deterministically (compact; keys sorted when `sort_keys`)."""
        docker = media_type == MEDIA_DOCKER_MANIFEST
        document = {'schemaVersion': 2, 'mediaType': media_type, 'config': config.to_dict(docker),
                    'layers': [layer.to_dict(docker) for layer in layers]}
        if annotations:
            document['annotations'] = dict(annotations)
        return cls(_dumps(document, sort_keys), media_type, document, config, list(layers))

    @property
    def is_oci(self):
        return self.media_type == MEDIA_OCI_MANIFEST


class Index(_Document):
    """A manifest list or OCI index: its exact bytes, digest, media type and child descriptors."""

    def __init__(self, raw, media_type, document, manifests, source='index'):
        super().__init__(raw, media_type, document, source)
        self.manifests = manifests

    @classmethod
    def parse(cls, data, media_type=None, source='index'):
        """Parse exact bytes; every child descriptor (its digest above all) is validated."""
        document, media_type = _document(data, media_type, source, MEDIA_OCI_INDEX)
        children = document.get('manifests')
        if not isinstance(children, list):
            raise CorruptImageError('%s has no manifests list' % source)
        manifests = [Descriptor.from_dict(child, '%s entry %d' % (source, number))
                     for number, child in enumerate(children)]
        return cls(data, media_type, document, manifests, source)

    @classmethod
    def build(cls, manifests, media_type=MEDIA_OCI_INDEX, annotations=None, sort_keys=False):
        """A new index serialised deterministically (compact; keys sorted when `sort_keys`)."""
        document = {'schemaVersion': 2, 'mediaType': media_type,
                    'manifests': [m.to_dict(media_type == MEDIA_DOCKER_LIST) for m in manifests]}
        if annotations:
            document['annotations'] = dict(annotations)
        return cls(_dumps(document, sort_keys), media_type, document, list(manifests))

    def select(self, platform):
        """The first child for `platform` by Platform.matches, or None."""
        return select_platform(self.manifests, platform)

    def platforms(self):
        """The platforms of the children that name a real one (attestations use 'unknown'), as strings."""
        return [str(d.platform) for d in self.manifests if d.platform is not None
                and d.platform.os not in ('', 'unknown')]


def select_platform(descriptors, platform):
    """The first descriptor whose platform matches `platform` (a Platform) by the one rule, or None."""
    for descriptor in descriptors:
        if descriptor.platform is not None and platform.matches(descriptor.platform):
            return descriptor
    return None


def is_index_document(media_type, document):
    """True when a manifest-ish document is an index: by media type, or by shape when it has none."""
    if media_type in MANIFEST_LIST_TYPES:
        return True
    if media_type in IMAGE_MANIFEST_TYPES:
        return False
    return isinstance(document, dict) and 'manifests' in document


# --- referrers (OCI 1.1) and cosign's tags -------------------------------------------------------------------------

def referrers_tag(digest):
    """The tag of the referrers tag schema for `digest` (distribution spec 1.1): '<algorithm>-<encoded>', the
    algorithm cut to 32 characters, the encoded part to 64; the digest is checked first."""
    algorithm, _, encoded = parse_digest(digest, 'subject').partition(':')
    return '%s-%s' % (algorithm[:32], encoded[:64])


def cosign_tags(digest):
    """cosign's tags for what refers to `digest`: '<algorithm>-<hex>.sig', '.att', '.sbom' (those the tag grammar
    allows; a sha512 digest is too long for any of them)."""
    algorithm, _, encoded = parse_digest(digest, 'subject').partition(':')
    return [tag for tag in ('%s-%s%s' % (algorithm, encoded, suffix) for suffix in COSIGN_SUFFIXES) if valid_tag(tag)]


def referrer_descriptor(document, media_type):
    """The descriptor a referrers list holds for a manifest or index (an oci.Manifest or oci.Index): its media type,
    digest and size, its artifactType (a manifest without one gives its config's media type) and its annotations."""
    artifact_type = document.artifact_type
    if artifact_type is None and isinstance(document, Manifest):
        artifact_type = document.config.media_type
    return Descriptor(media_type, document.digest, len(document.raw), annotations=document.annotations or None,
                      artifact_type=artifact_type)


def parse_referrers(data, media_type, source):
    """A referrers list (the referrers API's answer or the tag schema's index): an oci.Index whose entries are
    manifests or indexes, every descriptor checked; CorruptImageError naming `source` otherwise."""
    document = load_json_object(data, source)
    if media_type not in (None, '', MEDIA_OCI_INDEX) or document.get('mediaType') not in (None, MEDIA_OCI_INDEX) \
            or not isinstance(document.get('manifests'), list):
        raise CorruptImageError('%s is not an OCI image index' % source)
    index = Index.parse(data, MEDIA_OCI_INDEX, source)
    for number, descriptor in enumerate(index.manifests):
        if descriptor.media_type not in ALL_MANIFEST_TYPES:
            raise CorruptImageError('%s entry %d has a media type %s that is no manifest or index'
                                    % (source, number, shown(descriptor.media_type)))
    return index
