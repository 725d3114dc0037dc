"""Names and tags that come from a source are checked before they become a destination repository, tag or file.

A multi-image source pushed under a prefix gives each image the prefix plus its own last name component and its own
tag: a component '..' would leave the prefix, a tag with '#' or '?' would cut the URL short or add a query. Each such
image fails with one line naming the bad part; the others of the run go on, and the run exits 1.

Inputs check names where they read them too (oci.check_name), so the runs of the real command below fail those
images at the input; the tests that build `Image` objects directly prove each output's own check.
"""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from occystrap import model, uris
from occystrap.errors import OccystrapError
from occystrap.pipeline import RunContext
from occystrap.streams import sha256_bytes
from occystrap.uris import InvalidNameError, validate_repository, validate_tag
from tests.services import layer_tar

GOOD = 'org/app:v1'
# RepoTags of a docker save tarball, and a piece the image's error must name.
HOSTILE = {
    'org/..:v1': "org/..",
    'org/.:v2': "org/.",
    'org/tool:v1#frag': 'v1#frag',
    'org/tool:v2?x=1': 'v2?x=1',
    'org/Tool:v3': 'Tool',
    'org/tool:-v4': '-v4',
    'org/tool:.v5': '.v5',
    'org/a..b:v6': 'a..b',
    'org/tool:' + 'x' * 129: 'x' * 60,        # errors show a long name truncated
}


def occystrap(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OCCYSTRAP_')}
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=240)


def docker_save(path, repo_tags):
    """A docker save tarball with one small image per RepoTags entry (each with a layer of its own)."""
    entries = []
    with tarfile.open(path, 'w') as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for number, tag in enumerate(repo_tags):
            layer = layer_tar({'file%d' % number: b'image %d\n' % number})
            config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {},
                                 'rootfs': {'type': 'layers', 'diff_ids': [sha256_bytes(layer)]}}).encode()
            config_name = '%s.json' % sha256_bytes(config).split(':')[1]
            add(config_name, config)
            add('layer%d/layer.tar' % number, layer)
            entries.append({'Config': config_name, 'RepoTags': [tag], 'Layers': ['layer%d/layer.tar' % number]})
        add('manifest.json', json.dumps(entries).encode())
    return path


def results_of(result):
    """{image: error or None} from the -O json summary."""
    summary = json.loads(result.stdout)
    return {r['image']: r['error'] for r in summary['results']}


def assert_hostile_failed_good_ok(result):
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    errors = results_of(result)
    assert errors.pop(GOOD) is None, result.stdout
    assert len(errors) == len(HOSTILE), errors
    for reference, error in errors.items():
        assert error and '\n' not in error, reference
    # References may be shown quoted and truncated: match each by what it starts with.
    shown = {reference.strip("'").split("'...")[0]: error for reference, error in errors.items()}
    for tag, piece in HOSTILE.items():
        error = next(e for reference, e in shown.items() if tag.startswith(reference))
        assert piece in error, (tag, error)
    return errors


# --- the validators --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['', '.', '..', 'a/..', '../a', 'a/../b', 'a//b', '/a', 'a/', 'A', 'a b', 'a\nb',
                                  'a?b', 'a#b', 'a%2Fb', 'a@b', 'a:b', '-a', 'a-', 'a..b', 'a___b', 'é',
                                  'a/' * 128 + 'a'])
def test_bad_repository_names_are_refused(name):
    with pytest.raises(InvalidNameError) as e:
        validate_repository(name, 'image x')
    assert str(e.value).startswith('image x') and '\n' not in str(e.value)


@pytest.mark.parametrize('name', ['a', 'library/ubuntu', 'a.b/c-d/e__f', 'a--b', 'x' * 255])
def test_good_repository_names_pass(name):
    assert validate_repository(name, 'x') == name


def test_a_host_is_allowed_only_where_asked_and_must_be_a_host():
    assert validate_repository('localhost:5000/app', 'x', host=True) == 'localhost:5000/app'
    assert validate_repository('registry.example/team/app', 'x', host=True)
    for name in ('localhost:5000/app', 'registry.example:99999x/app'):
        with pytest.raises(InvalidNameError):
            validate_repository(name, 'x', host=name.startswith('registry'))
    with pytest.raises(InvalidNameError):
        validate_repository('ho st:1/app', 'x', host=True)


