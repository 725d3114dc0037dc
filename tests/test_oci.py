"""Unit tests of the OCI value types in occystrap/oci.py: digests, platforms, descriptors, manifests, indexes, JSON."""

import hashlib
import json

import pytest

from occystrap import oci
from occystrap.errors import CorruptImageError

HEX = 'ab' * 32
DIGEST = 'sha256:' + HEX


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


# --- digests -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('text', ['', 'nocolon', 'sha256:../x', 'sha256:' + HEX[:-1], 'sha256:' + HEX + '0',
                                  'sha256:' + HEX.upper(), 'sha512:' + HEX, 'md5:' + HEX[:32], 'sha256:',
                                  ':' + HEX, 'sha256:../../' + HEX[6:], ' ' + DIGEST, DIGEST + '\n', None, 5])
def test_parse_digest_rejects_malformed(text):
    with pytest.raises(oci.InvalidDigestError) as raised:
        oci.parse_digest(text, 'layer 3 of x')
    message = str(raised.value)
    assert message.startswith('layer 3 of x has a malformed digest ')
    assert '\n' not in message
    assert isinstance(raised.value, CorruptImageError)


def test_parse_digest_accepts_both_algorithms():
    assert oci.parse_digest(DIGEST, 'x') == DIGEST
    assert oci.parse_digest('sha512:' + 'cd' * 64, 'x') == 'sha512:' + 'cd' * 64


def test_shown_value_is_escaped_and_truncated():
    with pytest.raises(oci.InvalidDigestError) as raised:
        oci.parse_digest('sha256:\x1b[31m' + 'x' * 500, 'config')
    message = str(raised.value)
    assert '\x1b' not in message and '\\x1b' in message
    assert len(message) < 200 and message.endswith('...' + " (expected sha256:<64 hex> or sha512:<128 hex>)")


def test_shown_values():
    assert oci.shown('a\nb') == "'a\\nb'"
    assert oci.shown(None) == 'None' and oci.shown(5) == '5'
    assert oci.shown('x' * 100) == repr('x' * 80) + '...'
    assert oci.shown(list(range(100))).endswith('...')
    for control in ('\x1b', '\x9b', '\u202e', '\r', '\x07'):
        assert control not in oci.shown('a%sb' % control)


def test_digest_of_and_blob_path():
    assert oci.digest_of(b'hello') == sha256(b'hello')
    assert oci.digest_of(b'hello', 'sha512') == 'sha512:' + hashlib.sha512(b'hello').hexdigest()
    with pytest.raises(ValueError):
        oci.digest_of(b'hello', 'md5')
    assert oci.blob_path(DIGEST) == 'blobs/sha256/' + HEX
    assert oci.digest_hex(DIGEST) == HEX
    for bad in ('sha256:../../etc/passwd', 'nocolon', ''):
        with pytest.raises(oci.InvalidDigestError):
            oci.blob_path(bad)
        with pytest.raises(oci.InvalidDigestError):
            oci.digest_hex(bad)


# --- names -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['busybox', 'library/busybox', 'localhost:5000/a/b', 'registry.example/x-y/z_z',
                                  'a.b/c', '[::1]:5000/x'])
def test_valid_repository_names(name):
    assert oci.valid_repository(name)


@pytest.mark.parametrize('name', ['', 'Busybox', 'a/../b', 'a/..', '../a', '/a', 'a/', 'a//b', 'x\ny', 'a\x1b[2J',
                                  '$(touch /tmp/x)', 'a;b', 'a b', 'host:99999/x', None, 'a' * 256, 'busybox\n',
                                  'x..y/a', '.x/a', 'x-/a', 'localhost:0/a', 'a/b\n'])
def test_invalid_repository_names(name):
    assert not oci.valid_repository(name)
    with pytest.raises(oci.InvalidNameError, match='names an invalid repository'):
        oci.check_name(name, 'latest', 'RepoTags of entry 0')


@pytest.mark.parametrize('tag', ['', '.hidden', '-x', 'a/b', 'a\nb', '$(id)', 'a' * 129, 'v1#x', 'v1?y', 'latest\n'])
def test_invalid_tags(tag):
    assert not oci.valid_tag(tag)
    with pytest.raises(oci.InvalidNameError, match='names an invalid tag'):
        oci.check_name('busybox', tag, 'x')


