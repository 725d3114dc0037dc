"""Real services for tests: a CNCF distribution registry, a token server, a Podman API service and skopeo.

Everything here starts the real component on a free loopback port (or a Unix socket in a temporary directory)
and stops it again, so tests exercise occystrap against what users run, not against mocks.

Typical use, outside pytest::

    with Registry(tmpdir, tls=True, auth='basic') as registry:
        image = build_oci_layout(tmpdir / 'img', layers=[{'etc/hello': b'hi\\n'}])
        seed_image(registry, 'library/hello', 'v1', image.path)
        manifest = skopeo_inspect(f'docker://{registry.host}/library/hello:v1', raw=True)

Inside pytest use the fixtures in ``tests/conftest.py`` instead.
"""

import base64
import copy
import dataclasses
import datetime
import gzip
import hashlib
import http.server
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
import weakref
from pathlib import Path

import bcrypt
import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tools.loopback import LoopbackServer

REGISTRY_BINARY = '/usr/bin/docker-registry'
SKOPEO_BINARY = '/usr/bin/skopeo'
PODMAN_BINARY = '/usr/bin/podman'

STARTUP_TIMEOUT = 15.0
DEFAULT_USERS = {'testuser': 'testpassword'}


class ServiceError(RuntimeError):
    """A real component failed to start or a command against it failed; the message carries its output."""


def tree_digests(path):
    """{relative path: sha256 hex} of every file under path, hidden temporary files included."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, 'rb') as f:
                found[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return found


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _stop_process(process, timeout=5.0):
    """Terminate a child we started, escalating to SIGKILL, and reap it."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


# --- certificates -------------------------------------------------------------------------------------------------

def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _pem_cert(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(common_name, key, ca):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(hours=1))
               .not_valid_after(_now() + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(key, hashes.SHA256())


def write_tls_material(directory):
    """Create a CA and a server certificate for 127.0.0.1 and localhost under ``directory``.

    Returns a dict of paths: ``ca`` (CA certificate, PEM), ``cert`` and ``key`` (server certificate and key, PEM),
    and ``cert_dir`` (a directory holding only ``ca.crt``, the layout skopeo's ``--cert-dir`` expects).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _self_signed('occystrap test CA', ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')]))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(_now() - datetime.timedelta(hours=1))
                   .not_valid_after(_now() + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName([
                       x509.IPAddress(ipaddress.ip_address('127.0.0.1')), x509.DNSName('localhost')]),
                       critical=False)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    paths = {'ca': directory / 'ca.pem', 'cert': directory / 'server.pem', 'key': directory / 'server-key.pem',
             'cert_dir': directory / 'skopeo-certs'}
    paths['ca'].write_bytes(_pem_cert(ca_cert))
    paths['cert'].write_bytes(_pem_cert(server_cert))
    paths['key'].write_bytes(_pem_key(server_key))
    paths['cert_dir'].mkdir(exist_ok=True)
    shutil.copyfile(paths['ca'], paths['cert_dir'] / 'ca.crt')
    return paths


def write_htpasswd(path, users):
    """Write an htpasswd file with bcrypt entries (the only kind distribution accepts) for ``{user: password}``."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f'{user}:{hashed}\n')
    Path(path).write_text(''.join(lines))


# --- token server -------------------------------------------------------------------------------------------------

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
    too. Tokens are ES256 JWTs whose header carries the signing certificate in ``x5c``; the registry trusts that
    certificate through ``rootcertbundle`` (``cert_path``).

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
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _self_signed('occystrap test token signer', self._key, ca=False)
        self.cert_path = self.workdir / 'token-signer.pem'
        self.cert_path.write_bytes(_pem_cert(self._cert))
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
            if form.get('grant_type', [''])[0] != 'password':
                self._reply(400, {'error': 'unsupported_grant_type'})
                return
            ok, user = self._check(form.get('username', [''])[0], form.get('password', [''])[0])
            self._answer(ok, user, form.get('service', [''])[0], self._scopes(form.get('scope', [])))

    return Handler


# --- registry -----------------------------------------------------------------------------------------------------

_ACCESS_LOG = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/[\d.]+)" (?P<status>\d{3}) ')


@dataclasses.dataclass
class AccessLogEntry:
    """One request the registry served, as its access log records it."""
    method: str
    path: str
    protocol: str
    status: int


def _deep_merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


_live_registries = weakref.WeakValueDictionary()