@pytest.mark.parametrize('tag', ['', '.v', '-v', 'v#x', 'v?x', 'v/x', 'v:x', 'v x', 'v\x1b', 'x' * 129, None])
def test_bad_tags_are_refused(tag):
    with pytest.raises(InvalidNameError):
        validate_tag(tag, 'x')


def test_the_validators_follow_the_uri_grammar():
    # What a destination URI may say, a derived name may be, and the other way round.
    for name in ('team/app', 'a.b/c'):
        assert uris.parse_uri('registry://127.0.0.1:5000/%s:v1' % name, 'output').name == validate_repository(name, '')
    for name in ('team/..', 'Team/app'):
        with pytest.raises(uris.UsageError):
            uris.parse_uri('registry://127.0.0.1:5000/%s:v1' % name, 'output')


# --- a registry destination: nothing reaches a repository outside the prefix ------------------------------------

@pytest.mark.integration
def test_a_hostile_multi_image_tarball_pushed_under_a_prefix_stays_inside_it(fresh_registry, tmp_path):
    archive = docker_save(tmp_path / 'hostile.tar', [GOOD] + list(HOSTILE))
    prefix = 'mirror/team'
    result = occystrap('-O', 'json', '-J', '2', 'process', 'tar://%s' % archive,
                       'registry://%s/%s?insecure=true' % (fresh_registry.host, prefix))
    errors = assert_hostile_failed_good_ok(result)
    # Each refused image has its own one-line error on stderr, as the run went on.
    logged = [line for line in result.stderr.splitlines() if line.startswith('ERROR: ')]
    assert len(logged) == len(HOSTILE), result.stderr
    for reference, error in errors.items():
        assert any(error in line for line in logged), (reference, result.stderr)
    client = fresh_registry.client()
    catalog = client.get('/v2/_catalog').json()['repositories']
    assert catalog == ['%s/app' % prefix], catalog
    assert client.get('/v2/%s/app/tags/list' % prefix).json()['tags'] == ['v1']
    # No request of the run named another repository, or a tag other than v1.
    for entry in fresh_registry.access_log():
        if entry.path in ('/v2/', '/v2/_catalog') or not entry.path.startswith('/v2/'):
            continue
        assert entry.path.startswith('/v2/%s/app/' % prefix), entry
        if '/manifests/' in entry.path:
            assert re.match(r'^/v2/%s/app/manifests/(v1|sha256:[0-9a-f]{64})$' % prefix, entry.path), entry


@pytest.mark.integration
def test_a_push_refused_for_its_name_sends_no_request(fresh_registry):
    from occystrap.outputs.registry import RegistryOutput
    config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': []}})
    ctx = RunContext()
    try:
        output = RegistryOutput(uris.parse_uri('registry://%s/mirror?insecure=true' % fresh_registry.host, 'output'),
                                ctx, multi_image=True)
        before = len(fresh_registry.access_log())
        # Built directly, so no input validation stands in front of the output's own check.
        for name, tag in (('evil/..', 'v1'), ('evil/app', 'v1#x'), ('evil/app', 'v1?x=1'), ('', 'v1'),
                          ('evil/a\nb', 'v1')):
            image = model.Image(name=name, tag=tag, config_bytes=config.encode(), layers=[])
            with pytest.raises(OccystrapError) as e:
                output.write(image)
            assert '\n' not in str(e.value)
        assert len(fresh_registry.access_log()) == before
    finally:
        ctx.close()


# --- file destinations: RepoTags, catalog names and file names --------------------------------------------------

def test_tar_destination_writes_only_the_good_names(tmp_path):
    archive = docker_save(tmp_path / 'hostile.tar', [GOOD] + list(HOSTILE))
    out = tmp_path / 'out' / 'all.tar'
    out.parent.mkdir()
    result = occystrap('-O', 'json', 'process', 'tar://%s' % archive, 'tar://%s' % out)
    assert_hostile_failed_good_ok(result)
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile('manifest.json'))
    assert [entry['RepoTags'] for entry in manifest] == [[GOOD]]
    assert os.listdir(out.parent) == ['all.tar']


