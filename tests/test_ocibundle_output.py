"""oci:// output: a runtime bundle whose config.json follows runc's conventions and which runc really runs."""

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from occystrap.errors import OccystrapError
from occystrap.outputs.ocibundle import OCIBundleOutput
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.services import build_oci_layout
from tests.helpers import WHITEOUT_LAYERS, image_config, image_from_layout, sha256, snapshot, umoci_rootfs, write_tar

PASSWD = b'root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n'
GROUP = b'root:x:0:\nbob:x:1000:\nwheel:x:10:bob\nstaff:x:50:alice,bob\n'
IMAGE_CONFIG = {'config': {
    'Entrypoint': ['/bin/sh', '-c'], 'Cmd': ['echo "$A $HOME $(pwd)"; read x < /hello; echo "$x"; exit 3'],
    'Env': ['PATH=/bin', 'A=1'], 'User': 'bob', 'WorkingDir': '/srv', 'Labels': {'org.example': 'yes'},
    'ExposedPorts': {'80/tcp': {}, '53/udp': {}}, 'StopSignal': 'SIGTERM'}}


def host_file(path, mode=0o755):
    with open(path, 'rb') as f:
        return {'type': 'file', 'data': f.read(), 'mode': mode}


def runnable_layers():
    """A tiny image that really runs: the host's dash with the C library it needs, users, and a data file."""
    base = {'bin': {'type': 'dir'}, 'bin/sh': host_file('/bin/dash'), 'lib': {'type': 'dir'},
            'lib/x86_64-linux-gnu': {'type': 'dir'},
            'lib/x86_64-linux-gnu/libc.so.6': host_file('/lib/x86_64-linux-gnu/libc.so.6'),
            'lib64': {'type': 'dir'}, 'lib64/ld-linux-x86-64.so.2': host_file('/lib64/ld-linux-x86-64.so.2'),
            'etc': {'type': 'dir'}, 'etc/passwd': PASSWD, 'etc/group': GROUP, 'srv': {'type': 'dir'}}
    return [base, {'hello': b'hello from the bundle\n'}]


def write_bundle(dest, image, settings=None):
    ctx = RunContext(settings or Settings(parallel=3))
    try:
        out = OCIBundleOutput(parse_uri('oci://%s' % dest, 'output'), ctx)
        try:
            out.write(image)
        except BaseException:
            out.abort()
            raise
        out.finalize()
        return ctx
    finally:
        ctx.close()


