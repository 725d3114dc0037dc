"""Parsing of source and destination URIs and of filter specifications; checks of names; credential redaction.

Every parse error names the part of the input that is wrong (never a part that could hold a password), and is a
UsageError (exit status 2). `validate_repository`/`validate_tag` apply the same grammar to names that come from an
image rather than the command line (InvalidNameError, exit status 1). `redact` hides userinfo and secret options in
any text that is shown.
"""

import dataclasses
import re
import urllib.parse
from typing import Optional

from occystrap import schemes
from occystrap.errors import CorruptImageError, UsageError

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


MAX_REPOSITORY = 255   # distribution spec: a repository name, host included, is at most 255 characters


class InvalidNameError(CorruptImageError):
    """A repository name or tag that came from an image (not the command line) breaks the reference grammar."""


def is_host(host):
    """True for a registry host[:port] as URIs accept it, with no empty or dash-edged labels ('..', '.x', 'x-')."""
    if not HOST_RE.fullmatch(host):
        return False
    if host.startswith('['):
        _, _, port = host.partition(']')
        port = port[1:]
    else:
        name, _, port = host.partition(':')
        if not all(label and label[0] != '-' and label[-1] != '-' for label in name.split('.')):
            return False
    return not port or 0 < int(port) <= 65535


def _leads_with_host(components):
    first = components[0]
    return len(components) > 1 and ('.' in first or ':' in first or first == 'localhost')


def is_repository(name, host=True):
    """True when `name` is a repository name URIs accept; with `host`, optionally led by a registry host."""
    if not isinstance(name, str) or not name or len(name) > MAX_REPOSITORY:
        return False
    components = name.split('/')
    if host and _leads_with_host(components):
        if not is_host(components[0]):
            return False
        components = components[1:]
    return all(COMPONENT_RE.fullmatch(c) for c in components)


def is_tag(tag):
    """True when `tag` is a tag URIs accept."""
    return isinstance(tag, str) and TAG_RE.fullmatch(tag) is not None


def validate_repository(name, what, host=False):
    """Return `name` when it is a repository name by the URI grammar (lowercase components of letters, digits and
    single separators; never '', '.', '..' or an empty component), else raise InvalidNameError naming `what`.

    With `host`, a first component that is a registry host (has '.' or ':' or is 'localhost') is allowed, as an engine
    or a `docker save` tarball names images.
    """
    if is_repository(name, host):
        return name
    if not isinstance(name, str) or not name:
        raise InvalidNameError('%s has no repository name' % what)
    if len(name) > MAX_REPOSITORY:
        raise InvalidNameError('%s: repository name of %d characters, more than %d' % (what, len(name), MAX_REPOSITORY))
    components = name.split('/')
    if host and _leads_with_host(components) and not is_host(components[0]):
        raise InvalidNameError('%s: bad registry host %r in repository name %r' % (what, components[0], name))
    bad = next((c for c in components[1 if host and _leads_with_host(components) else 0:]
                if not COMPONENT_RE.fullmatch(c)), name)
    raise InvalidNameError('%s: bad repository name %r (component %r; use lowercase letters, digits and . _ -)'
                           % (what, name, bad))


def validate_tag(tag, what):
    """Return `tag` when it is a tag by the URI grammar (letters, digits, _ . -, up to 128, not starting with . or -),
    else raise InvalidNameError naming `what`."""
    if not is_tag(tag):
        raise InvalidNameError('%s: bad tag %r (tags are letters, digits, _ . - and up to 128 long)' % (what, tag))
    return tag


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
        """The URI with any userinfo and secret option replaced, safe for logs and errors."""
        return redact(self.raw, one_uri=True)

    def flag(self, key, default=False):
        """A boolean option."""
        if key not in self.options:
            return default
        shown = str(self)
        value = self.options[key]
        if value.lower() in TRUE_WORDS + FALSE_WORDS:
            return value.lower() in TRUE_WORDS
        raise UsageError('option %s of %s must be true or false, not %r' % (key, shown, _piece(value, shown)))

    @property
    def is_glob(self):
        return bool(self.name) and any(c in GLOB_CHARS for c in self.name)

    @property
    def reference(self):
        """name:tag or name@digest, as a registry would say it."""
        if self.digest:
            return '%s@%s' % (self.name, self.digest)
        return '%s:%s' % (self.name, self.tag)


