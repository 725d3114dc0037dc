"""Where registry credentials come from, in the order skopeo, podman and docker look for them.

For one side of a run (the source or the destination) and one registry host:

1. the URI's userinfo (`registry://user:pass@host/...`);
2. `--src-creds` / `--dest-creds` (USER[:PASS], the password may come from `--password-stdin`);
3. `--username` / `--password` (every registry of the run);
4. credential files, first entry found wins: `--authfile` or `$REGISTRY_AUTH_FILE` (else
   `$XDG_RUNTIME_DIR/containers/auth.json`), `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/...`),
   `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), and docker's legacy `~/.dockercfg`. In each file:
   `credHelpers` for the host, then the `auths` entries matching the host (containers' `host/namespace` keys most
   specific first, docker's `https://host/v1/` spellings too), then `credsStore`. `~/.dockercfg` is the format
   docker used before config.json: the whole object is what `auths` is now (server -> {auth, email}), as
   containers/image still reads it.

Files are read when a client is made; a credential helper (`docker-credential-NAME get`) runs only when a registry
first asks for credentials, once per run and key. Nothing read here is ever logged or put in an error: only where it
was looked for.
"""

import base64
import json
import logging
import os
import re
import threading
from occystrap.errors import OccystrapError, RegistryError

LOG = logging.getLogger(__name__)

DOCKER_HUB_ALIASES = ('docker.io', 'index.docker.io', 'registry-1.docker.io')
DOCKER_HUB_SERVER = 'https://index.docker.io/v1/'
HELPER_TIMEOUT = 60            # seconds; a gpg-backed helper may wait on an agent
MAX_HELPER_OUTPUT = 64 * 1024
MAX_FILE_BYTES = 4 * 1024 * 1024
IDENTITY_TOKEN_USER = '<token>'   # what a helper's Username says when Secret is an identity token
# A helper name becomes part of an executable's name: letters, digits and a few separators only.
HELPER_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
NOT_FOUND_WORDS = ('credentials not found', 'not found in native keychain')


class CredentialError(RegistryError):
    """A credential source is configured but unusable: a missing or failing helper, an unreadable file."""


class _Value:
    """Equality and hashing by the fields in __slots__ (plain classes: a dataclass costs ~1 ms of start-up)."""

    __slots__ = ()

    def _fields(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self):
        return hash((type(self).__name__,) + self._fields())


class Credential(_Value):
    """A user name and password, or an identity (OAuth2 refresh) token; `source` says where it came from."""

    __slots__ = ('username', 'password', 'identity_token', 'source')

    def __init__(self, username=None, password=None, identity_token=None, source=''):
        self.username = username
        self.password = password
        self.identity_token = identity_token
        self.source = source

    def __repr__(self):   # never show a secret, even in a traceback
        return '<Credential %s from %s>' % (self.username or 'identity token', self.source)


def normalize_key(key):
    """A credential-file key as 'host[:port][/path]', lowercased host: 'https://Host:5000/v1/' -> 'host:5000'."""
    key = key.strip()
    had_scheme = '://' in key
    if had_scheme:
        key = key.split('://', 1)[1]
    host, _, path = key.partition('/')
    host = host.lower()
    if host in DOCKER_HUB_ALIASES:
        host = 'docker.io'
    path = path.strip('/')
    # docker's own spellings ('host/v1/', 'https://host/v2/') name the registry, not a namespace.
    if had_scheme or path in ('v1', 'v2'):
        path = ''
    return host + ('/' + path if path else '')


def lookup_keys(host, repository=None):
    """Keys that may hold credentials for host/repository, most specific first (containers-auth.json(5))."""
    host = normalize_key(host)
    keys = []
    parts = [p for p in (repository or '').split('/') if p]
    for i, part in enumerate(parts):
        if any(c in part for c in '*?['):       # a glob: only the literal namespace before it can match
            parts = parts[:i]
            break
    for end in range(len(parts), 0, -1):
        keys.append(host + '/' + '/'.join(parts[:end]))
    keys.append(host)
    return keys


def helper_server_url(host):
    """What a credential helper is asked for: the host as `docker login` stored it (Docker Hub's v1 URL)."""
    return DOCKER_HUB_SERVER if normalize_key(host) == 'docker.io' else host


