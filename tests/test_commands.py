"""The small commands scripts use (tags, digest, manifest, config), checked against the registry's own answers.

Every answer is compared with what skopeo says about the same image (`skopeo inspect --raw`, `--config --raw`,
`list-tags`) and digests are recomputed from the bytes, on a real docker-registry (plain and TLS) and on tarballs
the tests build. Hostile registries are scripted loopback servers.
"""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import ScriptedServer, legacy_members, write_tar
from tests.services import build_oci_layout, layer_tar, seed_image, skopeo, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.upper().endswith('_PROXY') and not k.startswith('OCCYSTRAP_')}


def occystrap(*args, check=True):
    """Run the command; stdout as bytes (the raw commands must be byte for byte), stderr as text."""
    result = subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, env=CLEAN_ENV,
                            stdin=subprocess.DEVNULL, timeout=180)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def registry_flags(reg):
    return ['--ca-cert', str(reg.ca_path)] if reg.tls else ['--insecure']


@pytest.fixture(params=['plain', 'tls'])
def any_registry(request):
    """The plain-HTTP and the TLS registry of the session, in turn."""
    return request.getfixturevalue('registry' if request.param == 'plain' else 'tls_registry')


def multi_arch_layout(path, tag='multi'):
    """An OCI layout whose one ref names an index of an amd64 and an arm64 image (for skopeo copy --all)."""
    parts = []
    for arch in ('amd64', 'arm64'):
        parts.append(build_oci_layout(path.parent / ('%s-%s' % (path.name, arch)), architecture=arch,
                                      layers=[{'arch.txt': arch.encode() + b'\n'}]))
    blobs = path / 'blobs' / 'sha256'
    blobs.mkdir(parents=True)
    for part in parts:
        for blob in (part.path / 'blobs' / 'sha256').iterdir():
            shutil.copy(blob, blobs / blob.name)
    index = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
             'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': part.manifest_digest,
                            'size': len(json.dumps(part.manifest, sort_keys=True, separators=(',', ':'))),
                            'platform': {'os': 'linux', 'architecture': arch}}
                           for part, arch in zip(parts, ('amd64', 'arm64'))]}
    index_bytes = json.dumps(index, separators=(',', ':')).encode()
    (blobs / sha256(index_bytes).split(':')[1]).write_bytes(index_bytes)
    (path / 'oci-layout').write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / 'index.json').write_text(json.dumps({
        'schemaVersion': 2, 'manifests': [{'mediaType': index['mediaType'], 'digest': sha256(index_bytes),
                                           'size': len(index_bytes),
                                           'annotations': {'org.opencontainers.image.ref.name': tag}}]}))
    return sha256(index_bytes), parts


# --- registry -----------------------------------------------------------------------------------------------------

def test_commands_agree_with_skopeo_on_a_registry_image(any_registry, repo_name, oci_image):
    reg = any_registry
    pushed = seed_image(reg, repo_name, 'v1', oci_image.path)
    seed_image(reg, repo_name, 'v2', oci_image.path)
    uri = 'registry://%s/%s:v1' % (reg.host, repo_name)
    ref = 'docker://%s/%s:v1' % (reg.host, repo_name)

    raw = occystrap(*registry_flags(reg), 'manifest', '--raw', uri).stdout
    assert raw == skopeo_inspect(ref, raw=True, parse=False)
    assert sha256(raw) == pushed
    assert occystrap(*registry_flags(reg), 'digest', uri).stdout.decode() == pushed + '\n'
    pretty = occystrap(*registry_flags(reg), 'manifest', uri).stdout
    assert json.loads(pretty) == json.loads(raw) and pretty != raw and pretty.endswith(b'}\n')

    config = occystrap(*registry_flags(reg), 'config', uri).stdout
    assert config == skopeo_inspect(ref, raw=True, config=True, parse=False)
    assert sha256(config) == json.loads(raw)['config']['digest'] == oci_image.config_digest

    listed = skopeo('list-tags', *(['--cert-dir', str(reg.cert_dir)] if reg.tls else ['--tls-verify=false']),
                    '--no-creds', 'docker://%s/%s' % (reg.host, repo_name)).stdout
    tags = occystrap(*registry_flags(reg), 'tags', 'registry://%s/%s' % (reg.host, repo_name)).stdout.decode()
    assert tags.splitlines() == json.loads(listed)['Tags'] == ['v1', 'v2']


