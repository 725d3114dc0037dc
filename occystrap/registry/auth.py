"""Registry authentication: anonymous, Basic, and Docker's Bearer token flow.

Credentials come from (in order) the URI's user:pass, --username/--password, and the `auths` of the Docker client
configuration (~/.docker/config.json, or $DOCKER_CONFIG/config.json). A registry says what it wants in a 401's
WWW-Authenticate header; Bearer tokens are fetched from its realm, cached per scope until they expire, and shared
by every thread (one fetch per scope at a time). No credential or token is ever logged or put in an error.

A realm must be an http(s) URL with a host, and a registry reached over TLS may not name a plain-HTTP realm (the
credentials, or the token, would cross the network in clear text); token answers are read up to TOKEN_LIMIT.
"""

import base64
import json
import logging
import os
import re
import threading
import time
import urllib.parse

from occystrap.errors import RegistryError
from occystrap.registry.http import TOKEN_LIMIT, usable_url

LOG = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60          # seconds, as the token spec says when expires_in is missing
EXPIRY_MARGIN = 10                   # refresh a little before the registry would refuse the token
MAX_TOKEN_LIFETIME = 24 * 3600       # a longer expires_in is believed only this far
DOCKER_HUB_ALIASES = ('docker.io', 'index.docker.io', 'registry-1.docker.io')

_TOKEN_RE = re.compile(r'[\x21-\x7e]+')
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


class AuthenticationError(RegistryError):
    """A registry or its token service refused us: missing, wrong or insufficient credentials."""


def parse_www_authenticate(header):
    """Split a challenge like 'Bearer realm="...",service="...",scope="a:b:pull,push"' into (scheme, params)."""
    if not header:
        return None, {}
    scheme, _, rest = header.strip().partition(' ')
    params = {}
    position = 0
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if not match or match.end() == position:
            break
        key, value = match.group(1), match.group(2)
        if value.startswith('"'):
            value = re.sub(r'\\(.)', r'\1', value[1:-1])
        params[key.lower()] = value
        position = match.end()
    return scheme.lower(), params


def repository_scope(name, actions='pull'):
    return 'repository:%s:%s' % (name, actions)


def docker_config_path():
    directory = os.environ.get('DOCKER_CONFIG') or os.path.join(os.path.expanduser('~'), '.docker')
    return os.path.join(directory, 'config.json')


def _normalize_registry_key(key):
    """'https://host:5000/v1/' -> 'host:5000', as the Docker client stores registries under several spellings."""
    key = key.strip()
    if '://' in key:
        key = urllib.parse.urlsplit(key).netloc or key
    key = key.split('/', 1)[0].lower()
    return 'docker.io' if key in DOCKER_HUB_ALIASES else key


def docker_config_credentials(host, path=None):
    """(username, password) for `host` from the Docker client configuration's `auths`, or (None, None)."""
    path = path or docker_config_path()
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        LOG.warning('ignoring unreadable Docker configuration %s: %s', path, type(e).__name__)
        return None, None
    wanted = _normalize_registry_key(host)
    for key, entry in (config.get('auths') or {}).items():
        if _normalize_registry_key(key) != wanted or not isinstance(entry, dict):
            continue
        if entry.get('auth'):
            try:
                decoded = base64.b64decode(entry['auth']).decode()
            except ValueError:
                LOG.warning('ignoring malformed auth entry for %s in %s', key, path)
                continue
            user, sep, password = decoded.partition(':')
            if sep:
                return user, password
        if entry.get('username') and entry.get('password'):
            return entry['username'], entry['password']
    helper = (config.get('credHelpers') or {}).get(host) or config.get('credsStore')
    if helper:
        LOG.info('credential helper %r in %s is not supported; use --username/--password', helper, path)
    return None, None


def find_credentials(host, username=None, password=None, settings=None, config_path=None):
    """The credentials to use for `host`: URI first, then --username/--password, then the Docker configuration."""
    if username:
        return username, password or ''
    if settings is not None and settings.username:
        return settings.username, settings.password or ''
    return docker_config_credentials(host, config_path)


class Authenticators:
    """A run's Authenticators, one per registry host and set of credentials, so every client of a host shares its
    tokens. `http` is the run's HttpClient, which token requests go through."""

    def __init__(self, http):
        self.http = http
        self._by_key = {}
        self._lock = threading.Lock()

    def get(self, host, username=None, password=None):
        """The shared Authenticator (token cache) for `host` with these credentials."""
        key = (host, username, password)
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = Authenticator(self.http, host, username, password)
            return self._by_key[key]


class _Token:
    def __init__(self, value, expires_at):
        self.value = value
        self.expires_at = expires_at

    @property
    def fresh(self):
        return time.monotonic() < self.expires_at


