"""`--shard I/N` (and OCCYSTRAP_SHARD): the rendezvous hash, the option, and fleets split over four shards.

The fleets: a docker-save tarball of 40 repositories (some with two tags), and a real docker-registry holding 40
repositories `fleet/r-NN:v1` plus a namespace `grow/` that one test adds a repository to. The registry's first image
is seeded with skopeo; the other repositories get the same image by the distribution API's cross-repository blob
mount and a manifest PUT (independent of the code under test, and milliseconds instead of 0.3 s of skopeo each).
tools/quay_standin.py serves the Quay API over that registry for the quay:// case. Shard summaries are merged with
tools/merge-shards.jq, fed the real `-O json` output of the runs.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from occystrap import sharding
from occystrap.pipeline import ImageRef
from tests.helpers import legacy_members, write_tar
from tests.services import Registry, build_oci_layout, layer_tar, seed_image
from tools.quay_standin import QuayStandin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MERGE = os.path.join(ROOT, 'tools', 'merge-shards.jq')
SHARDS = 4
FLEET = ['fleet/r-%02d' % i for i in range(40)]
GROW = ['grow/g-%02d' % i for i in range(12)]


def occystrap(*args, env=None):
    full_env = dict(os.environ)
    full_env.pop('OCCYSTRAP_SHARD', None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                          env=full_env, timeout=180)


def merge(summaries):
    """The merged report of summaries (JSON texts) as tools/merge-shards.jq makes it, and jq's exit status of .ok."""
    stdin = ''.join(summaries)
    report = subprocess.run(['jq', '-s', '-f', MERGE], input=stdin, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    status = subprocess.run(['jq', '-e', '.ok'], input=report.stdout, capture_output=True, text=True, timeout=60)
    return json.loads(report.stdout), status.returncode


def independent_owner(repository, count):
    """The rendezvous owner written from the definition in docs/scale.md, not from occystrap.sharding."""
    weights = [hashlib.sha256(repository.encode() + b'\0' + str(s).encode()).hexdigest() for s in range(count)]
    return weights.index(max(weights))


# --- the hash -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('text,index,count', [('0/1', 0, 1), ('3/4', 3, 4), ('07/10', 7, 10),
                                              ('99999/100000', 99999, 100000)])
def test_parse_shard_accepts_i_of_n(text, index, count):
    shard = sharding.parse_shard(text)
    assert (shard.index, shard.count) == (index, count)
    assert str(shard) == '%d/%d' % (index, count)


@pytest.mark.parametrize('text', ['3/3', '-1/2', 'a/b', '1/0', '0/0', '0/100001', '', '4', '1/2/3', ' 1/2', '1/2 ',
                                  '+1/2', '0x1/4', '1.0/4', '\u0661/\u0664', '0/4\n', '0/9999999999999999999999'])
def test_parse_shard_refuses_everything_else(text):
    with pytest.raises(ValueError):
        sharding.parse_shard(text)


def test_owner_is_the_shard_with_the_greatest_sha256_weight():
    names = ['org/app-%03d' % i for i in range(150)] + ['library/busybox', 'a', 'x/y/z', 'caf\u00e9/b']
    for count in (1, 2, 4, 7, 31):
        for name in names:
            assert sharding.owner(name, count) == independent_owner(name, count), (name, count)


def test_in_shard_names_exactly_the_owner():
    names = ['team-%d/service-%d' % (i % 7, i) for i in range(300)]
    for count in (1, 2, 3, 4, 16, 100):
        for name in names:
            keeping = [index for index in range(count) if sharding.in_shard(name, index, count)]
            assert keeping == [sharding.owner(name, count)], (name, count)


def test_assignment_is_pinned_across_versions():
    # A fleet upgraded shard by shard must keep its assignment: these owners are part of the contract.
    pinned = {'library/busybox': (3, 3, 581), 'org/app-00': (1, 1, 380), 'quay/clair': (3, 7, 767),
              'a': (3, 3, 853), 'fleet/r-07': (2, 9, 185)}
    for name, owners in pinned.items():
        assert tuple(sharding.owner(name, count) for count in (4, 10, 1000)) == owners, name


def test_adding_a_repository_moves_no_other():
    names = ['org/repo-%04d' % i for i in range(1000)]
    before = {name: sharding.owner(name, SHARDS) for name in names}
    grown = names[:500] + ['org/new-one'] + names[500:]
    after = {name: sharding.owner(name, SHARDS) for name in grown}
    assert {name: after[name] for name in names} == before


def test_one_more_shard_takes_repositories_only_from_the_others_and_about_its_share():
    names = ['org/repo-%04d' % i for i in range(2000)]
    moved = [name for name in names if sharding.owner(name, 5) != sharding.owner(name, 4)]
    assert moved and all(sharding.owner(name, 5) == 4 for name in moved)
    assert 0.15 * len(names) < len(moved) < 0.25 * len(names)