def test_digest_of_a_multi_arch_tag_is_the_index_and_config_follows_the_platform(registry, repo_name, tmp_path):
    index_digest, parts = multi_arch_layout(tmp_path / 'multi')
    skopeo_copy('oci:%s:multi' % (tmp_path / 'multi'), 'docker://%s/%s:multi' % (registry.host, repo_name), '--all')
    uri = 'registry://%s/%s:multi' % (registry.host, repo_name)
    assert occystrap('--insecure', 'digest', uri).stdout.decode().strip() == index_digest
    raw = occystrap('--insecure', 'manifest', '--raw', uri).stdout
    assert sha256(raw) == index_digest
    assert raw == skopeo_inspect('docker://%s/%s:multi' % (registry.host, repo_name), raw=True, parse=False)
    arm = occystrap('--insecure', '--architecture', 'arm64', 'config', uri).stdout
    assert sha256(arm) == parts[1].config_digest and json.loads(arm)['architecture'] == 'arm64'
    # A digest reference names one platform's manifest, verified against the digest.
    by_digest = 'registry://%s/%s@%s' % (registry.host, repo_name, parts[0].manifest_digest)
    assert sha256(occystrap('--insecure', 'manifest', '--raw', by_digest).stdout) == parts[0].manifest_digest


def test_tags_follows_link_pages():
    # The Debian docker-registry answers a tag list in one page whatever n is, so the pages are scripted here.
    def page(tags, following=None):
        headers = {'Content-Type': 'application/json'}
        if following:
            headers['Link'] = '<%s>; rel="next"' % following
        return 200, headers, json.dumps({'name': 'x/y', 'tags': tags}).encode()

    script = [page(['a', 'b'], '/v2/x/y/tags/list?n=2&last=b'), page(['c', 'd'], '/v2/x/y/tags/list?n=2&last=d'),
              page(['e'])]
    with ScriptedServer(script) as server:
        result = occystrap('--insecure', '-O', 'json', 'tags', 'registry://%s/x/y' % server.host)
    assert json.loads(result.stdout) == {'schema': 1, 'source': 'registry://%s/x/y' % server.host,
                                         'repository': 'x/y', 'tags': ['a', 'b', 'c', 'd', 'e']}
    assert [path for _, path, _ in server.seen] == ['/v2/x/y/tags/list', '/v2/x/y/tags/list?n=2&last=b',
                                                    '/v2/x/y/tags/list?n=2&last=d']


def test_global_options_after_the_command(registry, repo_name, oci_image):
    digest = seed_image(registry, repo_name, 'v1', oci_image.path)
    uri = 'registry://%s/%s:v1' % (registry.host, repo_name)
    assert occystrap('digest', '--insecure', uri).stdout.decode().strip() == digest
    assert occystrap('digest', uri, '-O', 'json', '--insecure').stdout == occystrap(
        '-O', 'json', '--insecure', 'digest', uri).stdout
    described = json.loads(occystrap('info', uri, '--insecure', '--output-format=json').stdout)
    assert described[0]['digest'] == digest
    # Without --insecure the plain registry cannot be reached over TLS: the option really was applied above.
    assert occystrap('digest', uri, '--retries', '0', check=False).returncode == 1


# --- tarballs -----------------------------------------------------------------------------------------------------

def test_commands_agree_with_skopeo_on_a_docker_archive(tmp_path, oci_image):
    archive = tmp_path / 'app.tar'
    skopeo_copy('oci:%s' % oci_image.path, 'docker-archive:%s:example.com/team/app:v3' % archive)
    uri = 'tar://%s' % archive
    raw = occystrap('manifest', '--raw', uri).stdout
    assert raw == skopeo_inspect('docker-archive:%s' % archive, raw=True, parse=False)
    assert occystrap('digest', uri).stdout.decode().strip() == sha256(raw) \
        == skopeo_inspect('docker-archive:%s' % archive)['Digest']
    config = occystrap('config', uri).stdout
    assert config == skopeo_inspect('docker-archive:%s' % archive, raw=True, config=True, parse=False)
    listed = json.loads(skopeo('list-tags', 'docker-archive:%s' % archive).stdout)['Tags']
    assert occystrap('tags', uri).stdout.decode().splitlines() == listed == ['example.com/team/app:v3']


