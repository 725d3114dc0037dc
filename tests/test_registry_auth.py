"""Registry authentication: challenges, credentials sources, Basic and token auth against real registries."""

import base64
import http.server
import json
import os
import threading

import pytest

from occystrap.inputs.registry import RegistryInput
from occystrap.pipeline import RunContext
from occystrap.registry import auth
from occystrap.registry.auth import AuthenticationError, docker_config_credentials, find_credentials
from occystrap.registry.client import RegistryClient
from occystrap.registry.http import HttpClient
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.services import seed_image
from tests.helpers import sha256


def test_parse_bearer_challenge_with_commas_in_quotes():
    scheme, params = auth.parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"')
    assert scheme == 'bearer'
    assert params == {'realm': 'https://auth.example/token', 'service': 'registry.example',
                      'scope': 'repository:a/b:pull,push', 'error': 'insufficient_scope'}
    assert auth.parse_www_authenticate('Basic realm="Registry Realm"') == ('basic', {'realm': 'Registry Realm'})
    assert auth.parse_www_authenticate(None) == (None, {})


def write_docker_config(directory, auths):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'config.json').write_text(json.dumps({'auths': auths}))
    return directory


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_docker_config_matches_the_spellings_docker_uses(tmp_path, monkeypatch):
    monkeypatch.setenv('DOCKER_CONFIG', str(write_docker_config(tmp_path / 'docker', {
        'https://one.example:5000/v1/': {'auth': b64('alice:secret:with:colons')},
        'two.example': {'username': 'bob', 'password': 'pw'},
        'https://index.docker.io/v1/': {'auth': b64('hubuser:hubpw')},
        'three.example/v2/': {'auth': '!!not base64!!'},
    })))
    assert docker_config_credentials('one.example:5000') == ('alice', 'secret:with:colons')
    assert docker_config_credentials('two.example') == ('bob', 'pw')
    assert docker_config_credentials('registry-1.docker.io') == ('hubuser', 'hubpw')
    assert docker_config_credentials('three.example') == (None, None)
    assert docker_config_credentials('one.example') == (None, None)


def test_credentials_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv('DOCKER_CONFIG', str(write_docker_config(tmp_path / 'docker', {
        'reg.example': {'auth': b64('fromconfig:pw3')}})))
    settings = Settings(username='fromflags', password='pw2')
    assert find_credentials('reg.example', 'fromuri', 'pw1', settings) == ('fromuri', 'pw1')
    assert find_credentials('reg.example', None, None, settings) == ('fromflags', 'pw2')
    assert find_credentials('reg.example', None, None, Settings()) == ('fromconfig', 'pw3')
    assert find_credentials('other.example', None, None, Settings()) == (None, None)
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path / 'missing'))
    assert find_credentials('reg.example', None, None, Settings()) == (None, None)


def _open(settings, uri):
    ctx = RunContext(settings)
    try:
        source = RegistryInput(parse_uri(uri, 'input'), ctx)
        image = source.open(source.references()[0])
        with image.layers[0].open() as reader:
            while reader.read(1 << 16):
                pass
        return image, ctx.http
    finally:
        ctx.close()


@pytest.mark.integration
def test_basic_auth_from_uri_flags_and_docker_config(basic_auth_registry, repo_name, oci_image, tmp_path,
                                                     monkeypatch):
    reg = basic_auth_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path / 'no-docker-config'))
    tls = Settings(ca_cert=str(reg.ca_path), http2=True)
    image, http = _open(tls, 'registry://%s:%s@%s/%s:v1' % (reg.username, reg.password, reg.host, repo_name))
    assert image.manifest_digest == oci_image.manifest_digest
    assert http.http_version(reg.host) == 'HTTP/2'
    flags = Settings(ca_cert=str(reg.ca_path), username=reg.username, password=reg.password)
    assert _open(flags, 'registry://%s/%s:v1' % (reg.host, repo_name))[0].config_digest == oci_image.config_digest
    monkeypatch.setenv('DOCKER_CONFIG', str(write_docker_config(tmp_path / 'docker', {
        'https://%s' % reg.host: {'auth': b64('%s:%s' % (reg.username, reg.password))}})))
    assert _open(tls, 'registry://%s/%s:v1' % (reg.host, repo_name))[0].manifest_digest == oci_image.manifest_digest


@pytest.mark.integration
def test_basic_auth_failures_are_named_and_hide_the_password(basic_auth_registry, repo_name, oci_image, tmp_path,
                                                             monkeypatch):
    reg = basic_auth_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path / 'no-docker-config'))
    settings = Settings(ca_cert=str(reg.ca_path))
    with pytest.raises(AuthenticationError) as raised:
        _open(settings, 'registry://%s/%s:v1' % (reg.host, repo_name))
    # The message names where credentials were looked for (issue 13), never what they hold.
    assert str(raised.value).startswith('registry %s requires credentials (tried: ' % reg.host)
    assert str(tmp_path / 'no-docker-config' / 'config.json') + ' (absent)' in str(raised.value)
    wrong = 'Sup3rSecretWrong'
    with pytest.raises(AuthenticationError) as raised:
        _open(settings, 'registry://%s:%s@%s/%s:v1' % (reg.username, wrong, reg.host, repo_name))
    assert 'refused the credentials' in str(raised.value) and wrong not in str(raised.value)


