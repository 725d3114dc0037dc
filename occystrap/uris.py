"""Parsing of source and destination URIs and of filter specifications.

Every error names the part of the input that is wrong, and is a UsageError (exit status 2).
"""

import dataclasses
import re
import urllib.parse
from typing import Optional

from occystrap.errors import UsageError

INPUT_SCHEMES = ('registry', 'quay', 'docker', 'tar', 'file')
OUTPUT_SCHEMES = ('tar', 'file', 'dir', 'oci', 'mounts', 'registry', 'docker')
PATH_SCHEMES = ('tar', 'file', 'dir', 'oci', 'mounts')

# Which query options each scheme accepts, per role.
OPTIONS = {
    ('registry', 'input'): ('os', 'arch', 'architecture', 'variant', 'insecure'),
    ('registry', 'output'): ('insecure',),
    ('quay', 'input'): ('token', 'api', 'registry', 'insecure', 'os', 'arch', 'architecture', 'variant'),
    ('docker', 'input'): ('socket',),
    ('docker', 'output'): ('socket',),
    ('tar', 'input'): (),
    ('tar', 'output'): (),
    ('dir', 'output'): ('unique_names', 'expand'),
    ('oci', 'output'): (),
    ('mounts', 'output'): (),
}
# skopeo's transports without '//' that have an occystrap scheme of their own (skopeo_transport_hint).
SKOPEO_TRANSPORTS = ('oci', 'docker-archive', 'oci-archive')
BOOLEAN_OPTIONS = ('insecure', 'unique_names', 'expand')
TRUE_WORDS = ('1', 'true', 'yes', 'on')
FALSE_WORDS = ('0', 'false', 'no', 'off')

DIGEST_RE = re.compile(r'^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$')
TAG_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')
# Repository path components per the distribution spec, with glob characters allowed where globs are.
COMPONENT_RE = re.compile(r'^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$')
GLOB_COMPONENT_RE = re.compile(r'^[a-z0-9*?\[\]!._-]+$')
HOST_RE = re.compile(r'^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$')
GLOB_CHARS = set('*?[')


def parse_bool(value, what):
    lowered = value.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise UsageError('%s must be true or false, not %r' % (what, value))


@dataclasses.dataclass
class Uri:
    """A parsed URI. Which fields are set depends on the scheme."""

    scheme: str
    raw: str
    role: str
    path: Optional[str] = None         # file schemes
    host: Optional[str] = None         # registry host[:port]
    name: Optional[str] = None         # repository, image name, or Quay organisation (+ /GLOB)
    tag: Optional[str] = None
    digest: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    options: dict = dataclasses.field(default_factory=dict)

    def __str__(self):
        """The URI with any password replaced, safe for logs and errors."""
        return redact(self.raw)

    def flag(self, key, default=False):
        """A boolean option."""
        if key not in self.options:
            return default
        return parse_bool(self.options[key], 'option %s of %s' % (key, self))

    @property
    def is_glob(self):
        return bool(self.name) and any(c in GLOB_CHARS for c in self.name)

    @property
    def reference(self):
        """name:tag or name@digest, as a registry would say it."""
        if self.digest:
            return '%s@%s' % (self.name, self.digest)
        return '%s:%s' % (self.name, self.tag)


def redact(text):
    """Hide the password in a 'scheme://user:pass@host' string and any token= option."""
    text = re.sub(r'(://[^/@:]*:)[^/@]*@', r'\1***@', text)
    return re.sub(r'([?&]token=)[^&]*', r'\1***', text)


