"""Tests for tools/referrers_standin.py: the referrers API of the distribution spec in front of a real registry.

Manifests are pushed through the stand-in with plain HTTP requests; what the registry stores is read back from the
registry itself, past the stand-in.
"""

import json

import httpx
import pytest

from tests.helpers import OCI_INDEX, OCI_MANIFEST, http_push_artifact, sha256
from tests.services import build_oci_layout, seed_image
from tools.referrers_standin import ReferrersStandIn, descriptor_of

pytestmark = pytest.mark.integration


@pytest.fixture
def standin(registry):
    with ReferrersStandIn(registry.url, page_size=2) as proxy:
        yield proxy


@pytest.fixture
def subject(registry, repo_name, tmp_path):
    """(name, descriptor) of an image seeded with skopeo."""
    layout = build_oci_layout(tmp_path / 'image', [{'a.txt': b'subject\n'}])
    digest = seed_image(registry, repo_name, 'v1', layout.path)
    with registry.client() as client:
        raw = client.get('/v2/%s/manifests/v1' % repo_name, headers={'Accept': OCI_MANIFEST}).content
    return repo_name, {'mediaType': OCI_MANIFEST, 'digest': digest, 'size': len(raw)}


def push(client, name, subject, number, artifact_type='application/x.sig', annotations=None):
    return http_push_artifact(client, name, b'payload %d' % number, 'text/plain', subject=subject,
                              artifact_type=artifact_type, annotations=annotations)


def test_a_manifest_with_a_subject_is_stored_and_answered_with_oci_subject(standin, subject, registry):
    name, described = subject
    with httpx.Client(base_url=standin.url) as client:
        digest, raw, put = push(client, name, described, 1, annotations={'k': 'v'})
        assert put.status_code == 201 and put.headers['OCI-Subject'] == described['digest']
        # Stored as it is by the registry behind.
        with registry.client() as direct:
            assert direct.get('/v2/%s/manifests/%s' % (name, digest), headers={'Accept': OCI_MANIFEST}).content == raw
        listed = client.get('/v2/%s/referrers/%s' % (name, described['digest']))
    assert listed.status_code == 200 and listed.headers['Content-Type'] == OCI_INDEX
    assert listed.json() == {'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': digest, 'size': len(raw), 'artifactType': 'application/x.sig',
         'annotations': {'k': 'v'}}]}


def test_a_manifest_without_a_subject_gets_no_oci_subject(standin, subject):
    name, described = subject
    with httpx.Client(base_url=standin.url) as client:
        _, _, put = http_push_artifact(client, name, b'plain', 'text/plain', reference='plain')
    assert put.status_code == 201 and 'OCI-Subject' not in put.headers
    assert standin.listed == {}


def test_unknown_subjects_get_an_empty_index_and_bad_digests_a_400(standin, subject):
    name, _ = subject
    with httpx.Client(base_url=standin.url) as client:
        empty = client.get('/v2/%s/referrers/sha256:%s' % (name, 'ab' * 32))
        bad = client.get('/v2/%s/referrers/sha256:nothex' % name)
    assert empty.status_code == 200 and empty.json()['manifests'] == []
    assert bad.status_code == 400 and bad.json()['errors'][0]['code'] == 'DIGEST_INVALID'


def test_paging_with_link_and_filtering_by_artifact_type(standin, subject):
    name, described = subject
    with httpx.Client(base_url=standin.url) as client:
        signatures = [push(client, name, described, n)[0] for n in range(3)]
        sbom = push(client, name, described, 9, artifact_type='application/x.sbom')[0]
        url, pages = '/v2/%s/referrers/%s' % (name, described['digest']), []
        while url:
            answer = client.get(url)
            pages.append([d['digest'] for d in answer.json()['manifests']])
            assert 'OCI-Filters-Applied' not in answer.headers
            url = answer.links.get('next', {}).get('url')
        assert pages == [signatures[:2], [signatures[2], sbom]]
        filtered = client.get('/v2/%s/referrers/%s' % (name, described['digest']),
                              params={'artifactType': 'application/x.sig'})
        assert filtered.headers['OCI-Filters-Applied'] == 'artifactType'
        assert [d['digest'] for d in filtered.json()['manifests']] == signatures[:2]
        following = client.get(filtered.links['next']['url'])
        assert [d['digest'] for d in following.json()['manifests']] == signatures[2:]
        assert 'Link' not in following.headers


def test_a_deleted_referrer_leaves_the_list(tmp_path_factory):
    from tests.services import Registry
    with Registry(tmp_path_factory.mktemp('deleting'), extra_config={'storage': {'delete': {'enabled': True}}}) as reg:
        layout = build_oci_layout(tmp_path_factory.mktemp('image'), [{'a.txt': b'x\n'}])
        digest = seed_image(reg, 'd/app', 'v1', layout.path)
        with ReferrersStandIn(reg.url) as proxy, httpx.Client(base_url=proxy.url) as client:
            described = {'mediaType': OCI_MANIFEST, 'digest': digest, 'size': 1}
            referrer = push(client, 'd/app', described, 1)[0]
            assert client.delete('/v2/d/app/manifests/%s' % referrer).status_code == 202
            assert client.get('/v2/d/app/referrers/%s' % digest).json()['manifests'] == []


def test_descriptor_of_follows_the_spec():
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [],
                        'subject': {'digest': 'sha256:' + 'a' * 64}}).encode()
    subject, described = descriptor_of(index, OCI_INDEX)
    assert subject == 'sha256:' + 'a' * 64 and 'artifactType' not in described
    assert described['digest'] == sha256(index)
    assert descriptor_of(b'{"schemaVersion":2}', OCI_MANIFEST) is None
    assert descriptor_of(b'not json', OCI_MANIFEST) is None