# Where userinfo ends: an '@' followed by something that could be a host[:port] and then the path, the query, the
# fragment, the end of the URI or the end of a quoted URI in a message. Passwords may hold '@', '/', '?', ':', so the
# LAST such '@' counts; a digest (`name@sha256:<hex>`) is not a host and is never taken for one.
_USERINFO_END_RE = re.compile(r'@(?=(?:\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9._~-]+)(?::[0-9]{0,5})?(?:[/?#\s\'"),;]|$))')
_URI_START_RE = re.compile(r'([A-Za-z][A-Za-z0-9+.-]*)?://')
# Query values that are secrets: token=, password=, access_token=, api_key=, X-Amz-Signature= and the like.
_SECRET_QUERY_RE = re.compile(r'([?&;][A-Za-z0-9_.-]*(?:token|passw|pwd|secret|auth|credential|signature|sig|key)'
                              r'[A-Za-z0-9_.-]*=)[^&#\s\'"]*', re.IGNORECASE)
REDACTED = '***'
_SCHEME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*$')


def userinfo_end(rest, scheme=None):
    """Where the userinfo of a URI ends (the index of its '@' in `rest`, the text after '://'), or -1 when none.

    A path scheme (`tar:///x@y/z`, `dir://rel@x/y`) has no authority, so no userinfo: all of it is the path.
    """
    if scheme is not None and getattr(schemes.lookup(scheme), 'path', False):
        return -1
    end = -1
    for match in _USERINFO_END_RE.finditer(rest):
        end = match.start()
    return end


def redact(text, one_uri=False):
    """Hide every userinfo (user and password) of every URI in `text`, and secret query values (token=, password=...).

    Meant for any text shown to a user or a log: the rule errs towards hiding. Whatever lies between '://' and the
    last '@' that is followed by a host is userinfo, whatever characters (encoded or not) it holds. With `one_uri`
    the text is a single URI, so a '://' inside its password is no second URI; in free text a '://' starts another
    URI only where a scheme name stands after a space, a quote, '(', '<', '=' or ',' (as in `api=https://...`).
    """
    text = str(text)
    starts = [m for i, m in enumerate(_URI_START_RE.finditer(text)) if i == 0 or _genuine_start(text, m)]
    if one_uri:
        starts = starts[:1]
    if starts:
        pieces = [text[:starts[0].end()]]
        for index, start in enumerate(starts):
            stop = starts[index + 1].start() if index + 1 < len(starts) else len(text)
            rest = text[start.end():stop]
            end = userinfo_end(rest, start.group(1))
            pieces.append(REDACTED + rest[end:] if end >= 0 else rest)
            if index + 1 < len(starts):
                pieces.append(text[starts[index + 1].start():starts[index + 1].end()])
        text = ''.join(pieces)
    return _SECRET_QUERY_RE.sub(r'\1' + REDACTED, text)


def _genuine_start(text, match):
    if not match.group(1):
        return False
    before = text[match.start() - 1] if match.start() else ' '
    return before.isspace() or before in '\'"(<=,'


def _piece(piece, shown):
    """A part of a URI for an error message: itself when the redacted URI shows it, else hidden (it held a secret)."""
    return piece if piece in shown else REDACTED


