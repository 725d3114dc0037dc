"""docker://: the engine API client, and images in and out of a real Podman service."""

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import pytest

from occystrap import engine
from occystrap.engine import EngineClient, EngineError
from occystrap.uris import parse_uri
from tests.services import build_oci_layout, seed_image, skopeo_copy, skopeo_inspect

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


def test_cli_missing_socket_exits_1_with_one_line(tmp_path):
    path = tmp_path / 'nothing.sock'
    result = occystrap('process', 'docker://app:v1?socket=%s' % path, 'tar://%s' % (tmp_path / 'out.tar'))
    assert result.returncode == 1
    assert error_line(result) == 'error: no Docker or Podman engine at %s (start one or pass ?socket=)' % path
    assert not (tmp_path / 'out.tar').exists()


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


# --- docker:// input and output through the CLI -------------------------------------------------------------------

def docker_uri(service, name):
    return 'docker://%s?socket=%s' % (name, service.socket_path)


def engine_image(service, reference):
    """podman's record of an image (docker.io/ prefixed as the engine names it), or None."""
    for image in service.images():
        if reference in (image.get('Names') or []):
            return image
    return None


def config_of(archive):
    """(config digest, config) of a docker-archive, as skopeo reads it."""
    raw = skopeo_inspect('docker-archive:%s' % archive, config=True, raw=True, parse=False)  # the exact bytes
    return 'sha256:' + hashlib.sha256(raw).hexdigest(), json.loads(raw)


def assert_same_image(archive, expected):
    digest, config = config_of(archive)
    assert digest == expected.config_digest
    assert config['rootfs']['diff_ids'] == expected.diff_ids


@pytest.mark.integration
def test_registry_to_docker_to_tar_keeps_digests(podman_service, registry, repo_name, oci_image, tmp_path):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    result = occystrap('process', 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name),
                       docker_uri(podman_service, '%s:v2' % repo_name))
    assert result.returncode == 0, result.stderr

    # The engine has it under the destination name, with the source's config as its ID and the same layers.
    loaded = engine_image(podman_service, 'docker.io/%s:v2' % repo_name)
    assert loaded is not None, podman_service.images()
    assert 'sha256:' + loaded['Id'] == oci_image.config_digest
    inspect = json.loads(podman_service.podman('image', 'inspect', '%s:v2' % repo_name).stdout)[0]
    assert inspect['RootFS']['Layers'] == oci_image.diff_ids

    out = tmp_path / 'out.tar'
    result = occystrap('process', docker_uri(podman_service, '%s:v2' % repo_name), 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    assert_same_image(out, oci_image)
    manifest = json.loads(subprocess.run(['tar', '-xOf', str(out), 'manifest.json'], capture_output=True,
                                         check=True).stdout)
    assert manifest[0]['RepoTags'] == ['%s:v2' % repo_name]
    podman_service.podman('rmi', '%s:v2' % repo_name)


@pytest.mark.integration
def test_tar_to_docker_to_tar_keeps_digests(podman_service, archive, repo_name, oci_image, tmp_path):
    result = occystrap('process', 'tar://%s' % archive, docker_uri(podman_service, 'localhost/%s:copy' % repo_name))
    assert result.returncode == 0, result.stderr
    assert engine_image(podman_service, 'localhost/%s:copy' % repo_name) is not None

    out = tmp_path / 'out.tar'
    result = occystrap('process', docker_uri(podman_service, 'localhost/%s:copy' % repo_name), 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    assert_same_image(out, oci_image)
    # Only the result is left: the export and its staging copy were temporary.
    assert sorted(p.name for p in tmp_path.iterdir()) == ['oci-image', 'out.tar', 'seed.tar']
    podman_service.podman('rmi', 'localhost/%s:copy' % repo_name)


@pytest.mark.integration
def test_docker_input_streams_large_layers(podman_service, repo_name, tmp_path):
    # Random data does not compress and spans many export chunks, so chunk handling and digests are exercised.
    big = build_oci_layout(tmp_path / 'big', layers=[{'blob.bin': os.urandom(9 * 1024 * 1024 + 17)},
                                                     {'small.txt': b'small\n'}])
    skopeo_copy(f'oci:{big.path}', f'docker-archive:{tmp_path / "big.tar"}:{repo_name}:big')
    with EngineClient(str(podman_service.socket_path)) as client:
        client.load_image(str(tmp_path / 'big.tar'))
    out = tmp_path / 'out.tar'
    result = occystrap('-j', '2', 'process', docker_uri(podman_service, '%s:big' % repo_name), 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    assert_same_image(out, big)
    podman_service.podman('rmi', '%s:big' % repo_name)


@pytest.mark.integration
def test_missing_image_is_exit_1_with_one_line(podman_service, tmp_path):
    out = tmp_path / 'out.tar'
    result = occystrap('process', docker_uri(podman_service, 'no/such-image:v9'), 'tar://%s' % out)
    assert result.returncode == 1
    assert error_line(result) == 'error: engine at %s answered 404: no such image no/such-image:v9' \
        % podman_service.socket_path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration  # skopeo writes the source
def test_output_to_missing_socket_is_one_line(archive, tmp_path):
    path = tmp_path / 'nothing.sock'
    result = occystrap('process', 'tar://%s' % archive, 'docker://app:v1?socket=%s' % path)
    assert result.returncode == 1
    assert error_line(result) == 'error: no Docker or Podman engine at %s (start one or pass ?socket=)' % path


@pytest.mark.integration  # skopeo writes the source
def test_output_refuses_a_digest(archive):
    result = occystrap('process', 'tar://%s' % archive, 'docker://app@sha256:' + 'a' * 64)
    assert result.returncode == 2
    assert 'an engine loads images under a tag' in error_line(result)


def corrupt_first_layer(archive):
    """Flip one byte inside the first layer's data, keeping sizes, so only its diffid check can notice."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile('manifest.json'))
        layer = tar.getmember(manifest[0]['Layers'][0])
        while layer.issym() or layer.islnk():
            target = layer.linkname if layer.islnk() else os.path.normpath(
                os.path.join(os.path.dirname(layer.name), layer.linkname))
            layer = tar.getmember(target)
        offset = layer.offset_data + 600   # inside the first file's content, past its tar header
    with open(archive, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xff]))


@pytest.mark.integration
def test_failed_load_leaves_nothing_behind(podman_service, archive, repo_name, tmp_path):
    corrupt_first_layer(archive)
    work = tmp_path / 'work'
    result = occystrap('--temp-dir', str(work), 'process', 'tar://%s' % archive,
                       docker_uri(podman_service, '%s:broken' % repo_name))
    assert result.returncode == 1
    assert 'digest mismatch' in error_line(result)
    assert engine_image(podman_service, 'docker.io/%s:broken' % repo_name) is None
    assert not work.exists() or list(work.iterdir()) == []