def parse_uri(text, role):
    """Parse a SOURCE (role 'input') or DESTINATION (role 'output') URI."""
    schemes = INPUT_SCHEMES if role == 'input' else OUTPUT_SCHEMES
    shown = redact(text)
    if '://' not in text:
        hint = skopeo_transport_hint(text, role)
        if hint:
            raise UsageError('%s %r is a skopeo transport, not an occystrap URI: %s' % (role_word(role), shown, hint))
        raise UsageError('%s %r is not a URI: expected SCHEME://..., schemes are %s'
                         % (role_word(role), shown, ', '.join(schemes)))
    scheme, rest = text.split('://', 1)
    scheme = scheme.lower()
    if scheme not in schemes:
        raise UsageError('unknown %s scheme %r in %r: use one of %s'
                         % (role_word(role), scheme, shown, ', '.join(schemes)))
    rest, _, query = rest.partition('?')
    options = {}
    if query:
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            options[key] = value
        for part in query.split('&'):
            if part and '=' not in part:
                raise UsageError('option %r in %r needs a value (key=value)' % (part, shown))
    canonical = 'tar' if scheme == 'file' else scheme
    allowed = OPTIONS.get((canonical, role))
    if allowed is None:
        raise UsageError('%s cannot be used as %s' % (scheme, role_word(role)))
    for key in options:
        if key not in allowed:
            raise UsageError('unknown option %r in %r (%s:// takes: %s)'
                             % (key, shown, scheme, ', '.join(allowed) or 'no options'))
    uri = Uri(scheme=canonical, raw=text, role=role, options=options)
    for key in BOOLEAN_OPTIONS:
        if key in options:
            uri.flag(key)
    if canonical in PATH_SCHEMES:
        path = urllib.parse.unquote(rest)
        if not path:
            example = '.tar' if canonical == 'tar' else ''
            raise UsageError('%s needs a path, e.g. %s:///tmp/image%s' % (shown, scheme, example))
        uri.path = path
    elif canonical == 'registry':
        _parse_registry(uri, rest, shown)
    elif canonical == 'quay':
        _parse_quay(uri, rest, shown)
    elif canonical == 'docker':
        _parse_docker(uri, rest, shown)
    return uri


def skopeo_transport_hint(text, role):
    """'use ...' for a skopeo transport written the skopeo way (`oci:PATH[:REF]`, `docker-archive:PATH`,
    `oci-archive:PATH`), or '' when `text` is none of them."""
    transport, colon, rest = text.partition(':')
    if not colon or not rest or transport not in SKOPEO_TRANSPORTS:
        return ''
    if transport == 'oci':
        path, sep, ref = rest.rpartition(':')
        if sep and path and '/' not in ref:   # oci:PATH:REF, as skopeo names one image of a layout
            return 'use ocidir://%s?ref=%s' % (path, ref)
        return 'use ocidir://%s' % rest
    if transport == 'oci-archive' and role == 'output':
        return 'use tar://%s?format=oci' % rest
    return 'use tar://%s' % rest


def registry_hint(text):
    """For docker://HOST[:PORT]/NAME (skopeo's way to name a registry image), a hint towards registry://; else ''.

    docker:// here is a Docker or Podman engine, which may legitimately hold such names, so the hint only
    accompanies an error."""
    if not text.lower().startswith('docker://'):
        return ''
    rest = text[len('docker://'):].split('?', 1)[0]
    first, slash, name = rest.partition('/')
    if not slash or not name or not ('.' in first or ':' in first or first == 'localhost') or not HOST_RE.match(first):
        return ''
    return ('docker:// names an image in a Docker or Podman engine; for the registry at %s use registry://%s/%s'
            % (first, first, name))


def role_word(role):
    return 'source' if role == 'input' else 'destination'


def _split_reference(uri, ref, shown, allow_glob):
    """Split 'name[:tag|@digest]' into the Uri's name, tag and digest, validating each part."""
    name, digest = ref, None
    if '@' in ref:
        name, digest = ref.split('@', 1)
        if not DIGEST_RE.match(digest):
            raise UsageError('bad digest %r in %r: expected sha256: and 64 lowercase hex digits' % (digest, shown))
    tag = None
    last = name.rsplit('/', 1)[-1]
    if ':' in last:
        name, tag = name.rsplit(':', 1)
        if not TAG_RE.match(tag):
            raise UsageError('bad tag %r in %r: tags are letters, digits, _ . - (up to 128)' % (tag, shown))
    if not name:
        raise UsageError('%r names no repository' % shown)
    for component in name.split('/'):
        is_glob = allow_glob and GLOB_COMPONENT_RE.match(component) and any(c in GLOB_CHARS for c in component)
        ok = COMPONENT_RE.match(component) or is_glob
        if not ok:
            raise UsageError('bad repository name component %r in %r: use lowercase letters, digits and . _ -%s'
                             % (component, shown, ' (or a glob)' if allow_glob else ''))
    uri.name = name
    uri.digest = digest
    uri.tag = tag if (tag or digest) else 'latest'