def test_valid_tags():
    for tag in ('latest', 'v1.2.3', '1', '_x', 'A-b.c_d', 'a' * 128):
        assert oci.check_name('busybox', tag, 'x') == ('busybox', tag)
    assert oci.check_name('busybox', None, 'x') == ('busybox', None)


# --- JSON --------------------------------------------------------------------------------------------------------

def test_load_json_errors_are_one_line():
    cases = {b'[' * 100000: 'nested too deeply', b'{"a": ': 'is not valid JSON', b'\xff\xfe{}': 'not UTF-8',
             b'': 'is not valid JSON'}
    for data, expected in cases.items():
        with pytest.raises(CorruptImageError) as raised:
            oci.load_json(data, 'tarball t.tar member manifest.json')
        message = str(raised.value)
        assert message.startswith('tarball t.tar member manifest.json ') and expected in message
        assert '\n' not in message
    with pytest.raises(CorruptImageError, match='x is not a JSON object'):
        oci.load_json_object(b'[1]', 'x')
    assert oci.load_json(b'\xef\xbb\xbf{"a": 1}', 'x') == {'a': 1}
    assert oci.load_json('{"a": [1]}', 'x') == {'a': [1]}


def test_config_diff_ids_are_validated():
    assert oci.config_diff_ids({'rootfs': {'diff_ids': [DIGEST]}}, 'c') == [DIGEST]
    for bad in ('', 'nocolon', 'sha256:../../x', 7):
        with pytest.raises(oci.InvalidDigestError, match='c diff_id 1 has a malformed digest'):
            oci.config_diff_ids({'rootfs': {'diff_ids': [DIGEST, bad]}}, 'c')
    for config in ({}, {'rootfs': []}, {'rootfs': {'diff_ids': 'sha256:x'}}, []):
        with pytest.raises(CorruptImageError, match='c has no rootfs.diff_ids list'):
            oci.config_diff_ids(config, 'c')


# --- platforms ---------------------------------------------------------------------------------------------------

def P(text):
    return oci.Platform.parse(text)


def test_platform_parse_and_str():
    assert P('linux/amd64') == oci.Platform('linux', 'amd64')
    assert P('linux/arm/v6') == oci.Platform('linux', 'arm', 'v6')
    assert str(P('linux/arm64/v8')) == 'linux/arm64/v8'
    assert str(P('linux/arm64')) == 'linux/arm64'           # shown as written, normalised only for matching
    for bad in ('linux', 'linux/', '/amd64', 'a/b/c/d', '', None):
        with pytest.raises(ValueError):
            P(bad)


def test_platform_normalisation():
    assert P('linux/arm64').normalized() == oci.Platform('linux', 'arm64', 'v8')
    assert P('linux/arm').normalized() == oci.Platform('linux', 'arm', 'v7')
    assert P('linux/x86_64').normalized() == oci.Platform('linux', 'amd64')
    assert P('linux/aarch64').normalized() == oci.Platform('linux', 'arm64', 'v8')
    assert P('Linux/AMD64').normalized() == oci.Platform('linux', 'amd64')


@pytest.mark.parametrize('want, have, matches', [
    ('linux/arm64', 'linux/arm64/v8', True),
    ('linux/arm64/v8', 'linux/arm64', True),
    ('linux/arm64', 'linux/arm64', True),
    ('linux/aarch64', 'linux/arm64/v8', True),
    ('linux/arm/v6', 'linux/arm/v7', False),
    ('linux/arm/v7', 'linux/arm/v6', False),
    ('linux/arm', 'linux/arm/v7', True),
    ('linux/arm', 'linux/arm/v6', False),
    ('linux/x86_64', 'linux/amd64', True),
    ('linux/amd64', 'windows/amd64', False),
    ('linux/amd64', 'linux/arm64', False),
    ('linux/amd64', 'unknown/unknown', False),
    ('linux/s390x', 'linux/amd64', False),
    ('linux/riscv64', 'linux/riscv64', True),
])
def test_platform_matching(want, have, matches):
    assert P(want).matches(P(have)) is matches


def test_select_platform_takes_the_first_match():
    entries = [oci.Descriptor(oci.MEDIA_OCI_MANIFEST, 'sha256:' + c * 64, 1, platform=P(p))
               for c, p in (('1', 'linux/arm/v6'), ('2', 'linux/arm/v7'), ('3', 'linux/arm64'),
                            ('4', 'unknown/unknown'))]
    assert oci.select_platform(entries, P('linux/arm/v7')) is entries[1]
    assert oci.select_platform(entries, P('linux/arm')) is entries[1]
    assert oci.select_platform(entries, P('linux/arm64/v8')) is entries[2]
    assert oci.select_platform(entries, P('linux/amd64')) is None