def registry_for_host(host):
    """Return the running ``Registry`` listening on ``host`` ("127.0.0.1:PORT"), or None."""
    return _live_registries.get(host)


class Registry:
    """A real CNCF distribution registry (``docker-registry serve``) on a free 127.0.0.1 port.

    ``tls=True`` serves HTTPS with a generated CA (``ca_path``) so Go offers HTTP/2 through ALPN. ``auth`` is
    None, ``'basic'`` (htpasswd with ``users``) or ``'token'`` (a ``TokenServer`` with ``users`` and
    ``permissions``, available as ``token_server``). ``extra_config`` is deep-merged into the generated YAML.
    Storage lives under ``workdir`` (``storage_dir``) and deletes are enabled.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, workdir, tls=False, auth=None, users=None, permissions=None, extra_config=None):
        if auth not in (None, 'basic', 'token'):
            raise ValueError(f'unknown auth {auth!r}')
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.auth = auth
        self.users = dict(DEFAULT_USERS if users is None else users) if auth else {}
        self.permissions = permissions
        self.extra_config = extra_config or {}
        self.storage_dir = self.workdir / 'storage'
        self.config_path = self.workdir / 'config.yml'
        self.log_path = self.workdir / 'registry.log'
        self.port = None
        self.token_server = None
        self._tls_paths = write_tls_material(self.workdir / 'tls') if tls else None
        self._process = None

    # --- addresses and credentials

    @property
    def host(self):
        """``127.0.0.1:PORT``, as used in image references."""
        return f'127.0.0.1:{self.port}'

    @property
    def scheme(self):
        return 'https' if self.tls else 'http'

    @property
    def url(self):
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f'{self.scheme}://{self.host}'

    @property
    def ca_path(self):
        """PEM file of the CA that signed the server certificate (None without TLS)."""
        return self._tls_paths['ca'] if self.tls else None

    @property
    def cert_dir(self):
        """A directory holding ``ca.crt``, for skopeo's ``--cert-dir`` (None without TLS)."""
        return self._tls_paths['cert_dir'] if self.tls else None

    def ssl_context(self):
        """An ``ssl.SSLContext`` trusting ``ca_path`` (httpx ``verify=``); plain ``True`` without TLS."""
        return ssl.create_default_context(cafile=str(self.ca_path)) if self.tls else True

    @property
    def username(self):
        """The first configured user name (None without auth)."""
        return next(iter(self.users), None)

    @property
    def password(self):
        """That user's password (None without auth)."""
        return self.users.get(self.username) if self.users else None

    @property
    def credentials(self):
        """``user:password`` for skopeo's ``--creds``, or None without auth."""
        return f'{self.username}:{self.password}' if self.users else None

    @property
    def log(self):
        """Everything the registry has written to stdout and stderr so far."""
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def access_log(self):
        """Requests served so far, parsed from the registry's access log (``protocol`` shows HTTP/2.0 use)."""
        return [AccessLogEntry(m['method'], m['path'], m['protocol'], int(m['status']))
                for m in _ACCESS_LOG.finditer(self.log)]

    def client(self, **kwargs):
        """An ``httpx.Client`` aimed at this registry: base URL, CA and Basic credentials (for ``auth='basic'``)."""
        kwargs.setdefault('base_url', self.url)
        kwargs.setdefault('verify', self.ssl_context())
        if self.auth == 'basic':
            kwargs.setdefault('auth', (self.username, self.password))
        return httpx.Client(**kwargs)

    # --- lifecycle

    def config(self):
        """The registry configuration as a dict (what ``start()`` writes to ``config_path``)."""
        config = {
            'version': 0.1,
            'log': {'level': 'info', 'accesslog': {'disabled': False}},
            'storage': {'filesystem': {'rootdirectory': str(self.storage_dir)},
                        'delete': {'enabled': True},
                        'maintenance': {'uploadpurging': {'enabled': False}}},
            # A fixed secret silences a warning; it only matters behind load balancers.
            'http': {'addr': self.host, 'secret': 'occystrap-test-secret'},
        }
        if self.tls:
            config['http']['tls'] = {'certificate': str(self._tls_paths['cert']), 'key': str(self._tls_paths['key'])}
        if self.auth == 'basic':
            htpasswd = self.workdir / 'htpasswd'
            write_htpasswd(htpasswd, self.users)
            config['auth'] = {'htpasswd': {'realm': 'occystrap-test', 'path': str(htpasswd)}}
        elif self.auth == 'token':
            config['auth'] = {'token': {'realm': self.token_server.realm, 'service': self.token_server.service,
                                        'issuer': self.token_server.issuer,
                                        'rootcertbundle': str(self.token_server.cert_path)}}
        return _deep_merge(config, copy.deepcopy(self.extra_config))

    def start(self):
        """Start the registry and wait until ``GET /v2/`` answers; returns self. Raises ``ServiceError``."""
        if self.auth == 'token' and self.token_server is None:
            self.token_server = TokenServer(self.workdir / 'token', users=self.users,
                                            permissions=self.permissions).start()
        for _ in range(5):
            self.port = free_port()
            self.config_path.write_text(yaml.safe_dump(self.config()))
            with open(self.log_path, 'wb') as log:
                self._process = subprocess.Popen([REGISTRY_BINARY, 'serve', str(self.config_path)],
                                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                self._wait_healthy()
            except _PortTaken:
                _stop_process(self._process)
                continue
            except BaseException:
                self.stop()
                raise
            _live_registries[self.host] = self
            return self
        self.stop()
        raise ServiceError(f'docker-registry could not find a free port; log:\n{self.log}')

    def _wait_healthy(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(verify=self.ssl_context(), timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    if 'address already in use' in self.log:
                        raise _PortTaken()
                    raise ServiceError(f'docker-registry exited with {self._process.returncode}; log:\n{self.log}')
                try:
                    response = client.get(f'{self.url}/v2/')
                    if response.status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise ServiceError(f'docker-registry did not answer GET /v2/ within {STARTUP_TIMEOUT}s; log:\n{self.log}')

    def stop(self):
        """Stop the registry (and its token server); storage is left in place for inspection."""
        _stop_process(self._process)
        self._process = None
        if self.port is not None and _live_registries.get(self.host) is self:
            del _live_registries[self.host]
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None

    @property
    def running(self):
        return self._process is not None and self._process.poll() is None

    def __enter__(self):
        return self if self.running else self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f'<Registry {self.url} auth={self.auth}>'


class _PortTaken(Exception):
    pass


# --- podman -------------------------------------------------------------------------------------------------------

class Podman:
    """A real ``podman system service`` on a Unix socket, with storage isolated under ``workdir``.

    vfs storage, cgroupfs and file events make it work as root in a container without systemd. ``podman(*args)``
    runs the CLI against the same storage, so a test can check what the API loaded.
    """

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Podman refuses a runroot longer than 50 characters and sockets are limited to 108, and pytest's
        # temporary paths can be longer than either: keep run state and the socket in a short directory.
        self.run_dir = Path(tempfile.mkdtemp(prefix='podman-', dir='/tmp'))
        self.socket_path = self.run_dir / 'api.sock'
        self.log_path = self.workdir / 'podman.log'
        self._process = None

    @property
    def url(self):
        """``unix://`` URI of the API socket."""
        return f'unix://{self.socket_path}'

    @property
    def log(self):
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def _global_args(self):
        return ['--root', str(self.workdir / 'root'), '--runroot', str(self.run_dir / 'runroot'),
                '--tmpdir', str(self.run_dir / 'libpod'), '--storage-driver', 'vfs',
                '--cgroup-manager', 'cgroupfs', '--events-backend', 'file',
                '--network-config-dir', str(self.workdir / 'networks')]

    def _env(self):
        # Image pulls and loads stage their data under TMPDIR; keep it inside the work directory.
        tmp = self.workdir / 'tmp'
        tmp.mkdir(exist_ok=True)
        return dict(os.environ, TMPDIR=str(tmp))

    def client(self, **kwargs):
        """An ``httpx.Client`` talking to the API socket (base URL ``http://podman``)."""
        kwargs.setdefault('base_url', 'http://podman')
        kwargs.setdefault('timeout', 60.0)
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)), **kwargs)

    def start(self):
        """Start the service and wait until ``GET /_ping`` answers ``OK``; returns self. Raises ``ServiceError``."""
        self.run_dir.mkdir(exist_ok=True)
        with open(self.log_path, 'wb') as log:
            self._process = subprocess.Popen(
                [PODMAN_BINARY, *self._global_args(), 'system', 'service', '--time=0', self.url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env())
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self.client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    message = f'podman system service exited with {self._process.returncode}; log:\n{self.log}'
                    self.stop()
                    raise ServiceError(message)
                try:
                    if self.socket_path.exists() and client.get('/_ping').text == 'OK':
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise ServiceError(f'podman system service did not answer /_ping within {STARTUP_TIMEOUT}s; log:\n{self.log}')

    def podman(self, *args, check=True):
        """Run ``podman ARGS`` against this service's storage; returns CompletedProcess (text). Raises on failure."""
        result = subprocess.run([PODMAN_BINARY, *self._global_args(), *args], capture_output=True, text=True,
                                env=self._env(), stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise ServiceError(f'podman {" ".join(args)} failed ({result.returncode}):\n{result.stderr}')
        return result

    def images(self):
        """``podman images`` as parsed JSON (a list of dicts with ``Id``, ``Names``, ``Digest``, ...)."""
        return json.loads(self.podman('images', '--format', 'json').stdout or '[]')

    def stop(self):
        """Stop the service and remove its run state (images stay under ``workdir``)."""
        _stop_process(self._process, timeout=10.0)
        self._process = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- skopeo -------------------------------------------------------------------------------------------------------

AUTO = object()


def _transport_flags(ref, prefix, creds):
    """Flags skopeo needs to reach a registry of ours named in ``ref`` (``docker://127.0.0.1:PORT/...``)."""
    if not ref.startswith('docker://'):
        return []
    registry = registry_for_host(ref[len('docker://'):].split('/', 1)[0])
    flags = []
    if registry is not None:
        if registry.tls:
            flags.append(f'--{prefix}cert-dir={registry.cert_dir}')
        else:
            flags.append(f'--{prefix}tls-verify=false')
    if creds is AUTO:
        creds = registry.credentials if registry is not None else None
    # Without credentials say so, so skopeo never falls back to credentials stored for this user.
    flags.append(f'--{prefix}creds={creds}' if creds else f'--{prefix}no-creds')
    return flags


def skopeo(*args, check=True):
    """Run ``skopeo ARGS`` (with an accept-anything policy); returns CompletedProcess. Raises with its stderr."""
    env = dict(os.environ)
    # Keep skopeo from picking up credentials a developer has stored for real registries.
    env.pop('REGISTRY_AUTH_FILE', None)
    result = subprocess.run([SKOPEO_BINARY, '--insecure-policy', *args], capture_output=True, env=env,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise ServiceError(f'skopeo {" ".join(args)} failed ({result.returncode}):\n'
                           f'{result.stderr.decode(errors="replace")}')
    return result


def skopeo_copy(src, dst, *extra, src_creds=AUTO, dest_creds=AUTO):
    """``skopeo copy SRC DST EXTRA...``; registries started here get their TLS and credential flags added.

    ``src_creds``/``dest_creds``: AUTO uses the registry's own credentials, None forces anonymous access, and a
    ``'user:password'`` string overrides. Returns the CompletedProcess; raises ``ServiceError`` on failure.
    """
    flags = _transport_flags(src, 'src-', src_creds) + _transport_flags(dst, 'dest-', dest_creds)
    return skopeo('copy', *flags, *extra, src, dst)


def skopeo_inspect(ref, raw=False, config=False, creds=AUTO, parse=True):
    """``skopeo inspect [--raw] [--config] REF``: parsed JSON, or the exact bytes when ``parse=False``.

    With ``raw`` the answer is the manifest as stored (so its sha256 is the manifest digest); with ``config`` the
    image configuration. ``creds`` works as in ``skopeo_copy``.
    """
    args = ['inspect', *_transport_flags(ref, '', creds)]
    if raw:
        args.append('--raw')
    if config:
        args.append('--config')
    output = skopeo(*args, ref).stdout
    return json.loads(output) if parse else output


def seed_image(registry, name, tag, oci_layout_dir, *extra):
    """Push the image in an OCI layout directory to ``registry`` as ``name:tag`` with skopeo.

    The layout must hold exactly one manifest (as ``build_oci_layout`` writes). ``extra`` goes to skopeo copy
    (e.g. ``'--format', 'v2s2'``). Returns the pushed manifest's digest (``sha256:...``).
    """
    digest_file = Path(oci_layout_dir).parent / f'.{Path(oci_layout_dir).name}.{secrets.token_hex(4)}.digest'
    try:
        skopeo_copy(f'oci:{oci_layout_dir}', f'docker://{registry.host}/{name}:{tag}',
                    '--digestfile', str(digest_file), *extra)
        return digest_file.read_text().strip()
    finally:
        digest_file.unlink(missing_ok=True)


# --- OCI image layouts --------------------------------------------------------------------------------------------

MEDIA_TYPES = {
    'gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
    'zstd': 'application/vnd.oci.image.layer.v1.tar+zstd',
    None: 'application/vnd.oci.image.layer.v1.tar',
}
FIXED_MTIME = 1_600_000_000


@dataclasses.dataclass
class OciImage:
    """What ``build_oci_layout`` wrote: digests are ``sha256:...`` strings, ``layer_digests`` bottom first."""
    path: Path
    manifest_digest: str
    config_digest: str
    layer_digests: list
    diff_ids: list
    manifest: dict
    config: dict


def _sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def layer_tar(files):
    """A deterministic uncompressed tar from ``{path: content}``.

    ``content`` is bytes for a regular file (0644) or a dict: ``{'type': 'file', 'data': b'', 'mode': 0o755}``,
    ``{'type': 'dir'}``, ``{'type': 'symlink', 'target': '...'}``, ``{'type': 'hardlink', 'target': '...'}``.
    Paths are stored exactly as given (so tests can write ``../escape`` or whiteouts like ``dir/.wh.name``).
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for path, content in files.items():
            spec = {'type': 'file', 'data': content} if isinstance(content, bytes) else dict(content)
            info = tarfile.TarInfo(path)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            data = None
            if spec['type'] == 'file':
                data = spec.get('data', b'')
                info.size = len(data)
                info.mode = spec.get('mode', 0o644)
            elif spec['type'] == 'dir':
                info.type = tarfile.DIRTYPE
                info.mode = spec.get('mode', 0o755)
            elif spec['type'] in ('symlink', 'hardlink'):
                info.type = tarfile.SYMTYPE if spec['type'] == 'symlink' else tarfile.LNKTYPE
                info.linkname = spec['target']
                info.mode = spec.get('mode', 0o777 if spec['type'] == 'symlink' else 0o644)
            else:
                raise ValueError(f'unknown entry type {spec["type"]!r} for {path}')
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _compress(data, compression):
    if compression == 'gzip':
        # mtime=0 and no file name keep the gzip header, and so the digest, identical from run to run.
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == 'zstd':
        import zstandard
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression is None:
        return data
    raise ValueError(f'unknown compression {compression!r}')


def build_oci_layout(path, layers, config_extra=None, compression='gzip', tag='latest', architecture='amd64',
                     os_name='linux'):
    """Write a deterministic single-image OCI image layout at ``path``; returns an ``OciImage``.

    ``layers`` is a list (bottom first) of ``{path: content}`` dicts as ``layer_tar`` takes. ``config_extra`` is
    merged into the top level of the image configuration (e.g. ``{'config': {'Env': ['A=1']}}``). ``compression``
    is ``'gzip'``, ``'zstd'`` or None. The result suits ``skopeo copy oci:PATH:TAG docker://...``; the same inputs
    always give the same digests.
    """
    path = Path(path)
    blobs = path / 'blobs' / 'sha256'
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data):
        digest = _sha256(data)
        (blobs / digest.split(':', 1)[1]).write_bytes(data)
        return digest

    layer_descriptors, diff_ids = [], []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append(_sha256(tar))
        blob = _compress(tar, compression)
        layer_descriptors.append({'mediaType': MEDIA_TYPES[compression], 'digest': put(blob), 'size': len(blob)})
    config = {
        'created': '2020-09-13T12:26:40Z',
        'architecture': architecture,
        'os': os_name,
        'config': {'Env': ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']},
        'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
        'history': [{'created': '2020-09-13T12:26:40Z', 'created_by': f'occystrap test layer {i}'}
                    for i in range(len(layers))],
    }
    config.update(copy.deepcopy(config_extra or {}))
    config_bytes = json.dumps(config, sort_keys=True, separators=(',', ':')).encode()
    manifest = {
        'schemaVersion': 2,
        'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': put(config_bytes),
                   'size': len(config_bytes)},
        'layers': layer_descriptors,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(',', ':')).encode()
    manifest_digest = put(manifest_bytes)
    index = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
             'manifests': [{'mediaType': manifest['mediaType'], 'digest': manifest_digest,
                            'size': len(manifest_bytes),
                            'annotations': {'org.opencontainers.image.ref.name': tag}}]}
    (path / 'oci-layout').write_text(json.dumps({'imageLayoutVersion': '1.0.0'}))
    (path / 'index.json').write_text(json.dumps(index, sort_keys=True))
    return OciImage(path, manifest_digest, manifest['config']['digest'],
                    [d['digest'] for d in layer_descriptors], diff_ids, manifest, config)
