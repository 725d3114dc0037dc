"""--referrers: cosign's signature tags and OCI 1.1 referrers travel with the manifests they refer to.

Images are seeded with skopeo; the signatures, SBOMs and referrers lists are made here with plain HTTP requests
(tests/helpers.py), as cosign, oras or a spec-following client would write them, never with our own code. The Debian
docker-registry has no referrers API, so against it both sides use the referrers tag schema (`sha256-<hex>`); the
API side runs against tools/referrers_standin.py in front of a real registry. What arrives is read back with plain
HTTP requests and skopeo.
"""

import json

import pytest

from tests.helpers import (OCI_INDEX, OCI_MANIFEST, http_push_artifact, http_put_manifest, multi_platform_layout,
                           run_occystrap, sha256)
from tests.services import Registry, build_oci_layout, seed_image, skopeo_copy, skopeo_inspect
from tools.delayproxy import FaultProxy, answer, huge
from tools.referrers_standin import ReferrersStandIn

pytestmark = pytest.mark.integration

WRITES = ('PUT', 'POST', 'PATCH', 'DELETE')
SBOM_TYPE = 'application/vnd.example.sbom.v1'
SIGNATURE_TYPE = 'application/vnd.example.signature.v1'
COSIGN_LAYER = 'application/vnd.dev.cosign.simplesigning.v1+json'


def occystrap(*args, check=True, env=None):
    return run_occystrap(*args, check=check, env=env)


def results(result):
    return json.loads(result.stdout)['results']


def descriptor(client, name, reference):
    """The descriptor of what `reference` names in `name` (read with a plain GET), for a `subject` field."""
    answer = client.get('/v2/%s/manifests/%s' % (name, reference),
                        headers={'Accept': '%s, %s' % (OCI_MANIFEST, OCI_INDEX)})
    assert answer.status_code == 200, answer.text
    return {'mediaType': answer.headers['Content-Type'], 'digest': sha256(answer.content), 'size': len(answer.content)}


def cosign_sign(client, name, digest):
    """A cosign-style signature: an image manifest of one simplesigning layer under `sha256-<hex>.sig`."""
    payload = json.dumps({'critical': {'image': {'docker-manifest-digest': digest},
                                       'type': 'cosign container image signature'}}).encode()
    config = json.dumps({'architecture': '', 'os': '', 'config': {},
                         'rootfs': {'type': 'layers', 'diff_ids': [sha256(payload)]}}).encode()
    tag = 'sha256-%s.sig' % digest.split(':', 1)[1]
    signed, _, _ = http_push_artifact(client, name, payload, COSIGN_LAYER, config=config,
                                      config_type='application/vnd.oci.image.config.v1+json',
                                      annotations=None, reference=tag)
    return tag, signed


def list_in_fallback(client, name, subject_digest, raw, artifact_type):
    """What a spec-following client does when the registry has no referrers API: add the referrer to the index
    under the referrers tag schema's tag of its subject."""
    tag = 'sha256-' + subject_digest.split(':', 1)[1]
    existing = client.get('/v2/%s/manifests/%s' % (name, tag), headers={'Accept': OCI_INDEX})
    entries = existing.json()['manifests'] if existing.status_code == 200 else []
    entries.append({'mediaType': OCI_MANIFEST, 'digest': sha256(raw), 'size': len(raw), 'artifactType': artifact_type})
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': entries}).encode()
    http_put_manifest(client, name, tag, index, OCI_INDEX)
    return tag


def attach(client, name, subject, with_fallback=True):
    """An SBOM referring to `subject` and a signature referring to the SBOM (OCI 1.1 referrers), listed in the
    tag schema's indexes when `with_fallback`; returns their digests."""
    sbom, sbom_raw, _ = http_push_artifact(client, name, b'{"spdxVersion":"SPDX-2.3"}', 'application/spdx+json',
                                           subject=subject, artifact_type=SBOM_TYPE,
                                           annotations={'org.example.sbom.format': 'spdx'})
    sbom_descriptor = {'mediaType': OCI_MANIFEST, 'digest': sbom, 'size': len(sbom_raw)}
    signature, signature_raw, _ = http_push_artifact(client, name, b'signature of the sbom',
                                                     'application/octet-stream', subject=sbom_descriptor,
                                                     artifact_type=SIGNATURE_TYPE)
    if with_fallback:
        list_in_fallback(client, name, subject['digest'], sbom_raw, SBOM_TYPE)
        list_in_fallback(client, name, sbom, signature_raw, SIGNATURE_TYPE)
    return sbom, signature


