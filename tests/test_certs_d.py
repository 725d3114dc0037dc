"""Per-registry TLS (issue 13): certs.d CAs and client certificates, ?tls-verify=false, all against real registries.

certs.d roots are pointed at temporary directories with OCCYSTRAP_CERTS_D; commands run as child processes with a
HOME of their own and no proxy variables.
"""

import os
import shutil
import subprocess
import sys

import pytest

from occystrap.registry import certsd
from occystrap.registry.client import RegistryClient
from occystrap.registry.http import HttpClient
from occystrap.settings import Settings
from tests.services import Registry, seed_image, skopeo_inspect, write_client_material

PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY',
                   'NO_PROXY')


def clean_env(home, certs_d=''):
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARIABLES and not k.startswith(('XDG_', 'OCCYSTRAP_')) and k != 'DOCKER_CONFIG'}
    home.mkdir(parents=True, exist_ok=True)
    env['HOME'] = str(home)
    env['OCCYSTRAP_CERTS_D'] = str(certs_d)
    return env


def occystrap(*args, env):
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, env=env,
                          timeout=120)


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    return lines[0]


def host_dir(root, registry, *files):
    """ROOT/HOST:PORT/ holding copies of `files` as (source, name) pairs."""
    directory = root / registry.host
    directory.mkdir(parents=True, exist_ok=True)
    for source, name in files:
        shutil.copyfile(source, directory / name)
    return directory


@pytest.fixture
def seeded(tls_registry, oci_image, repo_name):
    seed_image(tls_registry, repo_name, 'v1', oci_image.path)
    return tls_registry, 'registry://%s/%s:v1' % (tls_registry.host, repo_name)


@pytest.mark.integration
def test_a_ca_in_certs_d_is_trusted_for_that_registry(seeded, oci_image, tmp_path):
    reg, uri = seeded
    untrusted = occystrap('info', uri, env=clean_env(tmp_path / 'home', tmp_path / 'empty'))
    assert untrusted.returncode == 1
    assert 'not trusted' in one_error_line(untrusted) and 'certs.d' in untrusted.stderr
    # The first root with a directory for the host is used; later roots are not merged in.
    root = tmp_path / 'certs.d'
    host_dir(root, reg, (reg.ca_path, 'ca.crt'))
    roots = '%s:%s' % (tmp_path / 'no-such-root', root)
    result = occystrap('info', uri, env=clean_env(tmp_path / 'home', roots))
    assert result.returncode == 0, result.stderr
    assert oci_image.manifest_digest in result.stdout
    shadow = tmp_path / 'shadow'
    (shadow / reg.host).mkdir(parents=True)
    shadowed = occystrap('info', uri, env=clean_env(tmp_path / 'home', '%s:%s' % (shadow, root)))
    assert shadowed.returncode == 1 and 'not trusted' in shadowed.stderr


@pytest.mark.integration
def test_tls_verify_false_speaks_tls_without_verifying(seeded, oci_image, repo_name, tmp_path):
    reg, uri = seeded
    env = clean_env(tmp_path / 'home', tmp_path / 'empty')
    result = occystrap('info', uri + '?tls-verify=false', env=env)
    assert result.returncode == 0, result.stderr
    assert oci_image.manifest_digest in result.stdout
    # Distinct from insecure=true, which is plain HTTP and so cannot talk to this TLS-only registry.
    plain = occystrap('info', uri + '?insecure=true', env=env)
    assert plain.returncode == 1 and 'leave ?insecure=true off its URI' in one_error_line(plain)
    # A push with tls-verify=false too.
    dest = 'registry://%s/%s-copy:v1?tls-verify=false' % (reg.host, repo_name)
    copy = occystrap('process', uri + '?tls-verify=false', dest, env=env)
    assert copy.returncode == 0, copy.stderr
    assert skopeo_inspect('docker://%s/%s-copy:v1' % (reg.host, repo_name))['Digest'] == oci_image.manifest_digest
    bad = occystrap('info', uri + '?tls-verify=maybe', env=env)
    assert bad.returncode == 2 and 'tls-verify' in one_error_line(bad)


