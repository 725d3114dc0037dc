"""The test fixtures start real components that behave as the rest of the suite relies on."""

import hashlib
import json
import ssl

import httpx
import pytest

from tests.services import (Registry, ServiceError, build_oci_layout, seed_image, skopeo_copy, skopeo_inspect)

pytestmark = pytest.mark.integration

OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'


def _challenge(header):
    """Parse ``Bearer realm="...",service="...",scope="..."`` into (scheme, {key: value})."""
    scheme, _, rest = header.partition(' ')
    params = {}
    for part in rest.split('",'):
        key, _, value = part.partition('=')
        params[key.strip()] = value.strip().strip('"')
    return scheme, params


def test_oci_layout_is_deterministic_and_readable_by_skopeo(tmp_path):
    layers = [{'a.txt': b'a\n'}, {'dir': {'type': 'dir'}, 'dir/b': b'b' * 1000}]
    first = build_oci_layout(tmp_path / 'one', layers, config_extra={'config': {'Env': ['X=1']}})
    second = build_oci_layout(tmp_path / 'two', layers, config_extra={'config': {'Env': ['X=1']}})
    assert first.manifest_digest == second.manifest_digest
    assert first.layer_digests == second.layer_digests
    for digest in [first.manifest_digest, first.config_digest, *first.layer_digests]:
        blob = (first.path / 'blobs' / 'sha256' / digest.split(':')[1]).read_bytes()
        assert 'sha256:' + hashlib.sha256(blob).hexdigest() == digest

    config = skopeo_inspect(f'oci:{first.path}:latest', config=True)
    assert config['rootfs']['diff_ids'] == first.diff_ids
    assert config['config']['Env'] == ['X=1']
    raw = skopeo_inspect(f'oci:{first.path}:latest', raw=True, parse=False)
    assert 'sha256:' + hashlib.sha256(raw).hexdigest() == first.manifest_digest


def test_zstd_and_uncompressed_layouts(tmp_path):
    zstd = build_oci_layout(tmp_path / 'zstd', [{'f': b'x'}], compression='zstd')
    plain = build_oci_layout(tmp_path / 'plain', [{'f': b'x'}], compression=None)
    assert zstd.manifest['layers'][0]['mediaType'].endswith('tar+zstd')
    assert plain.manifest['layers'][0]['mediaType'].endswith('.tar')
    assert zstd.diff_ids == plain.diff_ids
    assert plain.layer_digests == plain.diff_ids


def test_plain_registry_serves_seeded_image(registry, repo_name, oci_image):
    digest = seed_image(registry, repo_name, 'v1', oci_image.path)
    assert digest == oci_image.manifest_digest
    assert registry.url == f'http://{registry.host}'

    with registry.client() as client:
        response = client.get(f'/v2/{repo_name}/manifests/v1', headers={'Accept': OCI_MANIFEST})
        assert response.status_code == 200
        assert response.headers['Docker-Content-Digest'] == oci_image.manifest_digest
        assert json.loads(response.content)['layers'] == oci_image.manifest['layers']
        blob = client.get(f'/v2/{repo_name}/blobs/{oci_image.layer_digests[0]}')
        assert 'sha256:' + hashlib.sha256(blob.content).hexdigest() == oci_image.layer_digests[0]
        # Deletes are enabled so tests can remove what they pushed.
        assert client.delete(f'/v2/{repo_name}/manifests/{digest}').status_code == 202
        assert client.get(f'/v2/{repo_name}/manifests/{digest}').status_code == 404

    assert any(entry.path == f'/v2/{repo_name}/manifests/v1' for entry in registry.access_log())
    assert (registry.storage_dir / 'docker' / 'registry' / 'v2' / 'repositories' / repo_name).is_dir()


def test_fresh_registry_starts_empty_and_stops(tmp_path_factory, oci_image):
    reg = Registry(tmp_path_factory.mktemp('short-lived')).start()
    try:
        assert httpx.get(f'{reg.url}/v2/_catalog').json() == {'repositories': []}
        seed_image(reg, 'one/image', 'latest', oci_image.path)
        assert httpx.get(f'{reg.url}/v2/_catalog').json() == {'repositories': ['one/image']}
    finally:
        reg.stop()
    assert not reg.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f'{reg.url}/v2/', timeout=2)


