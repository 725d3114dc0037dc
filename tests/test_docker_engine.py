"""docker://: the engine API client, and images in and out of a real Podman service."""

import io
import json
import socket
import subprocess
import sys

import pytest

from occystrap import engine
from occystrap.engine import EngineClient, EngineError
from occystrap.uris import parse_uri
from tests.services import skopeo_copy

LAYERS = [
    {'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from the docker tests\n'},
    {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho tool\n', 'mode': 0o755}},
]


def occystrap(*args):
    """Run the CLI as a user would; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def error_line(result):
    """The CLI's error output, which must be exactly one line."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- choosing the socket ------------------------------------------------------------------------------------------

def test_docker_host_names_the_socket():
    assert engine.default_socket({'DOCKER_HOST': 'unix:///srv/engine.sock'}) == '/srv/engine.sock'


def test_docker_host_over_tcp_is_refused_with_a_hint():
    with pytest.raises(EngineError, match=r"DOCKER_HOST 'tcp://10.0.0.1:2375' is not a unix:// socket.*\?socket="):
        engine.default_socket({'DOCKER_HOST': 'tcp://10.0.0.1:2375'})


def test_first_existing_usual_socket_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, 'DOCKER_SOCKET', str(tmp_path / 'docker.sock'))
    monkeypatch.setattr(engine, 'ROOT_PODMAN_SOCKET', str(tmp_path / 'root-podman.sock'))
    environ = {'XDG_RUNTIME_DIR': str(tmp_path / 'xdg')}
    # Nothing exists: Docker's place, so the error names what most users expect.
    assert engine.default_socket(environ) == str(tmp_path / 'docker.sock')
    (tmp_path / 'root-podman.sock').touch()
    assert engine.default_socket(environ) == str(tmp_path / 'root-podman.sock')
    (tmp_path / 'xdg' / 'podman').mkdir(parents=True)
    (tmp_path / 'xdg' / 'podman' / 'podman.sock').touch()
    assert engine.default_socket(environ) == str(tmp_path / 'xdg' / 'podman' / 'podman.sock')
    (tmp_path / 'docker.sock').touch()
    assert engine.default_socket(environ) == str(tmp_path / 'docker.sock')


def test_socket_option_overrides_docker_host(monkeypatch):
    monkeypatch.setenv('DOCKER_HOST', 'tcp://10.0.0.1:2375')
    for option in ('/tmp/x/engine.sock', 'unix:///tmp/x/engine.sock'):
        uri = parse_uri('docker://app:v1?socket=' + option, 'input')
        with EngineClient.for_uri(uri) as client:
            assert client.socket_path == '/tmp/x/engine.sock'


# --- engine errors without an engine ------------------------------------------------------------------------------

def test_missing_socket_is_one_clear_error(tmp_path):
    path = tmp_path / 'nothing.sock'
    with EngineClient(str(path)) as client:
        with pytest.raises(EngineError) as caught:
            client.ping()
    assert str(caught.value) == 'no Docker or Podman engine at %s (start one or pass ?socket=)' % path


def test_socket_nobody_listens_on(tmp_path):
    path = tmp_path / 'stale.sock'
    # A bound but never listening socket: what a crashed engine leaves behind.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    try:
        with EngineClient(str(path)) as client:
            with pytest.raises(EngineError, match='no Docker or Podman engine answers at %s' % path):
                client.inspect_image('app:v1')
    finally:
        stale.close()


# --- the client against a real Podman service ---------------------------------------------------------------------

@pytest.fixture
def archive(tmp_path, oci_image, repo_name):
    """A docker-archive of the oci_image tagged repo_name:v1, written by skopeo (independent of our code)."""
    path = tmp_path / 'seed.tar'
    skopeo_copy(f'oci:{oci_image.path}', f'docker-archive:{path}:{repo_name}:v1')
    return path


@pytest.mark.integration
def test_client_load_inspect_export(podman_service, archive, oci_image, repo_name):
    with EngineClient(str(podman_service.socket_path)) as client:
        assert client.ping() == 'OK'
        assert client.load_image(str(archive)) == ['docker.io/%s:v1' % repo_name]
        info = client.inspect_image('%s:v1' % repo_name)
        assert info['RootFS']['Layers'] == oci_image.diff_ids
        stream = client.export_image('%s:v1' % repo_name)
        with stream:
            exported = io.BytesIO()
            while True:
                chunk = stream.read(7000)  # small reads cross the engine's chunk boundaries
                if not chunk:
                    break
                exported.write(chunk)
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(exported.getvalue())) as tar:
        manifest = json.load(tar.extractfile('manifest.json'))
    assert manifest[0]['RepoTags'] == ['docker.io/%s:v1' % repo_name]
    assert len(manifest[0]['Layers']) == len(oci_image.diff_ids)
    podman_service.podman('rmi', '%s:v1' % repo_name)


@pytest.mark.integration
def test_client_loads_from_a_stream(podman_service, archive, repo_name):
    with EngineClient(str(podman_service.socket_path)) as client, open(archive, 'rb') as f:
        assert client.load_image(f) == ['docker.io/%s:v1' % repo_name]
    assert any('docker.io/%s:v1' % repo_name in (i.get('Names') or []) for i in podman_service.images())
    podman_service.podman('rmi', '%s:v1' % repo_name)


@pytest.mark.integration
def test_client_errors_name_the_engine_and_the_image(podman_service):
    path = podman_service.socket_path
    with EngineClient(str(path)) as client:
        with pytest.raises(EngineError) as caught:
            client.inspect_image('no/such-image:v9')
        assert str(caught.value) == 'engine at %s answered 404: no such image no/such-image:v9' % path
        assert caught.value.status == 404
        with pytest.raises(EngineError, match='answered 404: no such image no/such-image:v9'):
            client.export_image('no/such-image:v9')
        with pytest.raises(EngineError) as caught:
            client.load_image(io.BytesIO(b'this is not a tarball' * 100))
        message = str(caught.value)
    assert message.startswith('engine at %s answered 500: failed to load image' % path)
    assert '\n' not in message