def _parse_registry(uri, rest, shown):
    if '/' not in rest:
        raise UsageError('%r needs a host and a repository: registry://HOST[:PORT]/NAME[:TAG]' % shown)
    authority, ref = rest.split('/', 1)
    if '@' in authority:
        userinfo, authority = authority.rsplit('@', 1)
        user, _, password = userinfo.partition(':')
        uri.username = urllib.parse.unquote(user) or None
        uri.password = urllib.parse.unquote(password) if password else None
    if not HOST_RE.match(authority):
        raise UsageError('bad registry host %r in %r' % (authority, shown))
    port = authority.rsplit(':', 1)[1] if ':' in authority and not authority.endswith(']') else None
    if port is not None and not 0 < int(port) < 65536:
        raise UsageError('bad port %s in %r' % (port, shown))
    uri.host = authority.lower()
    _split_reference(uri, ref, shown, allow_glob=uri.role == 'input')
    if uri.is_glob and uri.digest:
        raise UsageError('a glob cannot be combined with a digest in %r' % shown)


def _parse_quay(uri, rest, shown):
    if not rest:
        raise UsageError('%r names no organisation: quay://ORG[/GLOB][:TAG]' % shown)
    org, _, tail = rest.partition('/')
    tag = None
    if ':' in (tail or org):
        if tail:
            tail, tag = tail.rsplit(':', 1)
        else:
            org, tag = org.rsplit(':', 1)
        if not TAG_RE.match(tag):
            raise UsageError('bad tag %r in %r' % (tag, shown))
    if not COMPONENT_RE.match(org):
        raise UsageError('bad organisation %r in %r' % (org, shown))
    pattern = tail or '*'
    if '/' in pattern or not GLOB_COMPONENT_RE.match(pattern):
        raise UsageError('bad repository glob %r in %r' % (pattern, shown))
    uri.host = org
    uri.name = '%s/%s' % (org, pattern)
    uri.tag = tag or 'latest'


def _parse_docker(uri, rest, shown):
    if not rest:
        raise UsageError('%r names no image: docker://NAME[:TAG]' % shown)
    first = rest.split('/', 1)[0]
    # A leading component with a dot or port is a registry host, which engines keep in the name.
    host = None
    ref = rest
    if '/' in rest and ('.' in first or ':' in first or first == 'localhost'):
        host, ref = rest.split('/', 1)
        if not HOST_RE.match(host):
            raise UsageError('bad registry host %r in %r' % (host, shown))
    _split_reference(uri, ref, shown, allow_glob=False)
    if host:
        uri.name = '%s/%s' % (host.lower(), uri.name)


@dataclasses.dataclass
class FilterSpec:
    """A parsed -f argument: a filter name and its options."""

    name: str
    options: dict

    def __str__(self):
        if not self.options:
            return self.name
        return '%s:%s' % (self.name, ','.join('%s=%s' % kv for kv in sorted(self.options.items())))


def parse_filter(text, known=None):
    """Parse 'name' or 'name:key=value,key=value'.

    A comma-separated item without '=' continues the previous value, so 'exclude:pattern=*.pyc,*.pyo' keeps both
    globs in `pattern`.
    """
    name, _, rest = text.partition(':')
    name = name.strip()
    if not name:
        raise UsageError('filter %r has no name' % text)
    if known is not None and name not in known:
        raise UsageError('unknown filter %r: use one of %s' % (name, ', '.join(sorted(known))))
    options = {}
    last = None
    if rest:
        for item in rest.split(','):
            if '=' in item:
                key, value = item.split('=', 1)
                key = key.strip()
                if not key:
                    raise UsageError('filter %r has an option with no name' % text)
                if key in options:
                    raise UsageError('filter %r sets %r twice' % (text, key))
                options[key] = value
                last = key
            elif last is not None:
                options[last] += ',' + item
            else:
                raise UsageError('filter %r: option %r needs a value (key=value)' % (text, item))
    return FilterSpec(name, options)