def test_commands_agree_with_skopeo_on_an_oci_archive(tmp_path, oci_image):
    archive = tmp_path / 'app-oci.tar'
    skopeo_copy('oci:%s' % oci_image.path, 'oci-archive:%s:v7' % archive)
    uri = 'tar://%s' % archive
    raw = occystrap('manifest', '--raw', uri).stdout
    assert raw == skopeo_inspect('oci-archive:%s:v7' % archive, raw=True, parse=False)
    assert sha256(raw) == occystrap('digest', uri).stdout.decode().strip() == oci_image.manifest_digest
    expected = skopeo_inspect('oci-archive:%s:v7' % archive, raw=True, config=True, parse=False)
    assert occystrap('config', uri).stdout == expected
    assert occystrap('tags', uri).stdout.decode().splitlines() == ['app-oci:v7']


def test_multi_arch_oci_archive_digest_is_the_index(tmp_path):
    index_digest, parts = multi_arch_layout(tmp_path / 'multi')
    archive = tmp_path / 'multi.tar'
    with tarfile.open(archive, 'w') as tar:
        tar.add(tmp_path / 'multi', arcname='.')
    uri = 'tar://%s' % archive
    assert occystrap('digest', uri).stdout.decode().strip() == index_digest
    assert sha256(occystrap('manifest', '--raw', uri).stdout) == index_digest
    assert sha256(occystrap('--architecture', 'arm64', 'config', uri).stdout) == parts[1].config_digest
    assert sha256(occystrap('config', uri).stdout) == parts[0].config_digest


def test_commands_agree_with_skopeo_on_an_oci_layout(tmp_path, oci_image):
    layout = tmp_path / 'layout'
    skopeo_copy('oci:%s' % oci_image.path, 'oci:%s:v7' % layout)
    skopeo_copy('oci:%s' % oci_image.path, 'oci:%s:v8' % layout)
    uri = 'ocidir://%s?ref=v7' % layout
    raw = occystrap('manifest', '--raw', uri).stdout
    assert raw == skopeo_inspect('oci:%s:v7' % layout, raw=True, parse=False)
    assert sha256(raw) == occystrap('digest', uri).stdout.decode().strip() == oci_image.manifest_digest
    expected = skopeo_inspect('oci:%s:v7' % layout, raw=True, config=True, parse=False)
    assert occystrap('config', uri).stdout == expected
    assert occystrap('tags', 'ocidir://%s' % layout).stdout.decode().splitlines() == ['layout:v7', 'layout:v8']


def test_multi_arch_oci_layout_digest_is_the_index(tmp_path):
    index_digest, parts = multi_arch_layout(tmp_path / 'multi')
    uri = 'ocidir://%s' % (tmp_path / 'multi')
    assert occystrap('digest', uri).stdout.decode().strip() == index_digest
    assert sha256(occystrap('manifest', '--raw', uri).stdout) == index_digest
    assert sha256(occystrap('--architecture', 'arm64', 'config', uri).stdout) == parts[1].config_digest


def test_a_hostile_layout_is_one_line_for_the_small_commands(tmp_path, oci_image):
    layout = tmp_path / 'layout'
    shutil.copytree(oci_image.path, layout)
    index = json.loads((layout / 'index.json').read_text())
    index['manifests'][0]['digest'] = 'sha256:../../etc/passwd'
    (layout / 'index.json').write_text(json.dumps(index))
    for command in ('digest', 'manifest', 'config', 'tags'):
        result = occystrap(command, 'ocidir://%s' % layout, check=False)
        assert result.returncode == 1, (command, result.stderr)
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and 'malformed digest' in lines[0], lines