def test_platform_from_dict_round_trip_and_rejects():
    value = {'architecture': 'amd64', 'os': 'windows', 'os.version': '10.0.17763', 'os.features': ['win32k'],
             'variant': 'v2', 'features': ['sse4']}
    platform = oci.Platform.from_dict(value, 'x')
    assert platform.os_version == '10.0.17763' and platform.to_dict() == value
    for bad in ([], {'os': 1, 'architecture': 'amd64'}, {'os': 'linux', 'os.features': 'x'}):
        with pytest.raises(CorruptImageError):
            oci.Platform.from_dict(bad, 'x')


# --- descriptors -------------------------------------------------------------------------------------------------

def test_descriptor_round_trip():
    value = {'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': DIGEST, 'size': 7, 'urls': ['https://x/y'],
             'annotations': {'a': 'b'}, 'platform': {'architecture': 'arm64', 'os': 'linux', 'variant': 'v8'},
             'artifactType': 'application/example'}
    descriptor = oci.Descriptor.from_dict(value, 'entry 0')
    assert descriptor.platform == P('linux/arm64/v8') and descriptor.size == 7
    assert descriptor.to_dict() == value
    assert list(descriptor.to_dict(docker=True))[:3] == ['mediaType', 'size', 'digest']
    assert list(descriptor.to_dict())[:3] == ['mediaType', 'digest', 'size']


@pytest.mark.parametrize('value, message', [
    ({'digest': 'sha256:../x', 'size': 1}, 'malformed digest'),
    ({'size': 1}, 'malformed digest'),
    ({'digest': DIGEST, 'size': -1}, 'not a non-negative integer'),
    ({'digest': DIGEST, 'size': '12'}, 'not a non-negative integer'),
    ({'digest': DIGEST, 'size': True}, 'not a non-negative integer'),
    ({'digest': DIGEST, 'size': 1.5}, 'not a non-negative integer'),
    ({'digest': DIGEST, 'size': 1, 'mediaType': 5}, 'mediaType'),
    ({'digest': DIGEST, 'size': 1, 'annotations': {'a': 1}}, 'annotations'),
    ({'digest': DIGEST, 'size': 1, 'urls': 'x'}, 'urls'),
    ({'digest': DIGEST, 'size': 1, 'platform': 'linux/amd64'}, 'platform'),
    ('not an object', 'not a descriptor object'),
])
def test_descriptor_rejects(value, message):
    with pytest.raises(CorruptImageError, match=message):
        oci.Descriptor.from_dict(value, 'layer 0')


# --- manifests and indexes ---------------------------------------------------------------------------------------

def test_manifest_round_trip_keeps_exact_bytes_and_digest():
    # Pretty-printed, odd key order, extra fields: parsing keeps it all byte for byte.
    raw = json.dumps({'schemaVersion': 2, 'layers': [
        {'size': 3, 'digest': 'sha256:' + '1' * 64, 'mediaType': oci.MEDIA_OCI_LAYER_GZIP}],
        'config': {'mediaType': oci.MEDIA_OCI_CONFIG, 'size': 2, 'digest': 'sha256:' + '2' * 64},
        'mediaType': oci.MEDIA_OCI_MANIFEST, 'annotations': {'k': 'v'}, 'x-extra': [1, 2]}, indent=3).encode()
    manifest = oci.Manifest.parse(raw)
    assert manifest.raw == raw and manifest.digest == sha256(raw)
    assert manifest.media_type == oci.MEDIA_OCI_MANIFEST and manifest.annotations == {'k': 'v'}
    assert manifest.config.digest == 'sha256:' + '2' * 64 and manifest.config.size == 2
    assert [(d.digest, d.size, d.compression) for d in manifest.layers] == [('sha256:' + '1' * 64, 3, 'gzip')]
    built = oci.Manifest.build(manifest.config, manifest.layers, annotations=manifest.annotations)
    again = oci.Manifest.parse(built.raw)
    assert again.raw == built.raw and again.digest == built.digest
    assert oci.Manifest.build(manifest.config, manifest.layers).raw == \
        oci.Manifest.build(manifest.config, manifest.layers).raw