def test_fresh_registry_fixture_is_empty(fresh_registry):
    assert httpx.get(f'{fresh_registry.url}/v2/_catalog').json() == {'repositories': []}


def test_registry_failure_reports_its_log(tmp_path):
    # Two storage drivers is a configuration error distribution refuses at start-up.
    reg = Registry(tmp_path, extra_config={'storage': {'inmemory': {}}})
    with pytest.raises(ServiceError, match='storage'):
        reg.start()
    assert not reg.running


def test_tls_registry_negotiates_http2(tls_registry, repo_name, oci_image):
    assert tls_registry.url.startswith('https://127.0.0.1:')
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=tls_registry.ca_path)) as client:
        response = client.get(f'{tls_registry.url}/v2/{repo_name}/manifests/v1', headers={'Accept': OCI_MANIFEST})
        assert response.http_version == 'HTTP/2'
        assert response.headers['Docker-Content-Digest'] == oci_image.manifest_digest
    # localhost is in the certificate too.
    with httpx.Client(verify=tls_registry.ssl_context()) as client:
        assert client.get(f'https://localhost:{tls_registry.port}/v2/').status_code == 200
    # An unknown CA is refused, so the certificate really is ours.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f'{tls_registry.url}/v2/')
    protocols = {e.protocol for e in tls_registry.access_log() if e.path == f'/v2/{repo_name}/manifests/v1'}
    assert 'HTTP/2.0' in protocols


def test_basic_auth_registry(basic_auth_registry, repo_name, oci_image):
    reg = basic_auth_registry
    verify = reg.ssl_context()
    anonymous = httpx.get(f'{reg.url}/v2/', verify=verify)
    assert anonymous.status_code == 401
    assert anonymous.headers['WWW-Authenticate'].startswith('Basic ')
    assert httpx.get(f'{reg.url}/v2/', verify=verify, auth=(reg.username, 'wrong')).status_code == 401
    assert httpx.get(f'{reg.url}/v2/', verify=verify, auth=(reg.username, reg.password)).status_code == 200

    seed_image(reg, repo_name, 'v1', oci_image.path)
    assert skopeo_inspect(f'docker://{reg.host}/{repo_name}:v1', raw=True)['layers'] == oci_image.manifest['layers']
    with pytest.raises(ServiceError, match='(?i)unauthorized|authentication required'):
        skopeo_inspect(f'docker://{reg.host}/{repo_name}:v1', creds=None)


def test_basic_auth_over_plain_http(tmp_path, oci_image):
    # distribution 2.8 accepts htpasswd without TLS, which keeps insecure-mode credential tests possible.
    with Registry(tmp_path / 'reg', auth='basic', users={'alice': 's3cret'}) as reg:
        assert reg.credentials == 'alice:s3cret'
        assert httpx.get(f'{reg.url}/v2/').status_code == 401
        assert httpx.get(f'{reg.url}/v2/', auth=('alice', 's3cret')).status_code == 200
        assert seed_image(reg, 'private/image', 'v1', oci_image.path) == oci_image.manifest_digest