def test_legacy_tarball_with_a_compressed_layer_gives_uncompressed_sizes(tmp_path):
    # docker save writes plain layers; a gzip layer's size in the generated manifest is its uncompressed size.
    plain = layer_tar({'a.txt': b'a\n' * 1000})
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': [sha256(plain)]}}).encode()
    archive = tmp_path / 'gz.tar'
    write_tar(archive, {'cfg.json': config, 'layer/layer.tar': gzip.compress(plain),
                        'manifest.json': json.dumps([{'Config': 'cfg.json', 'RepoTags': ['gz/app:v1'],
                                                      'Layers': ['layer/layer.tar']}]).encode()})
    manifest = json.loads(occystrap('manifest', '--raw', 'tar://%s' % archive).stdout)
    assert manifest['layers'] == [{'mediaType': 'application/vnd.docker.image.rootfs.diff.tar.gzip',
                                   'size': len(plain), 'digest': sha256(plain)}]
    assert manifest['config'] == {'mediaType': 'application/vnd.docker.container.image.v1+json',
                                  'size': len(config), 'digest': sha256(config)}
    assert occystrap('config', 'tar://%s' % archive).stdout == config


# --- errors and hints -----------------------------------------------------------------------------------------------

def one_line_error(result, code, *fragments):
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert result.stdout == b''
    return err


@pytest.mark.parametrize('command', ['tags', 'digest', 'manifest', 'config'])
def test_unsupported_source_is_a_usage_error_naming_command_and_scheme(command):
    result = occystrap(command, 'quay://org/app', check=False)
    one_line_error(result, 2, 'occystrap %s cannot read quay:// sources' % command, 'registry://', 'tar://')


@pytest.mark.parametrize('command', ['tags', 'digest', 'manifest', 'config'])
def test_shard_is_refused_by_the_small_commands(command):
    result = occystrap(command, '--shard', '0/2', 'tar:///nonexistent.tar', check=False)
    one_line_error(result, 2, 'occystrap %s reads one image or repository' % command, '--shard 0/2')


def test_docker_host_port_gets_a_registry_hint():
    result = occystrap('manifest', 'docker://localhost:5000/team/app:v1', check=False)
    one_line_error(result, 2, 'use registry://localhost:5000/team/app:v1')
    engine = occystrap('info', 'docker://127.0.0.1:5000/team/app?socket=/nonexistent/docker.sock', check=False)
    one_line_error(engine, 1, 'use registry://127.0.0.1:5000/team/app')
    plain = occystrap('info', 'docker://busybox?socket=/nonexistent/docker.sock', check=False)
    assert 'registry://' not in plain.stderr.decode()


def test_docker_host_port_as_a_destination_gets_the_hint_too(tmp_path, oci_image):
    archive = tmp_path / 'src.tar'
    skopeo_copy('oci:%s' % oci_image.path, 'docker-archive:%s:src/app:v1' % archive)
    result = occystrap('process', 'tar://%s' % archive, 'docker://localhost:5000/team/app:v1?socket=/nonexistent.sock',
                       check=False)
    one_line_error(result, 1, 'use registry://localhost:5000/team/app:v1')


@pytest.mark.parametrize('given, role, hint', [
    ('oci:/tmp/layout', 'source', 'use ocidir:///tmp/layout'),
    ('oci:/tmp/layout:v1', 'source', 'use ocidir:///tmp/layout?ref=v1'),
    ('docker-archive:/tmp/x.tar', 'source', 'use tar:///tmp/x.tar'),
    ('oci-archive:/tmp/x.tar', 'source', 'use tar:///tmp/x.tar'),
    ('oci-archive:/tmp/x.tar', 'destination', 'use tar:///tmp/x.tar?format=oci'),
    ('docker-archive:/tmp/x.tar', 'destination', 'use tar:///tmp/x.tar'),
])
def test_skopeo_transports_get_a_hint(tmp_path, given, role, hint):
    if role == 'source':
        result = occystrap('info', given, check=False)
    else:
        result = occystrap('process', 'tar://%s' % (tmp_path / 'none.tar'), given, check=False)
    one_line_error(result, 2, 'skopeo transport', hint)


def test_a_tarball_of_many_images_is_refused_by_name(tmp_path):
    archive = tmp_path / 'two.tar'
    write_tar(archive, legacy_members([(['two/%s:v1' % arch], [layer_tar({arch: arch.encode()})])
                                       for arch in ('amd64', 'arm64')]))
    result = occystrap('digest', 'tar://%s' % archive, check=False)
    one_line_error(result, 2, 'reads one image', 'two/amd64:v1', 'two/arm64:v1')
    assert occystrap('tags', 'tar://%s' % archive).stdout.decode().splitlines() == ['two/amd64:v1', 'two/arm64:v1']


