"""The -O json summary of `process`: what tests and scripts read instead of parsing log lines."""

import json
import subprocess
import sys

import pytest

from tests.services import build_oci_layout, seed_image, skopeo_copy

pytestmark = pytest.mark.integration

PUSH_KEYS = {'uploaded', 'uploaded_bytes', 'mounted', 'present', 'compressed', 'cache_hits', 'manifests'}


def occystrap(*args):
    result = subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=240)
    assert result.returncode == 0, result.stderr
    return result


def blob_puts(registry, repository):
    """Completed blob uploads (the closing PUT of each) the registry served for a repository."""
    prefix = '/v2/%s/blobs/uploads/' % repository
    return [e for e in registry.access_log() if e.method == 'PUT' and e.path.startswith(prefix) and e.status == 201]


def test_push_counts_agree_with_what_the_registry_served(fresh_registry, tmp_path):
    image = build_oci_layout(tmp_path / 'img', [{'a.txt': b'a\n'}, {'b.txt': b'b\n'}])
    seed_image(fresh_registry, 'src/app', 'v1', image.path)
    source = 'registry://%s/src/app:v1?insecure=true' % fresh_registry.host

    # To another repository of the same registry: every blob is mounted, nothing uploaded.
    mounted = json.loads(occystrap('-O', 'json', 'process', source,
                                   'registry://%s/copy/app:v1?insecure=true' % fresh_registry.host).stdout)
    assert set(mounted['push']) == PUSH_KEYS
    assert (mounted['push']['mounted'], mounted['push']['uploaded'], mounted['push']['manifests']) == (3, 0, 1)
    assert blob_puts(fresh_registry, 'copy/app') == []
    assert mounted['images'] == 1 and mounted['layers'] == 2 and mounted['failed'] == 0

    # From a docker save tarball: nothing to mount from, so the compressed layer and the config are uploaded.
    other = build_oci_layout(tmp_path / 'other', [{'c.txt': b'c\n'}])
    tarball = tmp_path / 'other.tar'
    skopeo_copy('oci:%s:latest' % other.path, 'docker-archive:%s:example/other:v1' % tarball)
    uploaded = json.loads(occystrap('-O', 'json', 'process', 'tar://%s' % tarball,
                                    'registry://%s/up/other:v1?insecure=true' % fresh_registry.host).stdout)
    assert uploaded['push']['uploaded'] == len(blob_puts(fresh_registry, 'up/other')) == 2
    assert uploaded['push']['compressed'] == 1 and uploaded['push']['uploaded_bytes'] > 0


def test_no_push_counts_without_a_registry_destination(oci_image, tmp_path):
    archive = tmp_path / 'image.tar'
    skopeo_copy('oci:%s:latest' % oci_image.path, 'docker-archive:%s:example/app:v1' % archive)
    summary = json.loads(occystrap('-O', 'json', 'process', 'tar://%s' % archive, 'dir://%s' % (tmp_path / 'out'))
                         .stdout)
    assert 'push' not in summary
    assert summary['images'] == 1 and summary['layers'] == 2