@pytest.fixture
def bundle(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', runnable_layers(), config_extra=IMAGE_CONFIG)
    dest = tmp_path / 'bundle'
    write_bundle(dest, image_from_layout(oci))
    return oci, dest, json.loads((dest / 'config.json').read_text())


def runc_spec(tmp_path):
    where = tmp_path / 'runc-spec'
    where.mkdir()
    subprocess.run(['runc', 'spec'], cwd=where, check=True)
    return json.loads((where / 'config.json').read_text())


def test_config_follows_runc_spec_conventions(bundle, tmp_path):
    _, dest, config = bundle
    reference = runc_spec(tmp_path)
    assert set(reference) <= set(config)
    assert set(config['process']) == set(reference['process']) | {'user'}
    for key in ('capabilities', 'rlimits', 'noNewPrivileges'):
        assert config['process'][key] == reference['process'][key], key
    assert config['mounts'] == reference['mounts']
    assert config['linux'] == reference['linux']
    assert config['root'] == {'path': 'rootfs', 'readonly': False}
    assert config['process']['terminal'] is False
    assert config['ociVersion'] == '1.0.2'
    assert sorted(os.listdir(dest)) == ['config.json', 'rootfs']
    assert oct(os.stat(dest).st_mode & 0o777) == oct(0o700)


def test_process_and_annotations_match_umoci(bundle, tmp_path):
    oci, _, config = bundle
    umoci_bundle = tmp_path / 'umoci'
    subprocess.run(['umoci', 'unpack', '--image', '%s:latest' % oci.path, str(umoci_bundle)], check=True,
                   capture_output=True)
    theirs = json.loads((umoci_bundle / 'config.json').read_text())
    process = config['process']
    assert process['args'] == ['/bin/sh', '-c', IMAGE_CONFIG['config']['Cmd'][0]] == theirs['process']['args']
    assert process['user'] == theirs['process']['user'] == {'uid': 1000, 'gid': 1000, 'additionalGids': [10, 50]}
    assert process['cwd'] == theirs['process']['cwd'] == '/srv'
    # umoci adds TERM because its bundles have a terminal; ours do not.
    assert process['env'] == [e for e in theirs['process']['env'] if not e.startswith('TERM=')]
    assert process['env'] == ['PATH=/bin', 'A=1', 'HOME=/home/bob']
    assert config['annotations'] == {k: v for k, v in theirs['annotations'].items() if v}
    assert config['annotations']['org.opencontainers.image.exposedPorts'] == '53/udp,80/tcp'
    assert config['annotations']['org.example'] == 'yes'


def test_runc_runs_the_bundle(bundle, tmp_path):
    _, dest, _ = bundle
    state = tmp_path / 'runc-state'
    container = 'occystrap-test-%d' % os.getpid()
    try:
        result = subprocess.run(['runc', '--root', str(state), 'run', '--bundle', str(dest), container],
                                capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(['runc', '--root', str(state), 'delete', '--force', container], capture_output=True)
    assert result.returncode == 3, 'runc run failed: %s' % result.stderr
    assert result.stdout.splitlines() == ['1 /home/bob /srv', 'hello from the bundle']


def test_rootfs_matches_umoci(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', WHITEOUT_LAYERS, config_extra={'config': {'Cmd': ['/run']}})
    dest = tmp_path / 'bundle'
    ctx = write_bundle(dest, image_from_layout(oci))
    assert snapshot(dest / 'rootfs') == snapshot(umoci_rootfs(oci, tmp_path))
    config = json.loads((dest / 'config.json').read_text())
    assert config['process']['args'] == ['/run']
    assert config['process']['user'] == {'uid': 0, 'gid': 0}          # no /etc/passwd: runc's defaults
    assert config['process']['cwd'] == '/'
    assert ctx.warnings == []


def test_numeric_user_and_group(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', runnable_layers(),
                           config_extra={'config': {'User': '1000:wheel', 'Cmd': ['x']}})
    dest = tmp_path / 'bundle'
    write_bundle(dest, image_from_layout(oci))
    config = json.loads((dest / 'config.json').read_text())
    assert config['process']['user'] == {'uid': 1000, 'gid': 10}


def test_unknown_user_fails_and_leaves_nothing(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', runnable_layers(), config_extra={'config': {'User': 'nobody'}})
    dest = tmp_path / 'bundle'
    with pytest.raises(OccystrapError, match="user 'nobody' is not in the image's /etc/passwd"):
        write_bundle(dest, image_from_layout(oci))
    assert sorted(os.listdir(tmp_path)) == ['layout']


def test_user_lookup_does_not_follow_a_symlinked_passwd(tmp_path):
    layers = runnable_layers()
    layers[0]['etc/passwd'] = {'type': 'symlink', 'target': str(tmp_path / 'host-passwd')}
    (tmp_path / 'host-passwd').write_text('mallory:x:4242:4242::/:/bin/sh\n')
    oci = build_oci_layout(tmp_path / 'layout', layers, config_extra={'config': {'User': 'mallory'}})
    with pytest.raises(OccystrapError, match='mallory'):
        write_bundle(tmp_path / 'bundle', image_from_layout(oci))


def test_non_empty_destination_is_refused(tmp_path):
    dest = tmp_path / 'bundle'
    dest.mkdir()
    (dest / 'something').write_text('mine')
    oci = build_oci_layout(tmp_path / 'layout', [{'a': b'a'}])
    with pytest.raises(OccystrapError, match='not an empty directory'):
        write_bundle(dest, image_from_layout(oci))
    assert os.listdir(dest) == ['something']
    empty = tmp_path / 'empty'
    empty.mkdir()
    write_bundle(empty, image_from_layout(oci))
    assert (empty / 'rootfs' / 'a').read_bytes() == b'a'


def test_cli_tarball_to_bundle(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', runnable_layers(), config_extra=IMAGE_CONFIG)
    archive = tmp_path / 'image.tar'
    subprocess.run(['tar', '-C', str(oci.path), '-cf', str(archive), '.'], check=True)
    dest = tmp_path / 'bundle'
    result = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'tar://%s' % archive, 'oci://%s' % dest],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (dest / 'rootfs' / 'hello').read_bytes() == b'hello from the bundle\n'
    assert json.loads((dest / 'config.json').read_text())['process']['user']['uid'] == 1000
    again = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'tar://%s' % archive, 'oci://%s' % dest],
                           capture_output=True, text=True)
    assert again.returncode == 1
    assert again.stderr.startswith('error: ') and 'not an empty directory' in again.stderr


def hostile_config_tarball(path, field, value):
    """A one-layer docker save tarball whose config gives `field` of its "config" object the wrong JSON type."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode='w') as tar:
        info = tarfile.TarInfo('hello.txt')
        info.size = 3
        tar.addfile(info, io.BytesIO(b'hi\n'))
    layer = layer.getvalue()
    config = json.loads(image_config([layer]))
    config['config'][field] = value
    config = json.dumps(config).encode()
    config_name = sha256(config).split(':')[1] + '.json'
    manifest = [{'Config': config_name, 'RepoTags': ['test/hostile:latest'], 'Layers': ['l/layer.tar']}]
    return write_tar(path, {config_name: config, 'l/layer.tar': layer, 'manifest.json': json.dumps(manifest).encode()})


@pytest.mark.parametrize('field,value', [('Entrypoint', 5), ('Cmd', 'sh -c id'), ('Env', [1]), ('User', ['root']),
                                         ('WorkingDir', {}), ('Labels', {'a': 1}), ('ExposedPorts', ['80/tcp'])])
def test_config_fields_of_the_wrong_type_are_one_line_and_leave_nothing(tmp_path, field, value):
    source = hostile_config_tarball(tmp_path / 'hostile.tar', field, value)
    dest = tmp_path / 'bundle'
    result = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'tar://%s' % source, 'oci://%s' % dest],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith('error: ') and len(result.stderr.splitlines()) == 1, result.stderr
    assert 'internal error' not in result.stderr and field in result.stderr
    assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == ['hostile.tar']