def test_docker_manifest_build_matches_containers_image_field_order():
    config = oci.Descriptor(oci.MEDIA_DOCKER_CONFIG, 'sha256:' + '2' * 64, 2)
    layer = oci.Descriptor(oci.MEDIA_DOCKER_LAYER_GZIP, 'sha256:' + '1' * 64, 3)
    built = oci.Manifest.build(config, [layer], oci.MEDIA_DOCKER_MANIFEST)
    expected = ('{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","size":2,"digest":"sha256:%s"},'
                '"layers":[{"mediaType":"%s","size":3,"digest":"sha256:%s"}]}'
                % (oci.MEDIA_DOCKER_MANIFEST, oci.MEDIA_DOCKER_CONFIG, '2' * 64, oci.MEDIA_DOCKER_LAYER_GZIP,
                   '1' * 64)).encode()
    assert built.raw == expected and built.digest == sha256(expected)
    assert oci.Manifest.parse(built.raw).media_type == oci.MEDIA_DOCKER_MANIFEST
    assert oci.Manifest.parse(built.raw, oci.MEDIA_OCI_MANIFEST).media_type == oci.MEDIA_OCI_MANIFEST


def test_manifest_rejects_malformed():
    good_config = {'mediaType': oci.MEDIA_OCI_CONFIG, 'digest': DIGEST, 'size': 1}
    for document, message in (({'layers': []}, 'has no config descriptor'),
                              ({'config': good_config, 'layers': {}}, 'has no layers list'),
                              ({'config': good_config, 'layers': [{'digest': 'nocolon', 'size': 1}]},
                               'm layer 0 has a malformed digest'),
                              ({'config': dict(good_config, digest='sha256:' + HEX.upper())},
                               'm config has a malformed digest'),
                              ([], 'is not a JSON object')):
        with pytest.raises(CorruptImageError, match=message):
            oci.Manifest.parse(json.dumps(document).encode(), source='m')


def test_index_round_trip_and_platforms():
    raw = json.dumps({'schemaVersion': 2, 'mediaType': oci.MEDIA_OCI_INDEX, 'manifests': [
        {'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': 'sha256:' + '1' * 64, 'size': 10,
         'platform': {'os': 'linux', 'architecture': 'amd64'}},
        {'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': 'sha256:' + '2' * 64, 'size': 11,
         'platform': {'os': 'linux', 'architecture': 'arm64', 'variant': 'v8'}},
        {'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': 'sha256:' + '3' * 64, 'size': 12,
         'platform': {'os': 'unknown', 'architecture': 'unknown'}}]}, indent=1).encode()
    index = oci.Index.parse(raw)
    assert index.raw == raw and index.digest == sha256(raw) and index.media_type == oci.MEDIA_OCI_INDEX
    assert index.platforms() == ['linux/amd64', 'linux/arm64/v8']
    assert index.select(P('linux/arm64')).digest == 'sha256:' + '2' * 64
    assert index.select(P('linux/arm/v7')) is None
    built = oci.Index.build(index.manifests, sort_keys=True)
    assert oci.Index.parse(built.raw).manifests == index.manifests
    assert built.raw == json.dumps(json.loads(built.raw), separators=(',', ':'), sort_keys=True).encode()
    listed = oci.Index.parse(raw, oci.MEDIA_DOCKER_LIST)
    assert listed.media_type == oci.MEDIA_DOCKER_LIST


def test_index_rejects_bad_children():
    for children, message in (([{'digest': 'sha256:../../x', 'size': 1}], 'i entry 0 has a malformed digest'),
                              ([{'digest': DIGEST, 'size': 1, 'platform': {'os': ['linux']}}], 'platform'),
                              ('x', 'has no manifests list')):
        with pytest.raises(CorruptImageError, match=message):
            oci.Index.parse(json.dumps({'schemaVersion': 2, 'manifests': children}).encode(), source='i')


def test_is_index_document():
    assert oci.is_index_document(oci.MEDIA_DOCKER_LIST, {})
    assert not oci.is_index_document(oci.MEDIA_OCI_MANIFEST, {'manifests': []})
    assert oci.is_index_document(None, {'manifests': []})
    assert not oci.is_index_document(None, {'layers': []})


def test_model_reexports_the_one_definition():
    from occystrap import model
    assert model.MEDIA_OCI_MANIFEST is oci.MEDIA_OCI_MANIFEST
    assert model.layer_media_type is oci.layer_media_type


