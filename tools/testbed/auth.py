"""Registry authentication services: htpasswd files for Basic auth and a Docker token server that counts requests."""

import base64
import dataclasses
import datetime
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tools.loopback import LoopbackServer
from tools.testbed.tls import pem_cert, self_signed

DEFAULT_USERS = {'testuser': 'testpassword'}


def write_htpasswd(path, users):
    """Write an htpasswd file with bcrypt entries (the only kind distribution accepts) for ``{user: password}``."""
    import bcrypt
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f'{user}:{hashed}\n')
    Path(path).write_text(''.join(lines))


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


@dataclasses.dataclass
class TokenRequest:
    """One request the token server answered: who asked, for which scopes, and what was granted."""
    method: str
    user: object
    service: str
    scopes: list
    granted: list
    status: int


class TokenServer:
    """A Docker registry token server (the ``auth.token`` flow) on a loopback port.

    ``GET /token?service=S&scope=repository:NAME:pull,push`` with optional Basic credentials answers
    ``{token, access_token, expires_in, issued_at}``; an OAuth2 ``POST /token`` with ``grant_type=password`` works
    too, and ``grant_type=refresh_token`` with a token from ``issue_refresh_token(user)`` (an identity token, as
    ``docker login`` stores for such registries; ``refresh_requests`` records what those POSTs carried). Tokens are
    ES256 JWTs whose header carries the signing certificate in ``x5c``; the registry trusts that certificate through
    ``rootcertbundle`` (``cert_path``).

    ``users`` maps user names to passwords; wrong credentials get 401. ``permissions`` decides what is granted:
    either a dict mapping a user name (``None`` for anonymous) to the actions it may have on every repository
    (``'*'`` grants everything), or a callable ``(user, type, name, actions) -> granted actions``. The default gives
    authenticated users everything they ask for and anonymous users nothing.

    Every answered request is appended to ``requests`` (see ``request_count`` and ``reset()``), so tests can assert
    that a client caches its tokens.
    """

    def __init__(self, workdir, users=None, permissions=None, service='occystrap-test-registry',
                 issuer='occystrap-test-issuer', expires_in=300):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.permissions = permissions
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.requests = []
        self.refresh_requests = []        # the forms of refresh_token POSTs, refresh_token itself left out
        self._refresh_tokens = {}         # refresh token -> user
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = self_signed('occystrap test token signer', self._key, ca=False)
        self.cert_path = self.workdir / 'token-signer.pem'
        self.cert_path.write_bytes(pem_cert(self._cert))
        self._server = None
        self._thread = None

    @property
    def realm(self):
        """The token endpoint URL that the registry advertises in its ``WWW-Authenticate`` challenge."""
        return f'http://127.0.0.1:{self._server.server_address[1]}/token'

    @property
    def request_count(self):
        """How many token requests have been answered (successfully or not) since start or ``reset()``."""
        with self._lock:
            return len(self.requests)

    def reset(self):
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()

    def start(self):
        """Listen on a free loopback port in a background thread; returns self."""
        handler = _token_handler(self)
        self._server = LoopbackServer(('127.0.0.1', 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name='token-server', daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def issue_refresh_token(self, user):
        """A new OAuth2 refresh token (an identity token) for ``user``."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = user
        return token

    def allowed_actions(self, user, resource_type, name, actions):
        """Return the subset of ``actions`` that ``user`` (``None`` when anonymous) gets on the resource."""
        if callable(self.permissions):
            return [a for a in self.permissions(user, resource_type, name, list(actions)) if a in actions]
        if self.permissions is None:
            allowed = ['*'] if user is not None else []
        else:
            allowed = self.permissions.get(user, [])
        if '*' in allowed:
            return list(actions)
        return [a for a in actions if a in allowed]

    def issue(self, user, scopes):
        """Sign a token for ``user`` granting what ``allowed_actions`` permits of ``scopes``; returns (jwt, access)."""
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            resource_type, name, actions = parsed
            granted = self.allowed_actions(user, resource_type, name, actions)
            access.append({'type': resource_type, 'name': name, 'actions': granted})
        now = int(time.time())
        header = {'typ': 'JWT', 'alg': 'ES256',
                  'x5c': [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {'iss': self.issuer, 'sub': user or '', 'aud': self.service, 'exp': now + self.expires_in,
                  'nbf': now - 10, 'iat': now, 'jti': secrets.token_hex(16), 'access': access}
        signing_input = (_b64url(json.dumps(header, separators=(',', ':')).encode()) + '.'
                         + _b64url(json.dumps(claims, separators=(',', ':')).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS wants the raw 64-byte r||s form, not the DER that cryptography produces.
        signature = r.to_bytes(32, 'big') + s.to_bytes(32, 'big')
        return f'{signing_input}.{_b64url(signature)}', access


def parse_scope(scope):
    """Split ``type:name:actions`` (the name may itself contain ``:``, e.g. a registry port) into its parts."""
    if scope.count(':') < 2:
        return None
    resource_type, rest = scope.split(':', 1)
    name, actions = rest.rsplit(':', 1)
    return resource_type, name, [a for a in actions.split(',') if a]


def _token_handler(server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, fmt, *args):
            pass

        def _reply(self, status, body, extra_headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            for key, value in extra_headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _record(self, user, service, scopes, granted, status):
            with server._lock:
                server.requests.append(TokenRequest(self.command, user, service, scopes, granted, status))

        def _basic_user(self):
            """Return (ok, user): user is None for anonymous; ok is False for bad credentials."""
            header = self.headers.get('Authorization')
            if not header:
                return True, None
            kind, _, value = header.partition(' ')
            if kind.lower() != 'basic':
                return False, None
            try:
                user, _, password = base64.b64decode(value).decode().partition(':')
            except ValueError:
                return False, None
            return self._check(user, password)

        def _check(self, user, password):
            if user in server.users and secrets.compare_digest(server.users[user], password):
                return True, user
            return False, None

        def _answer(self, ok, user, service, scopes):
            if not ok:
                self._record(user, service, scopes, [], 401)
                self._reply(401, {'errors': [{'code': 'UNAUTHORIZED', 'message': 'bad credentials'}]},
                            [('WWW-Authenticate', 'Basic realm="token"')])
                return
            if service != server.service:
                self._record(user, service, scopes, [], 400)
                self._reply(400, {'errors': [{'code': 'INVALID', 'message': f'unknown service {service!r}'}]})
                return
            token, access = server.issue(user, scopes)
            self._record(user, service, scopes, access, 200)
            issued = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
            self._reply(200, {'token': token, 'access_token': token, 'expires_in': server.expires_in,
                              'issued_at': issued})

        def _scopes(self, values):
            scopes = []
            for value in values:
                scopes.extend(value.split(' '))
            return [s for s in scopes if s]

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path != '/token':
                self._reply(404, {'errors': [{'code': 'NOT_FOUND'}]})
                return
            query = urllib.parse.parse_qs(url.query)
            ok, user = self._basic_user()
            self._answer(ok, user, query.get('service', [''])[0], self._scopes(query.get('scope', [])))

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get('Content-Length') or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if url.path != '/token':
                self._reply(404, {'errors': [{'code': 'NOT_FOUND'}]})
                return
            grant = form.get('grant_type', [''])[0]
            if grant == 'refresh_token':
                with server._lock:
                    user = server._refresh_tokens.get(form.get('refresh_token', [''])[0])
                    server.refresh_requests.append({k: v for k, v in form.items() if k != 'refresh_token'})
                self._answer(user is not None, user, form.get('service', [''])[0],
                             self._scopes(form.get('scope', [])))
                return
            if grant != 'password':
                self._reply(400, {'error': 'unsupported_grant_type'})
                return
            ok, user = self._check(form.get('username', [''])[0], form.get('password', [''])[0])
            self._answer(ok, user, form.get('service', [''])[0], self._scopes(form.get('scope', [])))

    return Handler
