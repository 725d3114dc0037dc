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
# A tag glob: tag characters, '*' and [...] classes. '?' starts a URI's query, so it cannot be one (docs/uris.md).
TAG_GLOB_CHARS = set('*[')
TAG_GLOB_MAX = 256
TAG_CHARS = set('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-')
OPTION_WORD_RE = re.compile(r'^[A-Za-z_-]+$')


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
    def tag_is_glob(self):
        """True when the tag is a glob that names every matching tag of the repository (registry:// sources)."""
        return is_tag_glob(self.tag)

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
        raise UsageError('%s %r is not a URI: expected SCHEME://..., schemes are %s'
                         % (role_word(role), shown, ', '.join(schemes)))
    scheme, rest = text.split('://', 1)
    scheme = scheme.lower()
    if scheme not in schemes:
        raise UsageError('unknown %s scheme %r in %r: use one of %s'
                         % (role_word(role), scheme, shown, ', '.join(schemes)))
    rest, _, query = rest.partition('?')
    if scheme == 'registry' and role == 'input' and '?' in text:
        _refuse_glob_question_mark(query, shown)
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


def role_word(role):
    return 'source' if role == 'input' else 'destination'


def is_tag_glob(tag):
    """True when a tag (as parsed from a URI) is a glob: it holds '*' or '['."""
    return bool(tag) and any(c in TAG_GLOB_CHARS for c in tag)


def check_tag_glob(glob, shown):
    """Return `glob` when it is a tag glob: tag characters, '*' (any run), and classes '[...]' of tag characters
    ('a-z' ranges, '!' first to negate); else a UsageError naming it. Matched as fnmatch does, anchored."""
    def bad(why):
        return UsageError('bad tag glob %r in %r: %s (a tag glob is tag characters, * and [...])' % (glob, shown, why))
    if len(glob) > TAG_GLOB_MAX:
        raise bad('longer than %d characters' % TAG_GLOB_MAX)
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == '[':
            end = glob.find(']', i + 1)
            if end < 0:
                raise bad("'[' is not closed by ']'")
            members = glob[i + 1:end]
            members = members[1:] if members.startswith('!') else members
            if not members or '[' in members or not set(members) <= TAG_CHARS:
                raise bad('the class %r must hold tag characters and nothing else' % glob[i:end + 1])
            i = end
        elif c != '*' and c not in TAG_CHARS:
            raise bad('%r cannot be in a tag' % c)
        i += 1
    return glob


def _refuse_glob_question_mark(query, shown):
    """'?' starts the query of a URI: when what follows cannot be options, it was meant as a glob character."""
    parts = query.split('&')
    if not query or any(part and '=' not in part and not OPTION_WORD_RE.match(part) for part in parts):
        raise UsageError("'?' starts the query of %r, so a glob cannot use it: match one character with [...] "
                         "(e.g. v1.[0-9]) or any run with *" % shown)


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
        if allow_glob and is_tag_glob(tag):
            check_tag_glob(tag, shown)
        elif not TAG_RE.match(tag):
            raise UsageError('bad tag %r in %r: tags are letters, digits, _ . - (up to 128)%s'
                             % (tag, shown, '; a tag glob names a registry:// source' if is_tag_glob(tag) else ''))
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
    if (uri.is_glob or uri.tag_is_glob) and uri.digest:
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
