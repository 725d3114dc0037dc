"""Hostile names, digests and JSON from tarballs, OCI layouts and registries, through the real command.

Each tarball is built here byte by byte (skopeo and docker-registry refuse to produce such input). Every case must
end in one line on stderr, exit status 1, no traceback, nothing written at the destination and nothing outside it.
"""

import http.server
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request

import pytest

from occystrap import oci
from occystrap.inputs.registry import RegistryInput
from occystrap.model import Image
from occystrap.pipeline import ImageRef, RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.helpers import sha256, write_tar
from tests.services import build_oci_layout, layer_tar, skopeo_copy
from tools.loopback import BackgroundHTTPServer

MARKER = 'occystrap-injected-marker'


def docker_save(path, images):
    """A docker save tarball (Docker 25+ paths into blobs/) for [(RepoTags, diff_ids or None)].

    With diff_ids None the config promises the real diffid of its one layer; otherwise it lists the given ones.
    """
    members, manifest = {}, []
    for number, (tags, diff_ids) in enumerate(images):
        tar = layer_tar({'etc/hello-%d' % number: b'hello %d\n' % number})
        config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                             'rootfs': {'type': 'layers', 'diff_ids': diff_ids or [sha256(tar)]}}).encode()
        for blob in (tar, config):
            members['blobs/sha256/' + sha256(blob).split(':')[1]] = blob
        manifest.append({'Config': 'blobs/sha256/' + sha256(config).split(':')[1], 'RepoTags': tags,
                         'Layers': ['blobs/sha256/' + sha256(tar).split(':')[1]]})
    members['manifest.json'] = json.dumps(manifest).encode()
    return write_tar(path, members)


def layout_tarball(tmp_path, annotations, mutate=None):
    """An OCI layout tarball of one image whose index.json entry carries `annotations`; `mutate(manifest)` may
    change the manifest document first."""
    built = build_oci_layout(tmp_path / 'layout', [{'etc/hello': b'hello\n'}])
    blobs = built.path / 'blobs' / 'sha256'
    manifest = json.loads((blobs / built.manifest_digest.split(':')[1]).read_bytes())
    if mutate:
        mutate(manifest)
    raw = json.dumps(manifest).encode()
    members = {'oci-layout': b'{"imageLayoutVersion":"1.0.0"}'}
    for blob in blobs.iterdir():
        members['blobs/sha256/' + blob.name] = blob.read_bytes()
    members['blobs/sha256/' + sha256(raw).split(':')[1]] = raw
    members['index.json'] = json.dumps({'schemaVersion': 2, 'manifests': [
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': sha256(raw), 'size': len(raw),
         'annotations': annotations}]}).encode()
    return write_tar(tmp_path / 'layout.tar', members)