LEGACY_DOCKERCFG = '.dockercfg'


def default_files(authfile=None, environ=None):
    """The credential files to read, in order, as (label, path, legacy). `authfile` is --authfile. The last,
    `~/.dockercfg` (HOME's, whatever DOCKER_CONFIG says, as docker and containers/image look for it), is `legacy`:
    its object is server -> entry, what `auths` holds in the others (no helpers, no store)."""
    environ = os.environ if environ is None else environ
    home = environ.get('HOME') or os.path.expanduser('~')
    files = []
    if authfile:
        files.append(('--authfile %s' % authfile, authfile, False))
    elif environ.get('REGISTRY_AUTH_FILE'):
        files.append(('REGISTRY_AUTH_FILE %s' % environ['REGISTRY_AUTH_FILE'], environ['REGISTRY_AUTH_FILE'], False))
    elif environ.get('XDG_RUNTIME_DIR'):
        path = os.path.join(environ['XDG_RUNTIME_DIR'], 'containers', 'auth.json')
        files.append((path, path, False))
    config_home = environ.get('XDG_CONFIG_HOME') or os.path.join(home, '.config')
    path = os.path.join(config_home, 'containers', 'auth.json')
    files.append((path, path, False))
    docker_dir = environ.get('DOCKER_CONFIG') or os.path.join(home, '.docker')
    path = os.path.join(docker_dir, 'config.json')
    files.append((path, path, False))
    path = os.path.join(home, LEGACY_DOCKERCFG)
    files.append((path, path, True))
    return files


def read_file(path):
    """The parsed JSON object of a credential file, or None when it does not exist. Raises CredentialError."""
    try:
        with open(path, 'rb') as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CredentialError('credential file %s is a directory' % path)
    except OSError as e:
        raise CredentialError('cannot read credential file %s: %s' % (path, e.strerror or type(e).__name__))
    if len(data) > MAX_FILE_BYTES:
        raise CredentialError('credential file %s is larger than %d bytes' % (path, MAX_FILE_BYTES))
    try:
        document = json.loads(data)
    except ValueError:
        raise CredentialError('credential file %s is not JSON' % path)
    if not isinstance(document, dict):
        raise CredentialError('credential file %s is not a JSON object' % path)
    return document


def entry_credential(entry, source):
    """The Credential of an `auths` entry ({auth}, {username, password} or {identitytoken}), or None when empty."""
    if not isinstance(entry, dict):
        return None
    token = entry.get('identitytoken')
    if isinstance(token, str) and token:
        return Credential(identity_token=token, source=source)
    if isinstance(entry.get('auth'), str) and entry['auth']:
        try:
            decoded = base64.b64decode(entry['auth'], validate=True).decode()
        except ValueError:
            LOG.warning('ignoring a malformed auth entry in %s', source)
            return None
        user, sep, password = decoded.partition(':')
        if sep and user:
            return Credential(user, password, source=source)
        LOG.warning('ignoring an auth entry without user:password in %s', source)
        return None
    user, password = entry.get('username'), entry.get('password')
    if isinstance(user, str) and user and isinstance(password, str):
        return Credential(user, password, source=source)
    return None


class Helper(_Value):
    """A `docker-credential-NAME` to ask for `server`; `source` is 'credHelpers in PATH' or 'credsStore in PATH'."""

    __slots__ = ('name', 'server', 'source')

    def __init__(self, name, server, source):
        self.name = name
        self.server = server
        self.source = source

    def get(self, environ=None):
        """Run the helper's `get`; the Credential, or None when it has none for the server. Raises CredentialError."""
        import subprocess             # only runs that use a helper pay for it
        program = 'docker-credential-' + self.name
        if not HELPER_NAME_RE.match(self.name):
            raise CredentialError('credential helper name %r (%s) is not a valid name' % (self.name[:64], self.source))
        try:
            result = subprocess.run([program, 'get'], input=self.server.encode(), capture_output=True,
                                    timeout=HELPER_TIMEOUT, env=environ)
        except FileNotFoundError:
            raise CredentialError('credential helper %s (%s) is not installed or not on PATH' % (program, self.source))
        except subprocess.TimeoutExpired:
            raise CredentialError('credential helper %s (%s) did not answer within %ds'
                                  % (program, self.source, HELPER_TIMEOUT))
        except OSError as e:
            raise CredentialError('cannot run credential helper %s (%s): %s'
                                  % (program, self.source, e.strerror or type(e).__name__))
        out = result.stdout[:MAX_HELPER_OUTPUT]
        if result.returncode != 0:
            # The protocol reports "not found" on stdout; anything else is a failure. Neither stream is echoed: a
            # helper may print what it was given.
            text = out.decode(errors='replace').lower()
            if any(word in text for word in NOT_FOUND_WORDS):
                return None
            raise CredentialError('credential helper %s (%s) failed with exit status %d for %s'
                                  % (program, self.source, result.returncode, self.server))
        try:
            answer = json.loads(out)
            user, secret = answer.get('Username'), answer.get('Secret')
        except (ValueError, AttributeError):
            raise CredentialError('credential helper %s (%s) answered something that is not its JSON'
                                  % (program, self.source))
        if not isinstance(secret, str) or not secret or not isinstance(user, str):
            return None
        where = 'helper %s' % program
        if user == IDENTITY_TOKEN_USER:
            return Credential(identity_token=secret, source=where)
        return Credential(user, secret, source=where)