def seed_signed_image(registry, name, tmp_path, with_fallback=True):
    """An image with a cosign signature tag, an SBOM referrer and a signature of the SBOM; returns
    (image digest, cosign tag, cosign signature digest, sbom digest, sbom signature digest)."""
    layout = build_oci_layout(tmp_path / 'image', [{'etc/app.txt': b'signed app\n'}])
    digest = seed_image(registry, name, 'v1', layout.path)
    with registry.client() as client:
        tag, signed = cosign_sign(client, name, digest)
        sbom, signature = attach(client, name, descriptor(client, name, digest), with_fallback)
    return digest, tag, signed, sbom, signature


def manifest_digest(client, name, reference):
    answer = client.get('/v2/%s/manifests/%s' % (name, reference),
                        headers={'Accept': '%s, %s' % (OCI_MANIFEST, OCI_INDEX)})
    return sha256(answer.content) if answer.status_code == 200 else None


def fallback_digests(client, name, subject):
    answer = client.get('/v2/%s/manifests/sha256-%s' % (name, subject.split(':', 1)[1]), headers={'Accept': OCI_INDEX})
    if answer.status_code != 200:
        return None
    return [entry['digest'] for entry in answer.json()['manifests']]


# --- the referrers tag schema against docker-registry (no referrers API) ------------------------------------------

def test_signatures_and_referrers_arrive_with_their_digests(reg, repo_name, tmp_path):
    name = '%s/src' % repo_name
    digest, tag, signed, sbom, signature = seed_signed_image(reg, name, tmp_path)
    source = 'registry://%s/%s:v1%s' % (reg.host, name, reg.query)
    target = 'registry://%s/%s/dst:v1%s' % (reg.host, repo_name, reg.query)

    dry = results(occystrap(*reg.flags, '--referrers', '--dry-run', '-O', 'json', 'process', source, target))[0]
    assert dry['state'] == 'would copy' and dry['referrers'] == 3

    entry = results(occystrap(*reg.flags, '--referrers', '-O', 'json', 'process', source, target))[0]
    assert entry['state'] == 'copied' and entry['referrers'] == 3
    dst = '%s/dst' % repo_name
    with reg.client() as client:
        assert manifest_digest(client, dst, 'v1') == digest
        assert manifest_digest(client, dst, tag) == signed
        assert manifest_digest(client, dst, sbom) == sbom
        assert manifest_digest(client, dst, signature) == signature
        # The destination has no referrers API either: the referrers lists are kept under the tag schema's tags.
        assert fallback_digests(client, dst, digest) == [sbom]
        assert fallback_digests(client, dst, sbom) == [signature]
        listed = client.get('/v2/%s/manifests/sha256-%s' % (dst, digest.split(':', 1)[1]),
                            headers={'Accept': OCI_INDEX}).json()['manifests'][0]
        assert listed['artifactType'] == SBOM_TYPE
        assert listed['annotations'] == {'org.example.sbom.format': 'spdx'}
    # skopeo reads the signature back as the image it is.
    assert sha256(skopeo_inspect('docker://%s/%s:%s' % (reg.host, dst, tag), raw=True, parse=False)) == signed


def test_a_repeat_copies_only_new_referrers_and_writes_nothing_else(registry, repo_name, tmp_path):
    name = '%s/src' % repo_name
    digest, tag, signed, sbom, signature = seed_signed_image(registry, name, tmp_path)
    source = 'registry://%s/%s:v1?insecure=true' % (registry.host, name)
    target = 'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name)
    occystrap('--referrers', 'process', source, target)

    before = len(registry.access_log())
    entry = results(occystrap('-O', 'json', 'process', source, target, env={'OCCYSTRAP_REFERRERS': '1'}))[0]
    served = registry.access_log()[before:]
    assert entry['state'] == 'unchanged' and entry['referrers'] == 0
    assert [e for e in served if e.method in WRITES] == []
    assert [e for e in served if '/blobs/' in e.path] == []

    # A second signature appears at the source: the next run brings it, and only it.
    with registry.client() as client:
        later, later_raw, _ = http_push_artifact(client, name, b'a later signature', 'application/octet-stream',
                                                 subject=descriptor(client, name, digest),
                                                 artifact_type=SIGNATURE_TYPE)
        list_in_fallback(client, name, digest, later_raw, SIGNATURE_TYPE)
    entry = results(occystrap('--referrers', '-O', 'json', 'process', source, target))[0]
    assert entry['state'] == 'unchanged' and entry['referrers'] == 1
    with registry.client() as client:
        assert fallback_digests(client, '%s/dst' % repo_name, digest) == [sbom, later]


