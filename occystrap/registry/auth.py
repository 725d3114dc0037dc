"""Registry authentication: anonymous, Basic, and Docker's Bearer token flow.

Where credentials come from is registry/credentials.py's concern (the URI, --src-creds/--dest-creds, --username,
auth.json and Docker configuration files, credential helpers). A registry says what it wants in a 401's
WWW-Authenticate header; Bearer tokens are fetched from its realm (with Basic credentials, or by the OAuth2
refresh-token grant for an identity token), cached per scope until they expire, and shared by every thread (one
fetch per scope at a time). No credential or token is ever logged or put in an error.

A realm must be an http(s) URL with a host, and a registry reached over TLS may not name a plain-HTTP realm (the
credentials, or the token, would cross the network in clear text); token answers are read up to TOKEN_LIMIT.
"""

import base64
import logging
import os
import re
import threading
import time
import urllib.parse

from occystrap.errors import RegistryError
from occystrap.registry import credentials
from occystrap.registry.http import TOKEN_LIMIT, usable_url

LOG = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60          # seconds, as the token spec says when expires_in is missing
EXPIRY_MARGIN = 10                   # refresh a little before the registry would refuse the token
MAX_TOKEN_LIFETIME = 24 * 3600       # a longer expires_in is believed only this far
DOCKER_HUB_ALIASES = credentials.DOCKER_HUB_ALIASES
CREDENTIALS_HINT = 'give --username/--password or --src-creds/--dest-creds, or log in with docker or podman'
OAUTH_CLIENT_ID = 'occystrap'          # the distribution token spec's OAuth2 flow asks clients to name themselves

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


def docker_config_credentials(host, path=None):
    """(username, password) for `host` from the `auths` of one Docker client configuration, or (None, None)."""
    path = path or docker_config_path()
    try:
        document = credentials.read_file(path)
    except credentials.CredentialError as e:
        LOG.warning('ignoring %s', e)
        return None, None
    entry = {}
    for key, value in ((document or {}).get('auths') or {}).items():
        if credentials.normalize_key(key) == credentials.normalize_key(host):
            entry = value
            break
    found = credentials.entry_credential(entry, path)
    if found is None or found.username is None:
        return None, None
    return found.username, found.password


def explicit_credential(username=None, password=None, settings=None, role='input'):
    """The Credential given in the URI (`username`), by --src-creds/--dest-creds or by --username, or None."""
    if username:
        return credentials.Credential(username, password or '', source='the URI')
    side = getattr(settings, 'src_creds' if role == 'input' else 'dest_creds', None)
    if side:
        return credentials.Credential(side[0], side[1] or '', source='--src-creds' if role == 'input'
                                      else '--dest-creds')
    if settings is not None and settings.username:
        return credentials.Credential(settings.username, settings.password or '', source='--username')
    return None


def credential_lookup(host, username=None, password=None, settings=None, role='input', repository=None):
    """The CredentialLookup for one side (`role` 'input' or 'output') of a run, in the documented order."""
    explicit = explicit_credential(username, password, settings, role)
    return credentials.CredentialLookup(host, repository, explicit, getattr(settings, 'authfile', None))


def find_credentials(host, username=None, password=None, settings=None, config_path=None):
    """(username, password) for `host`: URI first, then --username/--password, then the credential files.

    Credential helpers are asked too; an identity token is not a password and gives (None, None).
    """
    if config_path is not None and not username and not (settings is not None and settings.username):
        return docker_config_credentials(host, config_path)
    found = credential_lookup(host, username, password, settings).resolve()
    if found is None or found.username is None:
        return None, None
    return found.username, found.password