def test_token_registry_flow(token_registry, repo_name, oci_image, tmp_path):
    reg = token_registry
    tokens = reg.token_server
    challenge = httpx.get(f'{reg.url}/v2/')
    assert challenge.status_code == 401
    scheme, params = _challenge(challenge.headers['WWW-Authenticate'])
    assert scheme == 'Bearer'
    assert params['realm'] == tokens.realm and params['service'] == tokens.service

    with pytest.raises(ServiceError):
        seed_image_anonymously(reg, repo_name, oci_image)
    assert tokens.requests and all(r.user is None for r in tokens.requests)
    assert all(not access['actions'] for r in tokens.requests for access in r.granted)
    tokens.reset()
    seed_image(reg, repo_name, 'v1', oci_image.path)
    assert tokens.request_count > 0
    assert all(r.user == reg.username and r.status == 200 for r in tokens.requests)

    # The token flow by hand: a token for pull, then the manifest with it.
    manifest_url = f'{reg.url}/v2/{repo_name}/manifests/v1'
    denied = httpx.get(manifest_url, headers={'Accept': OCI_MANIFEST})
    assert denied.status_code == 401
    scope = _challenge(denied.headers['WWW-Authenticate'])[1]['scope']
    assert scope == f'repository:{repo_name}:pull'
    tokens.reset()
    answer = httpx.get(tokens.realm, params={'service': tokens.service, 'scope': scope},
                       auth=(reg.username, reg.password)).json()
    assert set(answer) >= {'token', 'access_token', 'expires_in', 'issued_at'}
    ok = httpx.get(manifest_url, headers={'Accept': OCI_MANIFEST, 'Authorization': f'Bearer {answer["token"]}'})
    assert ok.status_code == 200
    assert ok.headers['Docker-Content-Digest'] == oci_image.manifest_digest
    assert tokens.request_count == 1

    # Anonymous tokens carry no access; wrong passwords get no token at all.
    anon = httpx.get(tokens.realm, params={'service': tokens.service, 'scope': scope}).json()
    assert httpx.get(manifest_url, headers={'Authorization': f'Bearer {anon["token"]}'}).status_code == 401
    wrong = httpx.get(tokens.realm, params={'service': tokens.service, 'scope': scope}, auth=(reg.username, 'x'))
    assert wrong.status_code == 401
    assert [r.status for r in tokens.requests] == [200, 200, 401]

    skopeo_copy(f'docker://{reg.host}/{repo_name}:v1', f'oci:{tmp_path / "copy"}:v1')
    assert skopeo_inspect(f'oci:{tmp_path / "copy"}:v1', config=True)['rootfs']['diff_ids'] == oci_image.diff_ids


def seed_image_anonymously(reg, name, image):
    return skopeo_copy(f'oci:{image.path}', f'docker://{reg.host}/{name}:v1', dest_creds=None)


def test_token_permissions_allow_anonymous_pull(tmp_path, oci_image):
    with Registry(tmp_path / 'reg', auth='token', permissions={None: ['pull'], 'testuser': ['*']}) as reg:
        seed_image(reg, 'public/image', 'v1', oci_image.path)
        manifest = skopeo_inspect(f'docker://{reg.host}/public/image:v1', raw=True, creds=None)
        assert manifest['config']['digest'] == oci_image.config_digest
        with pytest.raises(ServiceError):
            skopeo_copy(f'oci:{oci_image.path}', f'docker://{reg.host}/public/other:v1', dest_creds=None)
        anonymous = [r for r in reg.token_server.requests if r.user is None]
        assert anonymous and all('push' not in a['actions'] for r in anonymous for a in r.granted)


def test_podman_service(podman_service, registry, repo_name, oci_image):
    with podman_service.client() as client:
        ping = client.get('/_ping')
        assert ping.status_code == 200 and ping.text == 'OK'
        version = client.get('/version').json()
        assert version['Version'].startswith('4.')

    seed_image(registry, repo_name, 'v1', oci_image.path)
    reference = f'{registry.host}/{repo_name}:v1'
    podman_service.podman('pull', '--tls-verify=false', '--quiet', reference)
    assert any(f'{reference}' in (image.get('Names') or []) for image in podman_service.images())
    with podman_service.client() as client:
        listed = client.get('/v1.41/images/json').json()
    assert any(reference in (image.get('RepoTags') or []) for image in listed)
    podman_service.podman('rmi', reference)
    assert not any(reference in (image.get('Names') or []) for image in podman_service.images())


def test_podman_service_loads_docker_archive(podman_service, oci_image, tmp_path):
    archive = tmp_path / 'image.tar'
    skopeo_copy(f'oci:{oci_image.path}', f'docker-archive:{archive}:localhost/loaded/image:v1')
    with podman_service.client() as client:
        response = client.post('/v1.41/images/load', content=archive.read_bytes(),
                               headers={'Content-Type': 'application/x-tar'})
        assert response.status_code == 200, response.text
        inspect = client.get('/v1.41/images/localhost/loaded/image:v1/json')
        assert inspect.status_code == 200
        assert inspect.json()['RootFS']['Layers'] == oci_image.diff_ids
    podman_service.podman('rmi', 'localhost/loaded/image:v1')