def test_without_the_option_nothing_but_the_image_is_copied(registry, repo_name, tmp_path):
    name = '%s/src' % repo_name
    digest, tag, signed, sbom, signature = seed_signed_image(registry, name, tmp_path)
    entry = results(occystrap('-O', 'json', 'process', 'registry://%s/%s:v1?insecure=true' % (registry.host, name),
                              'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name)))[0]
    assert entry['referrers'] == 0
    with registry.client() as client:
        assert manifest_digest(client, '%s/dst' % repo_name, tag) is None
        assert manifest_digest(client, '%s/dst' % repo_name, sbom) is None


def test_referrers_of_an_index_and_of_its_children(registry, repo_name, tmp_path):
    """cosign signs the index digest; an SBOM may refer to one platform's image; both come along."""
    name = '%s/src' % repo_name
    path, index = multi_platform_layout(tmp_path / 'layout')
    skopeo_copy('oci:%s:latest' % path, 'docker://%s/%s:v1' % (registry.host, name), '--all', '--preserve-digests')
    child = json.loads(index)['manifests'][0]
    with registry.client() as client:
        tag, signed = cosign_sign(client, name, sha256(index))
        sbom, signature = attach(client, name, {k: child[k] for k in ('mediaType', 'digest', 'size')})
    entry = results(occystrap('--referrers', '-O', 'json', 'process',
                              'registry://%s/%s:v1?insecure=true' % (registry.host, name),
                              'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name)))[0]
    assert entry['destination_digest'] == sha256(index) and entry['referrers'] == 3
    with registry.client() as client:
        dst = '%s/dst' % repo_name
        assert manifest_digest(client, dst, tag) == signed
        assert fallback_digests(client, dst, child['digest']) == [sbom]
        assert fallback_digests(client, dst, sbom) == [signature]


def test_a_rewritten_image_leaves_its_referrers(registry, repo_name, tmp_path):
    name = '%s/src' % repo_name
    digest, tag, *_ = seed_signed_image(registry, name, tmp_path)
    result = occystrap('--referrers', '-O', 'json', 'process', '-f', 'normalize-timestamps',
                       'registry://%s/%s:v1?insecure=true' % (registry.host, name),
                       'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name))
    assert results(result)[0]['referrers'] == 0
    assert 'referrers are not copied' in result.stderr
    with registry.client() as client:
        assert manifest_digest(client, '%s/dst' % repo_name, tag) is None


def test_referrers_need_registries_on_both_sides(registry, repo_name, tmp_path):
    result = occystrap('--referrers', 'process', 'registry://%s/%s:v1?insecure=true' % (registry.host, repo_name),
                       'dir://%s' % (tmp_path / 'out'), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --referrers needs a registry:// destination'
    assert not (tmp_path / 'out').exists()


# --- the referrers API (tools/referrers_standin.py) -------------------------------------------------------------------

def test_api_source_to_a_destination_without_it(registry, repo_name, tmp_path):
    """Referrers listed by the API (over several pages) arrive; the destination gets the tag schema's indexes."""
    name = '%s/src' % repo_name
    with ReferrersStandIn(registry.url, page_size=1) as standin:
        layout = build_oci_layout(tmp_path / 'image', [{'etc/app.txt': b'signed app\n'}])
        digest = seed_image(registry, name, 'v1', layout.path)
        with standin_client(standin) as client:
            subject = descriptor(client, name, digest)
            first, _, put = http_push_artifact(client, name, b'one', 'text/plain', subject=subject,
                                               artifact_type=SIGNATURE_TYPE)
            assert put.headers['OCI-Subject'] == digest
            second, _, _ = http_push_artifact(client, name, b'two', 'text/plain', subject=subject,
                                              artifact_type=SBOM_TYPE)
        entry = results(occystrap('--referrers', '-O', 'json', 'process',
                                  'registry://%s/%s:v1?insecure=true' % (standin.netloc, name),
                                  'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name)))[0]
        assert entry['referrers'] == 2
        assert [(s[1], s[3]) for s in standin.served if s[1] == digest] == [(digest, 0), (digest, 1)]
    with registry.client() as client:
        assert fallback_digests(client, '%s/dst' % repo_name, digest) == [first, second]


def test_tag_schema_source_to_a_destination_with_the_api(registry, repo_name, tmp_path):
    """The destination answers OCI-Subject: it lists the referrers itself and no tag schema index is written."""
    name = '%s/src' % repo_name
    digest, tag, signed, sbom, signature = seed_signed_image(registry, name, tmp_path)
    dst = '%s/dst' % repo_name
    with ReferrersStandIn(registry.url) as standin:
        entry = results(occystrap('--referrers', '-O', 'json', 'process',
                                  'registry://%s/%s:v1?insecure=true' % (registry.host, name),
                                  'registry://%s/%s:v1?insecure=true' % (standin.netloc, dst)))[0]
        assert entry['referrers'] == 3
        assert [d['digest'] for d in standin.listed[(dst, digest)]] == [sbom]
        assert [d['digest'] for d in standin.listed[(dst, sbom)]] == [signature]
        assert standin.listed[(dst, digest)][0]['artifactType'] == SBOM_TYPE
        with standin_client(standin) as client:
            assert manifest_digest(client, dst, tag) == signed
            listed = client.get('/v2/%s/referrers/%s' % (dst, digest)).json()['manifests']
            assert [d['digest'] for d in listed] == [sbom]
    with registry.client() as client:
        assert fallback_digests(client, dst, digest) is None


def standin_client(standin):
    import httpx
    return httpx.Client(base_url=standin.url)


# --- hostile sources and destinations -------------------------------------------------------------------------------

@pytest.fixture
def signed(registry, repo_name, tmp_path):
    """(registry, source name, image digest, sbom digest) of a signed image, listed in the tag schema only."""
    name = '%s/src' % repo_name
    digest, tag, signed, sbom, signature = seed_signed_image(registry, name, tmp_path)
    return registry, name, digest, sbom


def hostile_copy(registry, proxy, name, repo_name):
    return occystrap('--referrers', '--retries', '0', 'process',
                     'registry://%s/%s:v1?insecure=true' % (proxy.netloc, name),
                     'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name), check=False)


def one_line_error(result, fragment):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(fragment in line for line in lines), result.stderr
    assert 'Traceback' not in result.stderr


def index_answer(entries):
    return json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': entries}).encode()


@pytest.mark.parametrize('rule,fragment', [
    (lambda d: answer(r'/referrers/', 200, headers={'Content-Type': OCI_INDEX},
                      body=index_answer([{'mediaType': OCI_MANIFEST, 'digest': 'sha256:../../x', 'size': 2}])),
     'malformed digest'),
    (lambda d: huge(r'/referrers/', 9 * 1024 * 1024, headers={'Content-Type': OCI_INDEX}), 'more than the limit'),
    (lambda d: answer(r'/referrers/', 200, headers={'Content-Type': OCI_MANIFEST},
                      body=b'{"schemaVersion":2,"config":{}}'), 'is not an OCI image index'),
    (lambda d: answer(r'/referrers/', 200, headers={'Content-Type': OCI_INDEX}, body=b'{"manifests": 7}'),
     'is not an OCI image index'),
    (lambda d: answer(r'/referrers/', 200, headers={'Content-Type': OCI_INDEX},
                      body=index_answer([{'mediaType': 'text/plain', 'digest': d, 'size': 2}])),
     'no manifest or index'),
    (lambda d: answer(r'/referrers/', 200, headers={'Content-Type': OCI_INDEX, 'Link': '<{path}>; rel="next"'},
                      body=index_answer([])), 'in a loop'),
], ids=['bad-digest', 'huge', 'a-manifest', 'no-list', 'not-a-manifest', 'looping-pages'])
def test_hostile_referrers_answers_are_one_line_errors(signed, repo_name, rule, fragment):
    registry, name, digest, sbom = signed
    with FaultProxy(registry.url, [rule(digest)]) as proxy:
        one_line_error(hostile_copy(registry, proxy, name, repo_name), fragment)


def test_a_referrer_whose_subject_is_another_is_refused(signed, repo_name):
    """The API lists the signature of the SBOM as a referrer of the image: its subject says otherwise."""
    registry, name, digest, sbom = signed
    with registry.client() as client:
        signature = fallback_digests(client, name, sbom)[0]
        size = len(client.get('/v2/%s/manifests/%s' % (name, signature), headers={'Accept': OCI_MANIFEST}).content)
    body = index_answer([{'mediaType': OCI_MANIFEST, 'digest': signature, 'size': size}])
    rule = answer(r'/referrers/%s' % digest, 200, headers={'Content-Type': OCI_INDEX}, body=body)
    with FaultProxy(registry.url, [rule, answer(r'/referrers/', 404, body=b'')]) as proxy:
        one_line_error(hostile_copy(registry, proxy, name, repo_name), 'but its subject is %s' % sbom)


def test_a_tag_schema_tag_holding_no_index_is_no_referrers(registry, repo_name, tmp_path):
    """The spec: a 404 from the API and no valid index under the tag means no referrers (a warning says so)."""
    name = '%s/src' % repo_name
    layout = build_oci_layout(tmp_path / 'image', [{'etc/app.txt': b'app\n'}])
    digest = seed_image(registry, name, 'v1', layout.path)
    seed_image(registry, name, 'sha256-' + digest.split(':', 1)[1], layout.path)
    result = occystrap('--referrers', '-O', 'json', 'process',
                       'registry://%s/%s:v1?insecure=true' % (registry.host, name),
                       'registry://%s/%s/dst:v1?insecure=true' % (registry.host, repo_name))
    assert results(result)[0]['referrers'] == 0
    assert 'holds no valid referrers index' in result.stderr


def test_a_destination_tag_schema_tag_holding_no_index_stops_the_copy(signed, repo_name, tmp_path):
    registry, name, digest, sbom = signed
    dst = '%s/dst' % repo_name
    layout = build_oci_layout(tmp_path / 'other', [{'etc/other.txt': b'other\n'}])
    squatter = seed_image(registry, dst, 'sha256-' + digest.split(':', 1)[1], layout.path)
    result = occystrap('--referrers', 'process', 'registry://%s/%s:v1?insecure=true' % (registry.host, name),
                       'registry://%s/%s:v1?insecure=true' % (registry.host, dst), check=False)
    one_line_error(result, 'is not an OCI image index')
    with registry.client() as client:
        assert manifest_digest(client, dst, 'sha256-' + digest.split(':', 1)[1]) == squatter


def test_more_referrers_than_the_bound_are_refused(signed, repo_name):
    registry, name, digest, sbom = signed
    entries = [{'mediaType': OCI_MANIFEST, 'digest': 'sha256:%064x' % n, 'size': 10} for n in range(1001)]
    rule = answer(r'/referrers/', 200, headers={'Content-Type': OCI_INDEX}, body=index_answer(entries))
    with FaultProxy(registry.url, [rule]) as proxy:
        one_line_error(hostile_copy(registry, proxy, name, repo_name), 'more than 1000 referrers')


def test_a_fresh_registry_without_referrers_gets_nothing_extra(tmp_path):
    """An image with no referrers: --referrers adds reads at the source and HEADs, never a write of its own."""
    with Registry(tmp_path / 'reg') as registry:
        layout = build_oci_layout(tmp_path / 'image', [{'etc/app.txt': b'plain\n'}])
        seed_image(registry, 'plain/app', 'v1', layout.path)
        entry = results(occystrap('--referrers', '-O', 'json', 'process',
                                  'registry://%s/plain/app:v1?insecure=true' % registry.host,
                                  'registry://%s/copy/app:v1?insecure=true' % registry.host))[0]
        assert entry['referrers'] == 0
        writes = [e for e in registry.access_log() if e.method == 'PUT' and '/manifests/' in e.path
                  and e.path.startswith('/v2/copy/')]
        assert [e.path for e in writes] == ['/v2/copy/app/manifests/v1']
