"""-O json across commands: a schema version in every object, the same key names (reference, digest), and the
destination digest of a push in the process results, checked against skopeo."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.services import seed_image, skopeo_inspect

pytestmark = pytest.mark.integration

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.upper().endswith('_PROXY') and not k.startswith('OCCYSTRAP_')}


def occystrap_json(*args):
    result = subprocess.run([sys.executable, '-m', 'occystrap', '-O', 'json', *args], capture_output=True, text=True,
                            env=CLEAN_ENV, stdin=subprocess.DEVNULL, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def test_every_command_prints_schema_reference_and_digest(registry, repo_name, oci_image):
    pushed = seed_image(registry, repo_name, 'v1', oci_image.path)
    uri = 'registry://%s/%s:v1' % (registry.host, repo_name)
    reference = '%s:v1' % repo_name

    [info] = occystrap_json('--insecure', 'info', uri)
    assert (info['schema'], info['reference'], info['digest']) == (1, reference, pushed)
    assert info['manifest_digest'] == pushed
    [check] = occystrap_json('--insecure', 'check', uri)
    assert (check['schema'], check['reference'], check['image'], check['ok']) == (1, reference, reference, True)
    found = occystrap_json('--insecure', 'search', uri, 'etc/hello.txt')
    assert [(r['schema'], r['reference'], r['path']) for r in found] == [(1, reference, 'etc/hello.txt')]

    digest = occystrap_json('--insecure', 'digest', uri)
    manifest_bytes = skopeo_inspect('docker://%s/%s:v1' % (registry.host, repo_name), raw=True, parse=False)
    assert digest == {'schema': 1, 'reference': reference, 'digest': pushed, 'size': len(manifest_bytes),
                      'media_type': 'application/vnd.oci.image.manifest.v1+json'}
    manifest = occystrap_json('--insecure', 'manifest', uri)
    assert (manifest['schema'], manifest['reference'], manifest['digest']) == (1, reference, pushed)
    assert manifest['manifest'] == json.loads(manifest_bytes)
    config = occystrap_json('--insecure', 'config', uri)
    assert (config['schema'], config['reference'], config['digest']) == (1, reference, oci_image.config_digest)
    assert config['config'] == oci_image.config
    tags = occystrap_json('--insecure', 'tags', 'registry://%s/%s' % (registry.host, repo_name))
    assert (tags['schema'], tags['repository'], tags['tags']) == (1, repo_name, ['v1'])


def test_process_results_carry_the_pushed_manifest_digest(registry, repo_name, oci_image, tmp_path):
    seed_image(registry, repo_name, 'v1', oci_image.path)
    source = 'registry://%s/%s:v1' % (registry.host, repo_name)
    summary = occystrap_json('--insecure', 'process', source, 'registry://%s/%s-copy:v2' % (registry.host, repo_name))
    assert summary['schema'] == 1
    [result] = summary['results']
    written = skopeo_inspect('docker://%s/%s-copy:v2' % (registry.host, repo_name), raw=True, parse=False)
    assert result['digest'] == sha256(written)
    assert result['reference'] == result['image'] == '%s:v1' % repo_name and result['ok']
    # An output that does not know a manifest digest says null rather than guessing.
    local = occystrap_json('--insecure', 'process', source, 'tar://%s' % (tmp_path / 'out.tar'))
    assert local['schema'] == 1 and local['results'][0]['digest'] is None