@pytest.fixture(scope='module')
def mtls_registry(tmp_path_factory):
    """A TLS registry that demands a client certificate signed by a client CA generated here."""
    work = tmp_path_factory.mktemp('mtls')
    client = write_client_material(work / 'client')
    with Registry(work / 'registry', tls=True, client_ca=client) as reg:
        yield reg, client


@pytest.mark.integration
def test_mutual_tls_with_a_client_certificate_from_certs_d(mtls_registry, oci_image, tmp_path):
    reg, client = mtls_registry
    seed_image(reg, 'mtls/app', 'v1', oci_image.path)
    uri = 'registry://%s/mtls/app:v1' % reg.host
    root = tmp_path / 'certs.d'
    directory = host_dir(root, reg, (reg.ca_path, 'ca.crt'))
    without = occystrap('info', uri, env=clean_env(tmp_path / 'home', root))
    assert without.returncode == 1
    assert 'client certificate' in one_error_line(without)
    shutil.copyfile(client['cert'], directory / 'client.cert')
    shutil.copyfile(client['key'], directory / 'client.key')
    result = occystrap('info', uri, env=clean_env(tmp_path / 'home', root))
    assert result.returncode == 0, result.stderr
    assert oci_image.manifest_digest in result.stdout
    # tls-verify=false still presents the client certificate.
    (directory / 'ca.crt').unlink()
    unverified = occystrap('info', uri + '?tls-verify=false', env=clean_env(tmp_path / 'home', root))
    assert unverified.returncode == 0, unverified.stderr


@pytest.mark.integration
def test_unusable_certs_d_material_is_one_line(seeded, tmp_path):
    reg, uri = seeded
    root = tmp_path / 'certs.d'
    directory = host_dir(root, reg)
    (directory / 'client.key').write_text('not a key\n')
    lonely = occystrap('info', uri, env=clean_env(tmp_path / 'home', root))
    assert lonely.returncode == 1
    assert 'has client.key but no client.cert' in one_error_line(lonely)
    (directory / 'client.key').unlink()
    (directory / 'ca.crt').write_text('-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n')
    garbage = occystrap('info', uri, env=clean_env(tmp_path / 'home', root))
    assert garbage.returncode == 1
    assert 'cannot use certs.d CA %s' % (directory / 'ca.crt') in one_error_line(garbage)


def test_hostile_registry_names_never_become_certs_d_paths(tmp_path):
    root = tmp_path / 'certs.d'
    (root / 'ok.example:5000').mkdir(parents=True)
    (root / 'ok.example:5000' / 'ca.crt').write_text('x')
    # What '..' or a path would reach if it were joined blindly.
    (tmp_path / 'ca.crt').write_text('x')
    assert certsd.find('ok.example:5000', [str(root)]).ca_files == (str(root / 'ok.example:5000' / 'ca.crt'),)
    for hostile in ('..', '.', '../certs.d/ok.example:5000', 'ok.example:5000/..', '/etc', '', 'a..b',
                    'ok.example:5000\x00', '-bad.example'):
        assert certsd.find(hostile, [str(root)]) is None, hostile
    assert certsd.authority('::1', 5000) == '[::1]:5000'
    assert certsd.authority('reg.example', None) == 'reg.example'


@pytest.mark.integration
def test_tls_contexts_are_built_per_host_and_only_when_needed(registry, tls_registry, tmp_path, monkeypatch):
    monkeypatch.setenv('OCCYSTRAP_CERTS_D', str(tmp_path / 'certs.d'))
    plain = HttpClient(Settings())
    try:
        assert RegistryClient(plain, registry.host, insecure=True).ping()
        assert plain._ssl is None and plain._contexts == {} and plain._host_tls == {}
    finally:
        plain.close()
    host_dir(tmp_path / 'certs.d', tls_registry, (tls_registry.ca_path, 'ca.crt'))
    http = HttpClient(Settings())
    try:
        client = RegistryClient(http, tls_registry.host)
        assert client.ping() and client.ping()
        assert list(http._host_tls) == [tls_registry.host] and len(http._contexts) == 1
        assert http._ssl is None     # the shared context was never needed
        unverified = RegistryClient(http, tls_registry.host, tls_verify=False)
        assert unverified.ping()
        assert len(http._contexts) == 2
    finally:
        http.close()