def test_shards_are_balanced():
    names = ['org/repo-%04d' % i for i in range(4000)]
    sizes = [sum(1 for name in names if sharding.in_shard(name, index, SHARDS)) for index in range(SHARDS)]
    assert sum(sizes) == len(names)
    assert all(900 <= size <= 1100 for size in sizes), sizes


def test_select_keeps_every_tag_of_a_repository_together_in_order():
    refs = [ImageRef('org/r-%02d' % (i % 10), 'v%d' % (i // 10)) for i in range(30)]
    kept = [sharding.select(refs, sharding.Shard(index, 3)) for index in range(3)]
    assert sorted((str(r) for part in kept for r in part)) == sorted(str(r) for r in refs)
    for index, part in enumerate(kept):
        assert part == [r for r in refs if sharding.owner(r.name, 3) == index]


# --- the option ---------------------------------------------------------------------------------------------------

BAD_VALUES = ['3/3', '-1/2', 'a/b', '1/0', '0/100001', '', '1/2/3', '\x1b[2J0/4', '0/4\n', '\u0661/\u0664']


@pytest.mark.parametrize('value', BAD_VALUES)
def test_bad_shard_option_is_a_usage_error_naming_it(value, tmp_path):
    result = occystrap('--shard', value, 'info', 'tar://%s' % (tmp_path / 'never-read.tar'))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and "'--shard'" in lines[0], result.stderr
    assert '\x1b' not in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('value', BAD_VALUES[:5] + ['\x1b]0;owned\x07'])
def test_bad_occystrap_shard_is_a_usage_error_naming_the_variable(value, tmp_path):
    result = occystrap('info', 'tar://%s' % (tmp_path / 'never-read.tar'), env={'OCCYSTRAP_SHARD': value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'OCCYSTRAP_SHARD' in lines[0], result.stderr
    assert '\x1b' not in result.stderr and '\x07' not in result.stderr


def test_help_lists_shard():
    result = occystrap('--help')
    assert result.returncode == 0 and '--shard I/N' in result.stdout


def test_a_source_of_one_image_cannot_be_sharded(tmp_path):
    one = write_tar(tmp_path / 'one.tar', legacy_members([(['solo:v1'], [layer_tar({'solo': b'solo\n'})])]))
    for command in (['info'], ['check'], ['process']):
        args = command + ['tar://%s' % one] + (['tar://%s' % (tmp_path / 'out.tar')] if command == ['process'] else [])
        result = occystrap('--shard', '0/2', *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            'error: --shard 0/2 needs a source that names many images (quay://, a catalog glob, a multi-image '
            'tarball); tar://%s names one' % one]
    assert sorted(os.listdir(tmp_path)) == ['one.tar']
    result = occystrap('--shard', '1/2', 'info', 'registry://me:hunter2@127.0.0.1:9/solo:v1')
    assert result.returncode == 2 and 'hunter2' not in result.stderr and 'registry://***@127.0.0.1:9/' in result.stderr


# --- a tarball fleet ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def fleet_tarball(tmp_path_factory):
    """40 repositories, every fourth with a second tag (its own image); returns (path, every reference)."""
    base = layer_tar({'etc/base.txt': b'shared base layer\n'})
    images = []
    for i, name in enumerate(FLEET):
        for tag in ('v1', 'v2') if i % 4 == 0 else ('v1',):
            own = layer_tar({'etc/name': ('%s:%s\n' % (name, tag)).encode()})
            images.append((['%s:%s' % (name, tag)], [base, own]))
    path = write_tar(tmp_path_factory.mktemp('fleet-tarball') / 'fleet.tar', legacy_members(images))
    return path, [tags[0] for tags, _ in images]


def test_four_shards_of_a_tarball_copy_every_image_once(fleet_tarball, tmp_path):
    path, references = fleet_tarball
    summaries, kept = [], {}
    for index in range(SHARDS):
        out = tmp_path / ('shard-%d' % index)
        result = occystrap('--shard', '%d/%d' % (index, SHARDS), '-O', 'json', 'process', 'tar://%s' % path,
                           'dir://%s?unique_names=true' % out)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary['shard'] == '%d/%d' % (index, SHARDS) and summary['source_images'] == len(references)
        kept[index] = [r['image'] for r in summary['results']]
        assert summary['images'] == len(kept[index]) and summary['failed'] == 0
        with open(out / 'catalog.json') as f:
            assert sorted(json.load(f)) == sorted(kept[index])
        summaries.append(result.stdout)
    assert all(kept.values()), kept                                        # no shard is empty
    copied = [ref for refs in kept.values() for ref in refs]
    assert sorted(copied) == sorted(references)                            # every image exactly once
    for index, refs in kept.items():                                       # each where the hash puts it
        assert {ref.rsplit(':', 1)[0] for ref in refs} == {n for n in FLEET if sharding.owner(n, SHARDS) == index}
    report, status = merge(summaries)
    assert report['ok'] is True and report['exit_status'] == 0 and status == 0
    assert report['images'] == len(references) and report['failed'] == 0 and report['of'] == SHARDS
    assert [r['image'] for r in report['results']] == sorted(references)
    assert report['missing_shards'] == [] and report['source_images'] == [len(references)]


def test_info_and_check_keep_the_same_shard_as_process(fleet_tarball):
    path, _ = fleet_tarball
    expected = sorted('%s:%s' % (n, t) for n in FLEET if sharding.owner(n, SHARDS) == 2
                      for t in (('v1', 'v2') if FLEET.index(n) % 4 == 0 else ('v1',)))
    info = occystrap('--shard', '2/4', '-O', 'json', 'info', 'tar://%s' % path)
    assert info.returncode == 0, info.stderr
    assert sorted(entry['reference'] for entry in json.loads(info.stdout)) == expected
    check = occystrap('-O', 'json', 'check', 'tar://%s' % path, env={'OCCYSTRAP_SHARD': '2/4'})
    assert check.returncode == 0, check.stderr
    assert sorted(item['image'] for item in json.loads(check.stdout)) == expected
    assert all(item['ok'] for item in json.loads(check.stdout))


def test_an_empty_shard_succeeds_and_says_so(tmp_path):
    names = ['pair/a', 'pair/b']
    path = write_tar(tmp_path / 'pair.tar', legacy_members(
        [(['%s:v1' % n], [layer_tar({'n': n.encode()})]) for n in names]))
    count = 8
    empty = next(i for i in range(count) if all(sharding.owner(n, count) != i for n in names))
    shard = '%d/%d' % (empty, count)
    out = tmp_path / 'out.tar'
    result = occystrap('--shard', shard, '-O', 'json', 'process', 'tar://%s' % path, 'tar://%s' % out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary['shard'], summary['source_images'], summary['images'], summary['results']) == (shard, 2, 0, [])
    assert 'shard %s: none of the 2 images' % shard in result.stderr
    assert not out.exists()
    text = occystrap('--shard', shard, 'process', 'tar://%s' % path, 'tar://%s' % out)
    assert text.returncode == 0, text.stderr
    assert text.stderr.strip().splitlines()[-1].endswith('; shard %s kept 0 of 2 images' % shard)
    info = occystrap('--shard', shard, '-O', 'json', 'info', 'tar://%s' % path)
    assert info.returncode == 0 and json.loads(info.stdout) == []


def test_merged_report_fails_for_a_failed_image_or_a_missing_shard(tmp_path):
    good = [(['mix/good-%d:v1' % i], [layer_tar({'g': b'good %d\n' % i})]) for i in range(6)]
    bad = [(['mix/bad:v1'], [layer_tar({'b': b'bad image\n'})])]
    path = write_tar(tmp_path / 'mix.tar', legacy_members(good + bad))
    data = bytearray(path.read_bytes())
    data[bytes(data).index(b'bad image')] ^= 0x01                 # the layer no longer matches its diffid
    path.write_bytes(bytes(data))
    summaries = []
    for index in range(2):
        result = occystrap('--shard', '%d/2' % index, '-O', 'json', 'process', 'tar://%s' % path,
                           'dir://%s?unique_names=true' % (tmp_path / ('out-%d' % index)))
        failed = sharding.owner('mix/bad', 2) == index
        assert result.returncode == (1 if failed else 0), result.stderr
        summaries.append(result.stdout)
    report, status = merge(summaries)
    assert report['ok'] is False and report['exit_status'] == 1 and status == 1
    assert report['failed'] == 1 and report['images'] == 6
    assert [r['image'] for r in report['results'] if not r['ok']] == ['mix/bad:v1']
    report, status = merge(summaries[:1])
    assert report['missing_shards'] == [1] and report['ok'] is False and status == 1
    report, status = merge(summaries + summaries[:1])
    assert report['duplicate_shards'] == [0] and report['duplicate_images'] and status == 1


# --- a registry fleet ---------------------------------------------------------------------------------------------

def mount_copy(client, source, name, image, tag='v1'):
    """Make `name:tag` the image already in repository `source`: mount its blobs, PUT its manifest."""
    for digest in [image.config_digest] + image.layer_digests:
        mounted = client.post('/v2/%s/blobs/uploads/' % name, params={'mount': digest, 'from': source})
        assert mounted.status_code == 201, mounted.text
    blobs = image.path / 'blobs' / 'sha256'
    manifest = (blobs / image.manifest_digest.split(':')[1]).read_bytes()
    pushed = client.put('/v2/%s/manifests/%s' % (name, tag), content=manifest,
                        headers={'Content-Type': image.manifest['mediaType']})
    assert pushed.status_code == 201, pushed.text


@pytest.fixture(scope='module')
def fleet_registry(tmp_path_factory):
    """A registry with fleet/r-00..39:v1 and grow/g-00..11:v1 (one image, seeded once by skopeo), and a mounter."""
    tmp = tmp_path_factory.mktemp('fleet-registry')
    image = build_oci_layout(tmp / 'layout', layers=[{'etc': {'type': 'dir'}, 'etc/fleet.txt': b'one fleet\n'}])
    with Registry(tmp / 'registry') as registry:
        seed_image(registry, 'seed/base', 'v1', image.path)
        with registry.client() as client:
            for name in FLEET + GROW:
                mount_copy(client, 'seed/base', name, image)

            def add(name):
                mount_copy(client, 'seed/base', name, image)
            yield registry, add


def catalog_shards(registry, path, *extra, command='info'):
    """{index: sorted references} of `info -O json` (or process) of registry://HOST/path per shard."""
    kept = {}
    for index in range(SHARDS):
        result = occystrap('--insecure', '--shard', '%d/%d' % (index, SHARDS), '-O', 'json', command,
                           'registry://%s/%s' % (registry.host, path), *extra)
        assert result.returncode == 0, result.stderr
        kept[index] = sorted(entry['reference'] for entry in json.loads(result.stdout))
    return kept


@pytest.mark.integration
def test_four_shards_of_a_catalog_glob_copy_every_repository_once(fleet_registry, tmp_path):
    registry, _ = fleet_registry
    summaries, kept = [], {}
    for index in range(SHARDS):
        out = tmp_path / ('shard-%d' % index)
        # The last shard takes its share from the environment, as a Kubernetes Indexed Job's pods do.
        option = [] if index == SHARDS - 1 else ['--shard', '%d/%d' % (index, SHARDS)]
        result = occystrap('--insecure', *option, '-O', 'json', 'process',
                           'registry://%s/fleet/*:v1' % registry.host, 'dir://%s?unique_names=true' % out,
                           env={'OCCYSTRAP_SHARD': '%d/%d' % (index, SHARDS)} if not option else None)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary['shard'] == '%d/%d' % (index, SHARDS) and summary['source_images'] == len(FLEET)
        kept[index] = [r['image'] for r in summary['results']]
        with open(out / 'catalog.json') as f:
            assert sorted(json.load(f)) == sorted(kept[index])
        summaries.append(result.stdout)
    assert all(kept.values()), kept
    assert sorted(ref for refs in kept.values() for ref in refs) == ['%s:v1' % n for n in FLEET]
    assert kept[SHARDS - 1] == ['%s:v1' % n for n in FLEET if sharding.owner(n, SHARDS) == SHARDS - 1]
    report, status = merge(summaries)
    assert report['ok'] is True and status == 0 and report['images'] == len(FLEET)


@pytest.mark.integration
def test_adding_a_repository_to_the_registry_adds_only_it(fleet_registry):
    registry, add = fleet_registry
    before = catalog_shards(registry, 'grow/*:v1')
    assert sorted(ref for refs in before.values() for ref in refs) == ['%s:v1' % n for n in GROW]
    add('grow/g-new')
    after = catalog_shards(registry, 'grow/*:v1')
    gained = {index: sorted(set(after[index]) - set(before[index])) for index in range(SHARDS)}
    assert all(set(before[index]) <= set(after[index]) for index in range(SHARDS))
    assert sorted(ref for refs in gained.values() for ref in refs) == ['grow/g-new:v1']
    assert gained[sharding.owner('grow/g-new', SHARDS)] == ['grow/g-new:v1']


@pytest.mark.integration
def test_quay_organisation_is_sharded_the_same_way(fleet_registry):
    registry, _ = fleet_registry
    with QuayStandin(registry_url=registry.url, page_size=16) as standin:
        kept = {}
        for index in range(SHARDS):
            result = occystrap('--shard', '%d/%d' % (index, SHARDS), '-O', 'json', 'info',
                               'quay://fleet/r-1*:v1?api=%s/api/v1&registry=%s&insecure=true'
                               % (standin.url, registry.host))
            assert result.returncode == 0, result.stderr
            kept[index] = sorted(entry['reference'] for entry in json.loads(result.stdout))
    tens = [n for n in FLEET if n.startswith('fleet/r-1')]
    assert sorted(ref for refs in kept.values() for ref in refs) == ['%s:v1' % n for n in tens]
    for index, refs in kept.items():
        assert {ref.rsplit(':', 1)[0] for ref in refs} == {n for n in tens if sharding.owner(n, SHARDS) == index}