# --- hostile registries ---------------------------------------------------------------------------------------------

def test_invalid_tags_from_a_registry_are_left_out_and_shown_escaped():
    body = json.dumps({'name': 'x/y', 'tags': ['good', '\x1b]0;owned\x07', '../../etc', 7, 'also-good']}).encode()
    with ScriptedServer([(200, {'Content-Type': 'application/json'}, body)]) as server:
        result = occystrap('--insecure', 'tags', 'registry://%s/x/y' % server.host)
    assert result.stdout == b'good\nalso-good\n'
    err = result.stderr.decode()
    assert '\x1b' not in err and '\\x1b' in err and 'invalid tag' in err


def test_a_manifest_that_lies_about_its_digest_is_refused():
    data = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":' \
           b'{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:' + b'0' * 64 + \
           b'","size":2},"layers":[]}'
    headers = {'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Docker-Content-Digest': 'sha256:'
               + 'a' * 64}
    with ScriptedServer([(200, headers, data)]) as server:
        result = occystrap('--insecure', 'manifest', '--raw', 'registry://%s/x/y:v1' % server.host, check=False)
    one_line_error(result, 1, 'sha256:' + 'a' * 64)


def test_an_oversized_manifest_or_tag_page_is_refused():
    huge = b'{"pad":"' + b'x' * (5 * 1024 * 1024) + b'"}'
    with ScriptedServer([(200, {'Content-Type': 'application/json'}, huge)]) as server:
        result = occystrap('--insecure', 'digest', 'registry://%s/x/y:v1' % server.host, check=False)
    one_line_error(result, 1, 'manifest', 'more than the limit of')
    pages = b'{"name":"x/y","tags":["' + b'a' * (9 * 1024 * 1024) + b'"]}'
    with ScriptedServer([(200, {'Content-Type': 'application/json'}, pages)]) as server:
        result = occystrap('--insecure', 'tags', 'registry://%s/x/y' % server.host, check=False)
    one_line_error(result, 1, 'tags', 'more than the limit of')


def test_hostile_repotags_in_a_tarball_are_not_listed(tmp_path):
    archive = tmp_path / 'bad.tar'
    write_tar(archive, legacy_members([(['../../evil:\x1b[2J'], [layer_tar({'a': b'a'})])]))
    result = occystrap('tags', 'tar://%s' % archive)
    assert result.stdout == b''
    bad = occystrap('manifest', 'tar://%s' % archive, check=False)
    err = one_line_error(bad, 1)
    assert '\x1b' not in err


@pytest.mark.parametrize('given, expected', [
    (['info', 'SRC', '--insecure'], ['--insecure', 'info', 'SRC']),
    (['-O', 'json', 'info', '-j4', '--retries', '0', 'SRC'], ['-O', 'json', '-j4', '--retries', '0', 'info', 'SRC']),
    (['process', 'A', 'B', '-f', 'exclude:pattern=x', '--http2'], ['--http2', 'process', 'A', 'B', '-f',
                                                                   'exclude:pattern=x']),
    (['manifest', '--raw', 'SRC', '--output-format=json'], ['--output-format=json', 'manifest', '--raw', 'SRC']),
    (['info', '--', '--insecure'], ['info', '--', '--insecure']),      # after --, an argument
    (['info', 'SRC', '-O'], ['info', 'SRC', '-O']),                    # no value: left for click to report
    (['info', '--help'], ['info', '--help']),                          # the command's own help
    (['nope', '--insecure'], ['nope', '--insecure']),                  # not a command: click says so
])
def test_global_options_are_moved_before_the_command(given, expected):
    from occystrap import main
    assert main.hoist_global_options(main.cli, given) == expected


def test_a_global_option_missing_its_value_after_the_command_is_a_usage_error():
    result = occystrap('info', 'tar:///nonexistent.tar', '--retries', check=False)
    assert result.returncode == 2 and result.stderr.decode().startswith('error: ') and 'retries' in \
        result.stderr.decode()