def parse_uri(text, role):
    """Parse a SOURCE (role 'input') or DESTINATION (role 'output') URI."""
    known = schemes.names(role)
    shown = redact(text, one_uri=True)
    if '://' not in text:
        # Without a scheme nothing says where userinfo ends: show nothing before the last '@'.
        if '@' in text:
            shown = REDACTED + text[text.rindex('@'):]
        raise UsageError('%s %r is not a URI: expected SCHEME://..., schemes are %s'
                         % (role_word(role), shown, ', '.join(known)))
    scheme, rest = text.split('://', 1)
    if not _SCHEME_RE.match(scheme):
        raise UsageError('%s %r does not start with a scheme name: expected SCHEME://..., schemes are %s'
                         % (role_word(role), REDACTED + redact('x://' + rest, one_uri=True)[1:], ', '.join(known)))
    scheme = scheme.lower()
    if scheme not in known:
        raise UsageError('unknown %s scheme %r in %r: use one of %s'
                         % (role_word(role), scheme, shown, ', '.join(known)))
    table = schemes.lookup(scheme)
    # Userinfo comes off first, so that no part of a password (which may hold '/', '?', '#', '@') is ever taken
    # for a host, a path, a tag or an option, and shown as one.
    # A scheme without credentials may hold URLs in its options (quay's api=): look before the query only.
    end = userinfo_end(rest if table.credentials else rest.partition('?')[0], scheme)
    username = password = None
    if end >= 0:
        if not table.credentials:
            raise UsageError('%s:// takes no credentials in the URI (%r); use --username/--password'
                             % (scheme, shown))
        userinfo, rest = rest[:end], rest[end + 1:]
        user, _, secret = userinfo.partition(':')
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if secret else None
    rest, _, query = rest.partition('?')
    options = {}
    if query:
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            options[key] = value
        for part in query.split('&'):
            if part and '=' not in part:
                raise UsageError('option %r in %r needs a value (key=value)' % (_piece(part, shown), shown))
    canonical = table.name
    allowed = table.options(role)
    if allowed is None:
        raise UsageError('%s cannot be used as %s' % (scheme, role_word(role)))
    for key in options:
        if key not in allowed:
            raise UsageError('unknown option %r in %r (%s:// takes: %s)'
                             % (_piece(key, shown), shown, scheme, ', '.join(allowed) or 'no options'))
    uri = Uri(scheme=canonical, raw=text, role=role, options=options, username=username, password=password)
    for key in table.booleans:
        if key in options:
            uri.flag(key)
    if table.path:
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


def _split_reference(uri, ref, shown, allow_glob):
    """Split 'name[:tag|@digest]' into the Uri's name, tag and digest, validating each part."""
    name, digest = ref, None
    if '@' in ref:
        name, digest = ref.split('@', 1)
        if not DIGEST_RE.match(digest):
            raise UsageError('bad digest %r in %r: expected sha256: and 64 lowercase hex digits'
                             % (_piece(digest, shown), shown))
    tag = None
    last = name.rsplit('/', 1)[-1]
    if ':' in last:
        name, tag = name.rsplit(':', 1)
        if not TAG_RE.match(tag):
            raise UsageError('bad tag %r in %r: tags are letters, digits, _ . - (up to 128)'
                             % (_piece(tag, shown), shown))
    if not name:
        raise UsageError('%r names no repository' % shown)
    for component in name.split('/'):
        is_glob = allow_glob and GLOB_COMPONENT_RE.match(component) and any(c in GLOB_CHARS for c in component)
        ok = COMPONENT_RE.match(component) or is_glob
        if not ok:
            raise UsageError('bad repository name component %r in %r: use lowercase letters, digits and . _ -%s'
                             % (_piece(component, shown), shown, ' (or a glob)' if allow_glob else ''))
    uri.name = name
    uri.digest = digest
    uri.tag = tag if (tag or digest) else 'latest'


def _parse_registry(uri, rest, shown):
    if '/' not in rest:
        raise UsageError('%r needs a host and a repository: registry://HOST[:PORT]/NAME[:TAG]' % shown)
    authority, ref = rest.split('/', 1)
    if not HOST_RE.match(authority):
        raise UsageError('bad registry host %r in %r' % (_piece(authority, shown), shown))
    port = authority.rsplit(':', 1)[1] if ':' in authority and not authority.endswith(']') else None
    if port is not None and not 0 < int(port) < 65536:
        raise UsageError('bad port %s in %r' % (_piece(port, shown), shown))
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
            raise UsageError('bad tag %r in %r' % (_piece(tag, shown), shown))
    if not COMPONENT_RE.match(org):
        raise UsageError('bad organisation %r in %r' % (_piece(org, shown), shown))
    pattern = tail or '*'
    if '/' in pattern or not GLOB_COMPONENT_RE.match(pattern):
        raise UsageError('bad repository glob %r in %r' % (_piece(pattern, shown), shown))
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
            raise UsageError('bad registry host %r in %r' % (_piece(host, shown), shown))
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