class Authenticator:
    """Authorization headers for one registry host and one set of credentials (shared by the whole run).

    The registry's challenge is learned from the first 401; after that tokens are fetched before requests so that
    each new scope costs one token request, not a refused request first.
    """

    def __init__(self, http, host, username=None, password=None):
        self.http = http
        self.host = host
        self.username = username
        self.password = password
        self.scheme = None            # None (anonymous so far), 'basic' or 'bearer'
        self.challenge = {}
        self.challenge_scheme = None  # 'https' or 'http': how the registry that challenged us was reached
        self._tokens = {}             # scope tuple -> _Token
        self._scope_locks = {}
        self._lock = threading.Lock()
        self.token_fetches = 0

    @property
    def has_credentials(self):
        return self.username is not None

    def _basic_value(self):
        raw = ('%s:%s' % (self.username, self.password or '')).encode()
        return 'Basic ' + base64.b64encode(raw).decode()

    def headers(self, scopes):
        """The Authorization header (as a dict) for a request needing `scopes` (a tuple of scope strings)."""
        if self.scheme == 'basic':
            return {'Authorization': self._basic_value()}
        if self.scheme == 'bearer':
            return {'Authorization': 'Bearer ' + self._token(tuple(scopes))}
        return {}

    def challenged(self, response, scopes, sent_headers):
        """Handle a 401: learn the challenge and refresh the token. Returns True when the request is worth repeating.

        Raises AuthenticationError when repeating cannot help (no credentials, refused credentials).
        """
        scheme, params = parse_www_authenticate(response.headers.get('WWW-Authenticate'))
        sent = (sent_headers or {}).get('Authorization', '')
        if scheme == 'basic':
            if not self.has_credentials:
                raise AuthenticationError('registry %s requires credentials (use --username/--password or '
                                          'docker login)' % self.host, status=401)
            if sent.startswith('Basic '):
                raise AuthenticationError('registry %s refused the credentials' % self.host, status=401)
            with self._lock:
                self.scheme = 'basic'
            return True
        if scheme == 'bearer':
            if not params.get('realm'):
                raise AuthenticationError('registry %s sent a Bearer challenge without a realm' % self.host,
                                          status=401)
            with self._lock:
                self.scheme = 'bearer'
                self.challenge = params
                self.challenge_scheme = response.request.url.scheme
            if sent.startswith('Bearer '):
                # The token we used was refused (expired early, or revoked): forget it so the repeat fetches anew.
                stale = sent[len('Bearer '):]
                with self._lock:
                    token = self._tokens.get(tuple(scopes))
                    if token is not None and token.value == stale:
                        del self._tokens[tuple(scopes)]
            return True
        raise AuthenticationError('registry %s answered 401 with an unsupported challenge %r'
                                  % (self.host, scheme or 'none'), status=401)

    def _scope_lock(self, scopes):
        with self._lock:
            return self._scope_locks.setdefault(scopes, threading.Lock())

    def _token(self, scopes):
        with self._scope_lock(scopes):
            with self._lock:
                token = self._tokens.get(scopes)
            if token is not None and token.fresh:
                return token.value
            token = self._fetch_token(scopes)
            with self._lock:
                self._tokens[scopes] = token
            return token.value

    def _realm(self):
        """The challenge's realm, refused unless it is an http(s) URL and keeps TLS when the registry has it."""
        realm = self.challenge['realm']
        if not usable_url(realm):
            raise AuthenticationError('registry %s named a token realm that is not an http(s) URL with a host'
                                      % self.host)
        if self.challenge_scheme != 'http' and urllib.parse.urlsplit(realm).scheme.lower() == 'http':
            raise AuthenticationError('registry %s named a plain-HTTP token realm (%s); refusing to send credentials '
                                      'or ask for a token in clear text (use ?insecure=true on its URI only if this '
                                      'registry is meant to be reached over plain HTTP)'
                                      % (self.host, urllib.parse.urlsplit(realm).netloc), status=401)
        return realm

    def _fetch_token(self, scopes):
        realm = self._realm()
        params = [('service', self.challenge['service'])] if self.challenge.get('service') else []
        params += [('scope', scope) for scope in scopes if scope]
        headers = {'Accept': 'application/json'}
        if self.has_credentials:
            headers['Authorization'] = self._basic_value()
        LOG.debug('fetching a token for %s (%s)', self.host, ' '.join(scopes) or 'no scope')
        response = self.http.request('GET', realm, headers=headers, params=params, limit=TOKEN_LIMIT,
                                     what='the token answer for registry %s' % self.host)
        self.token_fetches += 1
        if response.status_code in (401, 403):
            if self.has_credentials:
                raise AuthenticationError('token service of registry %s refused the credentials' % self.host,
                                          status=response.status_code)
            raise AuthenticationError('token service of registry %s refused anonymous access (use --username/'
                                      '--password or docker login)' % self.host, status=response.status_code)
        if response.status_code != 200:
            raise AuthenticationError('token service of registry %s answered %d'
                                      % (self.host, response.status_code), status=response.status_code)
        try:
            body = response.json()
            value = body.get('token') or body.get('access_token')
            lifetime = int(body.get('expires_in') or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError, RecursionError, OverflowError):
            value = None
        if not value:
            raise AuthenticationError('token service of registry %s answered without a token' % self.host)
        # The token goes into a header: printable ASCII without spaces, as a bearer token is.
        if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
            raise AuthenticationError('token service of registry %s answered a token that is not a bearer token'
                                      % self.host)
        lifetime = min(max(lifetime, DEFAULT_TOKEN_LIFETIME), MAX_TOKEN_LIFETIME)
        return _Token(value, time.monotonic() + lifetime - EXPIRY_MARGIN)