class Authenticators:
    """A run's Authenticators, one per registry host, credential and TLS choice, so every client of a host shares its
    tokens. `http` is the run's HttpClient, which token requests go through."""

    def __init__(self, http):
        self.http = http
        self._by_key = {}
        self._lock = threading.Lock()

    def get(self, host, username=None, password=None, lookup=None, tls_verify=True):
        """The shared Authenticator (token cache) for `host` with these credentials (or this CredentialLookup)."""
        key = (host, username, password, lookup.key if lookup is not None else None, tls_verify)
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = Authenticator(self.http, host, username, password, lookup=lookup,
                                                  tls_verify=tls_verify)
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

    def __init__(self, http, host, username=None, password=None, lookup=None, tls_verify=True):
        """Credentials are `username`/`password`, else what `lookup` (a credentials.CredentialLookup) finds when a
        registry first asks. `tls_verify=False` also skips verification of the token service."""
        self.http = http
        self.host = host
        if lookup is None:
            explicit = credentials.Credential(username, password, source='the caller') if username else None
            lookup = credentials.CredentialLookup(host, explicit=explicit) if explicit else None
        self.lookup = lookup
        self.tls_verify = tls_verify
        self.scheme = None            # None (anonymous so far), 'basic' or 'bearer'
        self.challenge = {}
        self.challenge_scheme = None  # 'https' or 'http': how the registry that challenged us was reached
        self._tokens = {}             # scope tuple -> _Token
        self._scope_locks = {}
        self._lock = threading.Lock()
        self._refresh_token = None    # the identity token, replaced when the token service rotates it
        self.token_fetches = 0

    @property
    def credential(self):
        """The credentials.Credential in use (helpers run on first use), or None for anonymous access."""
        return self.lookup.resolve() if self.lookup is not None else None

    @property
    def username(self):
        credential = self.credential
        return credential.username if credential is not None else None

    @property
    def password(self):
        credential = self.credential
        return credential.password if credential is not None else None

    @property
    def has_credentials(self):
        return self.credential is not None

    def describe_tried(self):
        """Where credentials were looked for (for 'requires credentials' errors), never what was found."""
        return self.lookup.describe_tried() if self.lookup is not None else 'no source'

    def needs_credentials(self, what='', detail=''):
        """The error for a registry that wants credentials we do not have: where we looked, and how to give some."""
        return AuthenticationError('registry %s requires credentials%s%s (tried: %s; %s)'
                                   % (self.host, what, detail, self.describe_tried(), CREDENTIALS_HINT), status=401)

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
                raise self.needs_credentials()
            if self.username is None:
                raise AuthenticationError('registry %s asks for a password but the credential from %s is an '
                                          'identity token' % (self.host, self.credential.source), status=401)
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
        credential = self.credential
        if credential is not None and credential.identity_token:
            return self._refresh_grant(realm, scopes, credential)
        params += [('scope', scope) for scope in scopes if scope]
        headers = {'Accept': 'application/json'}
        if credential is not None:
            headers['Authorization'] = self._basic_value()
        LOG.debug('fetching a token for %s (%s)', self.host, ' '.join(scopes) or 'no scope')
        response = self.http.request('GET', realm, headers=headers, params=params, limit=TOKEN_LIMIT,
                                     what='the token answer for registry %s' % self.host, tls_verify=self.tls_verify)
        self.token_fetches += 1
        if response.status_code in (401, 403):
            if credential is not None:
                raise AuthenticationError('token service of registry %s refused the credentials' % self.host,
                                          status=response.status_code)
            raise AuthenticationError('token service of registry %s refused anonymous access (tried: %s)'
                                      % (self.host, self.describe_tried()), status=response.status_code)
        return self._token_answer(response)

    def _refresh_grant(self, realm, scopes, credential):
        """A token by the OAuth2 refresh-token grant (the distribution token spec), for identity tokens."""
        with self._lock:
            refresh = self._refresh_token or credential.identity_token
        form = {'grant_type': 'refresh_token', 'refresh_token': refresh, 'client_id': OAUTH_CLIENT_ID}
        if self.challenge.get('service'):
            form['service'] = self.challenge['service']
        if any(scopes):
            form['scope'] = ' '.join(scope for scope in scopes if scope)
        body = urllib.parse.urlencode(form).encode()
        LOG.debug('fetching a token for %s with an identity token (%s)', self.host, ' '.join(scopes) or 'no scope')
        response = self.http.request('POST', realm, content=body, tls_verify=self.tls_verify, limit=TOKEN_LIMIT,
                                     what='the token answer for registry %s' % self.host,
                                     headers={'Accept': 'application/json',
                                              'Content-Type': 'application/x-www-form-urlencoded'})
        self.token_fetches += 1
        if response.status_code in (400, 401, 403):
            raise AuthenticationError('token service of registry %s refused the identity token from %s (%d)'
                                      % (self.host, credential.source, response.status_code),
                                      status=response.status_code)
        return self._token_answer(response, rotate=True)

    def _token_answer(self, response, rotate=False):
        if response.status_code != 200:
            raise AuthenticationError('token service of registry %s answered %d'
                                      % (self.host, response.status_code), status=response.status_code)
        try:
            body = response.json()
            value = body.get('token') or body.get('access_token')
            lifetime = int(body.get('expires_in') or DEFAULT_TOKEN_LIFETIME)
            rotated = body.get('refresh_token') if rotate else None
        except (ValueError, AttributeError, TypeError, RecursionError, OverflowError):
            value = None
        if not value or not isinstance(value, str):
            raise AuthenticationError('token service of registry %s answered without a token' % self.host)
        # The token goes into a header: printable ASCII without spaces, as a bearer token is.
        if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
            raise AuthenticationError('token service of registry %s answered a token that is not a bearer token'
                                      % self.host)
        if isinstance(rotated, str) and rotated:
            with self._lock:
                self._refresh_token = rotated
        lifetime = min(max(lifetime, DEFAULT_TOKEN_LIFETIME), MAX_TOKEN_LIFETIME)
        return _Token(value, time.monotonic() + lifetime - EXPIRY_MARGIN)
