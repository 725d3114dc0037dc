"""A real CNCF distribution registry (``docker-registry serve``) on a free loopback port, and how to probe one."""

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

from tools.testbed.auth import DEFAULT_USERS, TokenServer, write_htpasswd
from tools.testbed.ports import free_port
from tools.testbed.process import STARTUP_TIMEOUT, ServiceError, die_with_parent, stop_process
from tools.testbed.tls import client_context, client_context_with_cert, write_tls_material

REGISTRY_BINARY = shutil.which('docker-registry') or '/usr/bin/docker-registry'
# A fixed secret silences a warning; it only matters behind load balancers.
HTTP_SECRET = 'occystrap-test-bed'

_ACCESS_LOG = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/[\d.]+)" (?P<status>\d{3}) ')


@dataclasses.dataclass
class AccessLogEntry:
    """One request the registry served, as its access log records it."""
    method: str
    path: str
    protocol: str
    status: int


def registry_config(storage, addr, tls=None, log_level='info'):
    """The docker-registry configuration (a dict; YAML accepts it as JSON) for storage and a listen address.

    ``tls`` is None or a dict with ``cert`` and ``key`` paths. The access log is on; deletes are enabled and no
    blob descriptor cache is configured, so removing the storage directory under a running registry really
    empties it.
    """
    config = {
        'version': 0.1,
        'log': {'level': log_level, 'accesslog': {'disabled': False}},
        'storage': {'filesystem': {'rootdirectory': str(storage)}, 'delete': {'enabled': True},
                    'maintenance': {'uploadpurging': {'enabled': False}}},
        'http': {'addr': addr, 'secret': HTTP_SECRET},
    }
    if tls:
        config['http']['tls'] = {'certificate': str(tls['cert']), 'key': str(tls['key'])}
    return config


# Loopback services are never reached through a proxy the environment may name.
_NO_PROXY = urllib.request.ProxyHandler({})


def probe_registry(url, ca=None, timeout=2.0, client_cert=None):
    """True when ``GET {url}/v2/`` answers like a registry (200, or 401 asking for credentials).

    ``client_cert`` is a ``(cert, key)`` pair presented to a registry that demands mutual TLS.
    """
    context = client_context_with_cert(ca, *client_cert) if client_cert else client_context(ca)
    opener = urllib.request.build_opener(_NO_PROXY, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f'{url}/v2/', timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except (OSError, ValueError):
        return False


def _deep_merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


_live_registries = weakref.WeakValueDictionary()


def registry_for_host(host):
    """Return the running ``Registry`` of this process listening on ``host`` ("127.0.0.1:PORT"), or None."""
    return _live_registries.get(host)


class _PortTaken(Exception):
    pass


class Registry:
    """A real CNCF distribution registry (``docker-registry serve``) on a free 127.0.0.1 port.

    ``tls=True`` serves HTTPS with a CA generated under ``workdir`` (``ca_path``) so Go offers HTTP/2 through
    ALPN; ``tls`` may instead be the dict ``write_tls_material`` returned, so that several registries share one CA.
    ``auth`` is None, ``'basic'`` (htpasswd with ``users``) or ``'token'`` (a ``TokenServer`` with ``users`` and
    ``permissions``, available as ``token_server``). ``extra_config`` is deep-merged into the generated
    configuration. ``client_ca`` (with ``tls``) is the dict ``write_client_material`` returned: the registry then
    demands a client certificate signed by its ``ca`` (``http.tls.clientcas``), and ``cert_dir`` holds that client
    certificate for skopeo. Files are named after ``name`` in ``workdir`` (``NAME.log``, ``NAME.json``); storage is
    ``storage_dir`` (default ``workdir/storage``) and deletes are enabled. ``log_level`` is distribution's (the
    access log is always on); ``die_with_parent`` ends the registry with the thread that started it.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, workdir, tls=False, auth=None, users=None, permissions=None, extra_config=None,
                 name='registry', storage_dir=None, log_level='info', die_with_parent=False, client_ca=None):
        if auth not in (None, 'basic', 'token'):
            raise ValueError(f'unknown auth {auth!r}')
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = bool(tls)
        self.auth = auth
        self.users = dict(DEFAULT_USERS if users is None else users) if auth else {}
        self.permissions = permissions
        self.extra_config = extra_config or {}
        self.name = name
        self.storage_dir = Path(storage_dir) if storage_dir is not None else self.workdir / 'storage'
        self.config_path = self.workdir / f'{name}.json'
        self.log_path = self.workdir / f'{name}.log'
        self.log_level = log_level
        self.die_with_parent = die_with_parent
        self.port = None
        self.token_server = None
        if isinstance(tls, dict):
            self._tls_paths = {key: Path(value) for key, value in tls.items()}
        else:
            self._tls_paths = write_tls_material(self.workdir / 'tls') if tls else None
        self.client_ca = {key: Path(value) for key, value in client_ca.items()} if client_ca else None
        if self.client_ca is not None:
            if not self.tls:
                raise ValueError('client_ca needs tls')
            # skopeo's --cert-dir takes the CA and the client certificate from one directory.
            mtls_dir = self.workdir / f'{name}-skopeo-mtls'
            mtls_dir.mkdir(exist_ok=True)
            shutil.copyfile(self._tls_paths['ca'], mtls_dir / 'ca.crt')
            shutil.copyfile(self.client_ca['cert'], mtls_dir / 'client.cert')
            shutil.copyfile(self.client_ca['key'], mtls_dir / 'client.key')
            self._tls_paths = dict(self._tls_paths, cert_dir=mtls_dir)
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
        return client_context(self.ca_path) if self.tls else True

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
        import httpx
        kwargs.setdefault('base_url', self.url)
        kwargs.setdefault('verify', self.ssl_context())
        if self.auth == 'basic':
            kwargs.setdefault('auth', (self.username, self.password))
        return httpx.Client(**kwargs)

    # --- lifecycle

    def config(self):
        """The registry configuration as a dict (what ``start()`` writes to ``config_path``)."""
        config = registry_config(self.storage_dir, self.host, self._tls_paths if self.tls else None, self.log_level)
        if self.client_ca is not None:
            config['http']['tls']['clientcas'] = [str(self.client_ca['ca'])]
        if self.auth == 'basic':
            htpasswd = self.workdir / f'{self.name}.htpasswd'
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
            self.token_server = TokenServer(self.workdir / f'{self.name}-token', users=self.users,
                                            permissions=self.permissions).start()
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            with open(self.log_path, 'wb') as log:
                self._process = subprocess.Popen([REGISTRY_BINARY, 'serve', str(self.config_path)],
                                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 preexec_fn=die_with_parent if self.die_with_parent else None)
            try:
                self._wait_healthy()
            except _PortTaken:
                stop_process(self._process)
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
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                if 'address already in use' in self.log:
                    raise _PortTaken()
                raise ServiceError(f'docker-registry exited with {self._process.returncode}; log:\n{self.log}')
            client_cert = (self.client_ca['cert'], self.client_ca['key']) if self.client_ca else None
            if probe_registry(self.url, self.ca_path, client_cert=client_cert):
                return
            time.sleep(0.02)
        raise ServiceError(f'docker-registry did not answer GET /v2/ within {STARTUP_TIMEOUT}s; log:\n{self.log}')

    def stop(self):
        """Stop the registry (and its token server); storage is left in place for inspection."""
        stop_process(self._process)
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