@pytest.mark.integration
def test_token_auth_fetches_one_token_per_scope(token_registry, repo_name, oci_image, tmp_path, monkeypatch):
    reg = token_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    reg.token_server.reset()
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path / 'no-docker-config'))
    settings = Settings(insecure=True, username=reg.username, password=reg.password)
    image, http = _open(settings, 'registry://%s/%s:v1' % (reg.host, repo_name))
    assert image.manifest_digest == oci_image.manifest_digest
    # Manifest, config and layer requests all share the one pull token.
    requests = reg.token_server.requests
    assert len(requests) == 1
    assert requests[0].user == reg.username and requests[0].scopes == ['repository:%s:pull' % repo_name]


@pytest.mark.integration
def test_concurrent_requests_share_one_token_fetch(token_registry, repo_name, oci_image):
    reg = token_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    reg.token_server.reset()
    http = HttpClient(Settings(insecure=True))
    client = RegistryClient(http, reg.host, insecure=True, username=reg.username, password=reg.password)
    results = []
    threads = [threading.Thread(target=lambda d=d: results.append(client.blob_exists(repo_name, d)))
               for d in oci_image.layer_digests * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(d['size'] for d in oci_image.manifest['layers'] * 4)
    assert reg.token_server.request_count == 1
    http.close()


@pytest.mark.integration
def test_refused_token_is_fetched_again(token_registry, repo_name, oci_image):
    reg = token_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    http = HttpClient(Settings(insecure=True))
    client = RegistryClient(http, reg.host, insecure=True, username=reg.username, password=reg.password)
    assert client.get_manifest(repo_name, 'v1')[2] == oci_image.manifest_digest
    reg.token_server.reset()
    scopes = ('repository:%s:pull' % repo_name,)
    client.auth._tokens[scopes].value = 'revoked.token.value'
    assert client.get_manifest(repo_name, 'v1')[2] == oci_image.manifest_digest
    assert reg.token_server.request_count == 1
    http.close()


@pytest.mark.integration
def test_push_and_mount_ask_for_the_right_scopes(token_registry, repo_name):
    reg = token_registry
    http = HttpClient(Settings(insecure=True))
    client = RegistryClient(http, reg.host, insecure=True, username=reg.username, password=reg.password)
    blob = os.urandom(1000)
    client.upload_blob(repo_name, sha256(blob), blob)
    assert client.mount_blob(repo_name + '-b', sha256(blob), repo_name) is True
    scopes = [r.scopes for r in reg.token_server.requests]
    assert ['repository:%s:pull,push' % repo_name] in scopes
    assert ['repository:%s-b:pull,push' % repo_name, 'repository:%s:pull' % repo_name] in scopes
    http.close()


@pytest.mark.integration
def test_token_auth_refusals(token_registry, repo_name, oci_image, tmp_path, monkeypatch):
    reg = token_registry
    seed_image(reg, repo_name, 'v1', oci_image.path)
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path / 'no-docker-config'))
    uri = 'registry://%s/%s:v1' % (reg.host, repo_name)
    with pytest.raises(AuthenticationError) as raised:
        _open(Settings(insecure=True), uri)
    assert str(raised.value).startswith('registry %s requires credentials for %s:v1' % (reg.host, repo_name))
    with pytest.raises(AuthenticationError) as raised:
        _open(Settings(insecure=True, username=reg.username, password='NotThePassword'), uri)
    assert str(raised.value) == 'token service of registry %s refused the credentials' % reg.host
    assert 'NotThePassword' not in str(raised.value)


class _RedirectingRegistry:
    """A registry stand-in that demands Basic auth and redirects blob GETs to a storage server on another host."""

    def __init__(self, blob):
        self.blob = blob
        self.front_headers = []
        self.storage_headers = []
        outer = self

        class Storage(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.storage_headers.append(dict(self.headers))
                self.send_response(200)
                self.send_header('Content-Length', str(len(outer.blob)))
                self.end_headers()
                self.wfile.write(outer.blob)

        class Front(Storage):
            def do_GET(self):
                outer.front_headers.append(dict(self.headers))
                if not self.headers.get('Authorization'):
                    self.send_response(401)
                    self.send_header('WWW-Authenticate', 'Basic realm="test"')
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                self.send_response(307)
                # 'localhost' is another host than '127.0.0.1' as far as credentials are concerned.
                self.send_header('Location', 'http://localhost:%d/storage/blob?sig=abc' % outer.storage_port)
                self.send_header('Content-Length', '0')
                self.end_headers()

        self.servers = [http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler) for handler in (Front, Storage)]
        self.host = '127.0.0.1:%d' % self.servers[0].server_address[1]
        self.storage_port = self.servers[1].server_address[1]

    def __enter__(self):
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        for server in self.servers:
            server.shutdown()
            server.server_close()


def test_redirect_to_another_host_drops_authorization():
    blob = os.urandom(4096)
    with _RedirectingRegistry(blob) as reg:
        http = HttpClient(Settings(insecure=True))
        client = RegistryClient(http, reg.host, insecure=True, username='user', password='pw')
        with client.open_blob('x/y', sha256(blob), len(blob)) as reader:
            assert reader.read() == blob
        assert reg.front_headers[-1]['Authorization'].startswith('Basic ')
        assert len(reg.storage_headers) == 1 and 'Authorization' not in reg.storage_headers[0]
        assert client.get_blob_bytes('x/y', sha256(blob)) == blob
        assert all('Authorization' not in h for h in reg.storage_headers)
        http.close()