def occystrap(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def assert_one_line_failure(result, *fragments):
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ') and 'Traceback' not in result.stderr
    assert '\x1b' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nothing_written(tmp_path, *keep, empty_ok=()):
    """Only the inputs the test made are left in tmp_path: no destination, no partial names, no marker.

    `empty_ok` names destinations that may be left as empty directories: dir:// makes its directory before the
    first image is read (removing it on failure is the signal and clean-up work, not this test's).
    """
    left = sorted(name for name in os.listdir(tmp_path) if name not in keep and name != 'layout'
                  and not (name in empty_ok and os.listdir(tmp_path / name) == []))
    assert left == [], left
    assert not os.path.exists('/tmp/' + MARKER)


HOSTILE_NAMES = [
    'evil\nid > /tmp/%s:latest' % MARKER,
    'evil$(touch /tmp/%s):latest' % MARKER,
    'evil\x1b]0;pwned\x07:latest',
    'library/..:latest',
    '../../escape:latest',
    'trailing/:latest',
    '/leading:latest',
    'good:tag\nwith-newline',
    'good:$(id)',
]


@pytest.mark.parametrize('name', HOSTILE_NAMES)
@pytest.mark.parametrize('destination', ['mounts', 'dir', 'info'])
def test_hostile_repotags_are_refused(tmp_path, name, destination):
    archive = docker_save(tmp_path / 'in.tar', [([name], None)])
    if destination == 'info':
        result = occystrap('info', 'tar://%s' % archive)
        assert result.stdout == ''
    else:
        result = occystrap('process', 'tar://%s' % archive, '%s://%s' % (destination, tmp_path / 'out'))
    assert_one_line_failure(result, 'RepoTags of entry 0 of manifest.json', 'names an invalid')
    nothing_written(tmp_path, 'in.tar', empty_ok=('out',))


def test_a_hostile_name_fails_only_its_own_image(tmp_path):
    archive = docker_save(tmp_path / 'in.tar', [(['good/image:v1'], None), (['bad$(reboot):v1'], None),
                                                (['other:v2'], None)])
    result = occystrap('-O', 'json', 'info', 'tar://%s' % archive)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [entry.get('reference') for entry in report if 'error' not in entry] == ['good/image:v1', 'other:v2']
    failed = [entry for entry in report if 'error' in entry]
    assert len(failed) == 1 and 'names an invalid repository' in failed[0]['error']
    assert 'Traceback' not in result.stderr

    out = tmp_path / 'out.tar'
    result = occystrap('process', 'tar://%s' % archive, 'tar://%s' % out)
    assert result.returncode == 1, result.stderr
    with tarfile.open(out) as tar:
        tags = [tag for entry in json.load(tar.extractfile('manifest.json')) for tag in entry['RepoTags']]
    assert sorted(tags) == ['good/image:v1', 'other:v2']


@pytest.mark.parametrize('annotations, fragment', [
    ({'org.opencontainers.image.ref.name': 'v1\n$(touch /tmp/%s)' % MARKER}, 'names an invalid repository'),
    ({'org.opencontainers.image.ref.name': 'v1\n$(reboot)'}, 'names an invalid tag'),
    ({'org.opencontainers.image.ref.name': 'a/../b:v1'}, 'names an invalid repository'),
    ({'org.opencontainers.image.ref.name': '\x1b[2J'}, 'names an invalid tag'),
    ({'io.containerd.image.name': 'docker.io/x\ny:latest'}, 'names an invalid repository'),
])
@pytest.mark.parametrize('destination', ['mounts', 'info'])
def test_hostile_layout_ref_names_are_refused(tmp_path, annotations, fragment, destination):
    archive = layout_tarball(tmp_path, annotations)
    if destination == 'info':
        result = occystrap('info', 'tar://%s' % archive)
    else:
        result = occystrap('process', 'tar://%s' % archive, 'mounts://%s' % (tmp_path / 'out'))
    assert_one_line_failure(result, 'entry 0 of index.json', fragment)
    nothing_written(tmp_path, 'layout.tar')


@pytest.mark.parametrize('diff_id', ['', 'nocolon', 'sha256:../../x', 'sha256:../../../../tmp/' + MARKER,
                                     'sha256:' + 'A' * 64, 'sha256:' + 'a' * 63])
@pytest.mark.parametrize('destination', ['mounts', 'dir', 'info'])
def test_hostile_diff_ids_never_become_paths(tmp_path, diff_id, destination):
    archive = docker_save(tmp_path / 'in.tar', [(['diff:v1'], [diff_id])])
    if destination == 'info':
        result = occystrap('info', 'tar://%s' % archive)
    else:
        result = occystrap('process', 'tar://%s' % archive, '%s://%s' % (destination, tmp_path / 'out'))
    assert_one_line_failure(result, 'diff_id 0 has a malformed digest')
    nothing_written(tmp_path, 'in.tar', empty_ok=('out',))


@pytest.mark.parametrize('member', ['manifest.json', 'config'])
def test_deeply_nested_json_is_one_line(tmp_path, member):
    archive = docker_save(tmp_path / 'in.tar', [(['deep:v1'], None)])
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    deep = b'[' * 100000
    if member == 'manifest.json':
        members['manifest.json'] = deep
    else:
        manifest = json.loads(members['manifest.json'])
        members[manifest[0]['Config']] = deep
        manifest[0]['Config'] = 'blobs/sha256/' + sha256(deep).split(':')[1]
        members[manifest[0]['Config']] = deep
        members['manifest.json'] = json.dumps(manifest).encode()
    write_tar(archive, members)
    for args in (('info', 'tar://%s' % archive), ('process', 'tar://%s' % archive, 'dir://%s' % (tmp_path / 'o'))):
        assert_one_line_failure(occystrap(*args), 'nested too deeply')
    nothing_written(tmp_path, 'in.tar', empty_ok=('o',))


def test_not_utf8_manifest_is_one_line(tmp_path):
    archive = write_tar(tmp_path / 'in.tar', {'manifest.json': b'[{"Config": "\xff\xfe"}]'})
    assert_one_line_failure(occystrap('info', 'tar://%s' % archive), 'member manifest.json is not UTF-8')


@pytest.mark.parametrize('where', ['layer', 'config'])
def test_hostile_manifest_digests_in_a_layout(tmp_path, where):
    def mutate(manifest):
        target = manifest['layers'][0] if where == 'layer' else manifest['config']
        target['digest'] = 'sha256:../../../../etc/passwd'
    archive = layout_tarball(tmp_path, {'org.opencontainers.image.ref.name': 'v1'}, mutate)
    line = assert_one_line_failure(occystrap('info', 'tar://%s' % archive), 'has a malformed digest')
    assert ('layer 0' if where == 'layer' else 'config') in line
    nothing_written(tmp_path, 'layout.tar')


def test_config_fields_of_the_wrong_type_do_not_crash_the_model():
    config = {'os': 5, 'architecture': ['x'], 'variant': {}, 'history': 'abc', 'rootfs': 'nope'}
    image = Image(name='odd', tag='v1', config_bytes=json.dumps(config).encode(), layers=[])
    assert (image.platform, image.history, image.diffids, image.created_by(0)) == ('/', [], [], None)
    config = {'os': 'linux', 'architecture': 'arm64', 'variant': 'v8', 'history': [7, {'created_by': 'RUN x'}],
              'rootfs': {'diff_ids': 'x'}}
    image = Image(name='odd', tag='v1', config_bytes=json.dumps(config).encode(), layers=[])
    assert (image.platform, image.diffids, image.created_by(0)) == ('linux/arm64/v8', [], 'RUN x')


# --- registry catalogs -------------------------------------------------------------------------------------------

class _CatalogHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self, method):
        proxy = self.server.owner
        proxy.requested.append(self.path)
        request = urllib.request.Request(proxy.upstream + self.path, method=method,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != 'host'})
        try:
            response = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as e:
            response = e
        body = response.read()
        if self.path.startswith('/v2/_catalog') and proxy.replace is not None:
            body = proxy.replace
        elif self.path.startswith('/v2/_catalog') and response.status == 200:
            document = json.loads(body)
            document['repositories'] = sorted(document['repositories'] + proxy.extra)
            body = json.dumps(document).encode()
        self.send_response(response.status)
        for key, value in response.headers.items():
            if key.lower() not in ('content-length', 'transfer-encoding', 'connection', 'date', 'server'):
                self.send_header(key, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if method != 'HEAD':
            self.wfile.write(body)

    def do_GET(self):
        self._forward('GET')

    def do_HEAD(self):
        self._forward('HEAD')


class _CatalogProxy(BackgroundHTTPServer):
    """A loopback proxy in front of a real docker-registry that adds hostile names to /v2/_catalog answers (the
    registry itself refuses such names, so nothing else can serve them) or answers `replace` for the catalog."""

    handler = _CatalogHandler

    def __init__(self, upstream, extra, replace=None):
        super().__init__()
        self.upstream = upstream
        self.extra = extra
        self.replace = replace
        self.requested = []


def test_hostile_catalog_names_fail_alone(fresh_registry, tmp_path):
    # A registry of its own: the proxy adds the names to every catalog page, and the session's shared registry
    # pages its catalog once enough other tests have pushed to it.
    registry = fresh_registry
    layout = build_oci_layout(tmp_path / 'seed', [{'etc/ok': b'ok\n'}])
    skopeo_copy('oci:%s:latest' % layout.path, 'docker://%s/catalogtest/good:latest' % registry.host)
    # the first has more components than the glob, so it is not even a match; the other three fail alone
    hostile = ['catalogtest/bad$(touch /tmp/%s)' % MARKER, 'catalogtest/bad$(reboot)', 'catalogtest/x\x1b[2J',
               'catalogtest/..']
    with _CatalogProxy(registry.url, hostile) as proxy:
        host = proxy.url.split('//', 1)[1]
        result = occystrap('--insecure', '-O', 'json', 'info', 'registry://%s/catalogtest/*:latest' % host)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [entry['reference'] for entry in report if 'error' not in entry] == ['catalogtest/good:latest']
    errors = [entry['error'] for entry in report if 'error' in entry]
    assert len(errors) == 3 and all('lists an invalid repository name' in e for e in errors)
    assert '\x1b' not in result.stdout and '\x1b' not in result.stderr
    # no request was ever made for a hostile name
    assert not any('bad' in path or '..' in path or '%1B' in path.upper() for path in proxy.requested)
    assert not os.path.exists('/tmp/' + MARKER)


@pytest.mark.parametrize('answer', [b'[' * 100000, b'{"repositories": ' + b'[' * 100000, b'\xff\xfe', b'[1, 2]'])
def test_garbage_catalog_is_one_line(registry, answer):
    with _CatalogProxy(registry.url, [], replace=answer) as proxy:
        host = proxy.url.split('//', 1)[1]
        result = occystrap('--insecure', 'info', 'registry://%s/catalogtest/*:latest' % host)
    assert_one_line_failure(result, 'answered the catalog with something that is not JSON')


@pytest.mark.parametrize('ref', [ImageRef('org/bad$(id)', 'latest'), ImageRef('org/..', 'latest'),
                                 ImageRef('org/x', 'v1\n'), ImageRef('org/x', digest='sha256:../x')])
def test_registry_input_refuses_bad_references_from_other_listings(registry, ref):
    # A Quay organisation's repository list reaches RegistryInput.open as ImageRefs: none may reach a URL.
    ctx = RunContext(Settings(insecure=True))
    try:
        source = RegistryInput(parse_uri('registry://%s/org/*:latest' % registry.host, 'input'), ctx)
        source.client.ping()        # one request, so the access log is known to record this client's requests
        before = registry.access_log()
        assert before and before[-1].path == '/v2/'
        with pytest.raises(oci.CorruptImageError, match='image .* (names an invalid|has a malformed digest)'):
            source.open(ref)
        assert registry.access_log() == before
    finally:
        ctx.close()