class CredentialLookup:
    """The credential for one host (and repository) of one side of a run, resolved once, when first needed.

    `explicit` is a Credential given on the command line or in the URI (files are then not read). `key` identifies
    what was found, so that clients with the same credential share one token cache.
    """

    def __init__(self, host, repository=None, explicit=None, authfile=None, environ=None):
        self.host = host
        self.environ = os.environ if environ is None else environ
        self.tried = []
        self.candidates = []          # Credential or Helper, in the order they are tried
        self._resolved = False
        self._credential = None
        self._lock = threading.Lock()
        if explicit is not None:
            self.tried.append(explicit.source)
            self.candidates.append(explicit)
        else:
            self._read_files(repository, authfile)

    def _read_files(self, repository, authfile):
        keys = lookup_keys(self.host, repository)
        for label, path, legacy in default_files(authfile, self.environ):
            document = read_file(path)
            if document is None:
                self.tried.append('%s (absent)' % label)
                continue
            self.tried.append(label)
            if legacy:
                document = {'auths': document}       # {server: {auth, email}}: what `auths` holds today
            helpers = document.get('credHelpers')
            if isinstance(helpers, dict):
                for key, name in helpers.items():
                    if isinstance(name, str) and normalize_key(key) == keys[-1]:
                        self.candidates.append(Helper(name, helper_server_url(self.host), 'credHelpers in %s' % path))
                        break
            auths = document.get('auths')
            if isinstance(auths, dict):
                by_key = {}
                for key, entry in auths.items():
                    by_key.setdefault(normalize_key(key), entry)
                for key in keys:
                    credential = entry_credential(by_key.get(key), '%s (%s)' % (label, key))
                    if credential is not None:
                        self.candidates.append(credential)
                        break
            store = document.get('credsStore')
            if isinstance(store, str) and store:
                self.candidates.append(Helper(store, helper_server_url(self.host), 'credsStore in %s' % path))

    @property
    def key(self):
        """What the credential depends on: the same key means the same credential."""
        return tuple(self.candidates)

    def describe_tried(self):
        """'--src-creds' or 'auth.json (absent), config.json, helper docker-credential-pass': never contents."""
        tried = list(self.tried)
        tried += ['helper docker-credential-%s' % c.name for c in self.candidates if isinstance(c, Helper)]
        return ', '.join(tried) if tried else 'no source'

    def resolve(self):
        """The Credential (None when no source has one for the host), asking helpers the first time only."""
        with self._lock:
            if not self._resolved:
                self._credential = self._first()
                self._resolved = True
                if self._credential is not None:
                    LOG.debug('credentials for %s from %s', self.host, self._credential.source)
            return self._credential

    def _first(self):
        for candidate in self.candidates:
            credential = candidate.get(self.environ) if isinstance(candidate, Helper) else candidate
            if credential is not None:
                return credential
        return None


def parse_creds(text, option):
    """USER[:PASSWORD] of --src-creds/--dest-creds as (user, password or None). Raises OccystrapError."""
    user, sep, password = text.partition(':')
    if not user:
        raise OccystrapError('%s needs USER[:PASSWORD]' % option)
    return user, (password if sep else None)