def test_dir_unique_names_writes_no_file_named_from_a_bad_name(tmp_path):
    archive = docker_save(tmp_path / 'hostile.tar', [GOOD] + list(HOSTILE))
    dest = tmp_path / 'box' / 'images'
    dest.parent.mkdir()
    result = occystrap('-O', 'json', 'process', 'tar://%s' % archive, 'dir://%s?unique_names=true&expand=true' % dest)
    assert_hostile_failed_good_ok(result)
    assert os.listdir(dest.parent) == ['images']
    assert json.loads((dest / 'catalog.json').read_text()) == {GOOD: 'manifest-org+app@v1.json'}
    names = sorted(os.listdir(dest))
    assert [n for n in names if n.startswith(('manifest-', 'rootfs-'))] == ['manifest-org+app@v1.json',
                                                                            'rootfs-org+app@v1']


def test_a_single_image_with_a_bad_tag_is_one_line_and_no_output(tmp_path):
    archive = docker_save(tmp_path / 'one.tar', ['org/tool:v1#frag'])
    out = tmp_path / 'out.tar'
    result = occystrap('process', 'tar://%s' % archive, 'tar://%s' % out)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'v1#frag' in lines[0], result.stderr
    assert sorted(os.listdir(tmp_path)) == ['one.tar']


# --- an engine destination ----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_docker_destination_loads_only_the_good_names(podman_service, tmp_path):
    archive = docker_save(tmp_path / 'hostile.tar', [GOOD] + list(HOSTILE))
    result = occystrap('-O', 'json', 'process', 'tar://%s' % archive,
                       'docker://occystrap-names/mirror?socket=%s' % podman_service.socket_path)
    assert_hostile_failed_good_ok(result)
    loaded = sorted(name for image in podman_service.images() for name in (image.get('Names') or [])
                    if 'occystrap-names' in name)
    assert loaded == ['docker.io/occystrap-names/mirror/app:v1'], loaded
    podman_service.podman('rmi', 'occystrap-names/mirror/app:v1')


# --- each output's own check, with no input in front of it -------------------------------------------------------

def direct_image(name, tag):
    config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': []}})
    return model.Image(name=name, tag=tag, config_bytes=config.encode(), layers=[])


DIRECT = [('evil/..', 'v1'), ('evil/app', 'v1#x'), ('evil/app', 'v1?x=1'), ('evil/a\nb', 'v1'), ('../../x', 'v1'),
          ('evil/app', '../../x')]


@pytest.mark.parametrize('name,tag', DIRECT)
def test_tar_output_refuses_a_bad_name_before_writing(name, tag, tmp_path):
    from occystrap.outputs.tarball import TarballOutput
    ctx = RunContext()
    try:
        output = TarballOutput(uris.parse_uri('tar://%s' % (tmp_path / 'out.tar'), 'output'), ctx, multi_image=True)
        with pytest.raises(InvalidNameError) as e:
            output.write(direct_image(name, tag))
        assert '\n' not in str(e.value).replace('\\n', '')
        output.abort()
    finally:
        ctx.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('name,tag', DIRECT)
def test_dir_output_refuses_a_bad_name_before_writing(name, tag, tmp_path):
    from occystrap.outputs.directory import DirectoryOutput
    dest = tmp_path / 'images'
    ctx = RunContext()
    try:
        output = DirectoryOutput(uris.parse_uri('dir://%s?unique_names=true' % dest, 'output'), ctx, multi_image=True)
        with pytest.raises(InvalidNameError):
            output.write(direct_image(name, tag))
        output.abort()
    finally:
        ctx.close()
    assert not any(n.startswith(('manifest', 'rootfs', 'catalog')) for n in os.listdir(dest)) if dest.exists() else True
    assert sorted(os.listdir(tmp_path)) in ([], ['images'])


@pytest.mark.integration
def test_docker_output_refuses_a_bad_name_before_the_engine_sees_it(podman_service):
    from occystrap.outputs.docker import DockerOutput
    before = sorted(n for image in podman_service.images() for n in (image.get('Names') or []))
    ctx = RunContext()
    try:
        output = DockerOutput(uris.parse_uri('docker://occystrap-direct/m?socket=%s' % podman_service.socket_path,
                                             'output'), ctx, multi_image=True)
        for name, tag in DIRECT:
            if name == '../../x':
                continue    # under a prefix only the last component counts: 'x' is a fine name there
            with pytest.raises(InvalidNameError):
                output.write(direct_image(name, tag))
        output.finalize()
    finally:
        ctx.close()
    assert sorted(n for image in podman_service.images() for n in (image.get('Names') or [])) == before