# --- referrers and cosign's tags ---------------------------------------------------------------------------------

def test_referrers_tag_and_cosign_tags():
    assert oci.referrers_tag(DIGEST) == 'sha256-' + HEX
    assert oci.referrers_tag('sha512:' + 'cd' * 64) == 'sha512-' + ('cd' * 64)[:64]
    assert oci.cosign_tags(DIGEST) == ['sha256-%s%s' % (HEX, suffix) for suffix in ('.sig', '.att', '.sbom')]
    assert oci.cosign_tags('sha512:' + 'cd' * 64) == []       # longer than a tag may be
    with pytest.raises(oci.InvalidDigestError):
        oci.referrers_tag('sha256:../' + HEX)


def _artifact(**extra):
    document = {'schemaVersion': 2, 'mediaType': oci.MEDIA_OCI_MANIFEST,
                'config': {'mediaType': 'application/vnd.oci.empty.v1+json', 'digest': DIGEST, 'size': 2},
                'layers': []}
    document.update(extra)
    return json.dumps(document).encode()


def test_subject_and_artifact_type_are_checked_when_parsed():
    subject = {'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': DIGEST, 'size': 7}
    manifest = oci.Manifest.parse(_artifact(subject=subject, artifactType='application/x.sbom'))
    assert manifest.subject.digest == DIGEST and manifest.artifact_type == 'application/x.sbom'
    assert oci.Manifest.parse(_artifact()).subject is None
    with pytest.raises(oci.InvalidDigestError, match='manifest subject has a malformed digest'):
        oci.Manifest.parse(_artifact(subject={'digest': 'sha256:nope', 'size': 1}))
    with pytest.raises(CorruptImageError, match='artifactType that is not a string'):
        oci.Manifest.parse(_artifact(artifactType=5))


def test_referrer_descriptor_follows_the_spec():
    with_type = oci.Manifest.parse(_artifact(artifactType='application/x.sig', annotations={'a': 'b'}))
    described = oci.referrer_descriptor(with_type, oci.MEDIA_OCI_MANIFEST)
    assert (described.digest, described.size) == (with_type.digest, len(with_type.raw))
    assert described.artifact_type == 'application/x.sig' and described.annotations == {'a': 'b'}
    # Without artifactType, a manifest's config media type stands in; an index has none.
    plain = oci.referrer_descriptor(oci.Manifest.parse(_artifact()), oci.MEDIA_OCI_MANIFEST)
    assert plain.artifact_type == 'application/vnd.oci.empty.v1+json' and plain.annotations is None
    index = oci.Index.parse(json.dumps({'schemaVersion': 2, 'mediaType': oci.MEDIA_OCI_INDEX,
                                        'manifests': []}).encode())
    assert oci.referrer_descriptor(index, oci.MEDIA_OCI_INDEX).artifact_type is None


@pytest.mark.parametrize('media_type,body,fragment', [
    (oci.MEDIA_OCI_MANIFEST, {'manifests': []}, 'is not an OCI image index'),
    (None, {'mediaType': oci.MEDIA_DOCKER_LIST, 'manifests': []}, 'is not an OCI image index'),
    (None, {'schemaVersion': 2}, 'is not an OCI image index'),
    (None, {'manifests': [{'mediaType': 'text/plain', 'digest': DIGEST, 'size': 1}]}, 'no manifest or index'),
    (None, {'manifests': [{'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': 'x', 'size': 1}]}, 'malformed digest'),
    (None, [], 'not a JSON object'),
])
def test_parse_referrers_refuses_what_is_no_referrers_list(media_type, body, fragment):
    with pytest.raises(CorruptImageError, match=fragment):
        oci.parse_referrers(json.dumps(body).encode(), media_type, 'the referrers')


def test_parse_referrers_reads_a_list():
    entry = {'mediaType': oci.MEDIA_OCI_MANIFEST, 'digest': DIGEST, 'size': 3, 'artifactType': 'application/x.sig'}
    listed = oci.parse_referrers(json.dumps({'schemaVersion': 2, 'mediaType': oci.MEDIA_OCI_INDEX,
                                             'manifests': [entry]}).encode(), oci.MEDIA_OCI_INDEX, 'the referrers')
    assert [(d.digest, d.artifact_type) for d in listed.manifests] == [(DIGEST, 'application/x.sig')]
