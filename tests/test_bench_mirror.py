"""The benchmark's mirroring workflows (bulk-mirror, resync): their cells, and skopeo sync's YAML run for real."""

import hashlib
import json
import shlex
import subprocess

import pytest

from tests.services import Registry, build_oci_layout, seed_image, skopeo_inspect
from tools import bench_env, bench_plan

STATE = {'tls': False, 'ca': None, 'cert_dir': None,
         'source': {'host': '127.0.0.1:5001'}, 'push': {'host': '127.0.0.1:5002', 'storage': '/tmp/push store'},
         'quay': {'api': 'http://127.0.0.1:5003/api/v1'}}
IMAGES = {'mirror': {'glob': 'mirror-100/*', 'bytes': 9_000_000, 'skopeo_yaml': '/r/skopeo-sync.yaml'},
          'tag': 'latest'}


def sh_words(command):
    """The words `sh -c` would run for `command` with `echo` in front: what the shell expands is expanded."""
    return subprocess.run(['sh', '-c', 'set -- ' + command + '; printf "%s\\n" "$@"'], capture_output=True,
                          text=True, check=True).stdout.splitlines()


def test_mirror_cells_go_over_image_parallelism_with_our_default_j():
    plan = bench_plan.Plan(STATE, IMAGES, '/tmp/out', '/venv/bin/python')
    cells = list(plan.cells(['occystrap', 'skopeo', 'occystrap-0.4.17'], ['bulk-mirror', 'resync'], [1, 4], [1, 6]))
    ours = [(c['workflow'], c['j'], c['J']) for c in cells if c['tool'] == 'occystrap']
    assert ours == [('bulk-mirror', None, 1), ('bulk-mirror', None, 6), ('resync', None, 1), ('resync', None, 6)]
    assert [(c['workflow'], c['j'], c['J']) for c in cells if c['tool'] == 'skopeo'] == [
        ('bulk-mirror', None, None), ('resync', None, None)]
    assert not [c for c in cells if c['tool'] == 'occystrap-0.4.17']      # it has no registry globs
    bulk, resync = cells[0], cells[2]
    assert bulk['bytes'] == 9_000_000 and resync['bytes'] is None


def test_bulk_mirror_copies_into_a_fresh_prefix_every_run():
    plan = bench_plan.Plan(STATE, IMAGES, '/tmp/out', '/venv/bin/python')
    cell = next(plan.cells(['occystrap'], ['bulk-mirror'], [4], [6]))
    first, second = sh_words(cell['command']), sh_words(cell['command'])
    assert first[:9] == ['/venv/bin/python', '-m', 'occystrap', '--insecure', '-J', '6', 'process',
                         'registry://127.0.0.1:5001/mirror-100/*:latest', first[8]]
    for words in (first, second):
        prefix = words[8].rsplit('/', 1)[1]
        assert words[8].startswith('registry://127.0.0.1:5002/bulk-') and prefix[5:].isdigit(), words
    assert first[8] != second[8]
    # The push registry is emptied too, so storage does not grow from run to run.
    assert shlex.split(cell['prepare'].split('&&')[-1]) == ['rm', '-rf', '/tmp/push store/docker']
    skopeo = next(plan.cells(['skopeo'], ['bulk-mirror'], [4], [6]))
    words = sh_words(skopeo['command'])
    assert words[:3] == ['skopeo', '--insecure-policy', 'sync'] and words[-2] == '/r/skopeo-sync.yaml'
    assert words[-1].startswith('127.0.0.1:5002/bulk-') and words[-1] != sh_words(skopeo['command'])[-1]


def test_resync_fills_the_destination_it_then_copies_into_again():
    plan = bench_plan.Plan(STATE, IMAGES, '/tmp/out', '/venv/bin/python')
    cell = next(plan.cells(['occystrap'], ['resync'], [4], [3]))
    fill = shlex.split(cell['prepare'].split('&&')[-1].replace('>/dev/null', ''))
    command = shlex.split(cell['command'])
    assert fill[-3:] == command[-3:] == ['process', 'registry://127.0.0.1:5001/mirror-100/*:latest',
                                         'registry://127.0.0.1:5002/resync']
    assert 'rm' not in cell['prepare'].split('&&', 2)[-1]                  # nothing of the push registry is emptied
    skopeo = next(plan.cells(['skopeo'], ['resync'], [4], [3]))
    assert shlex.split(skopeo['command'])[-1] == '127.0.0.1:5002/resync' and skopeo['prepare'] == cell['prepare']


def test_the_fleet_is_sized_by_mirror_repos_and_the_same_at_every_scale():
    full = {i['key']: i for i in bench_env.expected_images(1.0)}['mirror']
    quick = {i['key']: i for i in bench_env.expected_images(0.02, 'quick/', 'quickorg', mirror_count=10)}['mirror']
    assert (full['count'], full['repo'], full['model']) == (100, 'mirror-100', 'fleet')
    assert (quick['count'], quick['repo']) == (10, 'quick/mirror-10')
    assert full['scale'] == quick['scale'] < 0.01


def test_skopeo_sync_yaml_quotes_every_name():
    text = bench_env.skopeo_sync_yaml('127.0.0.1:5001', ['a/b', 'c: d\n- e'], 'latest', tls_verify=False)
    assert text.splitlines() == ['"127.0.0.1:5001":', '  tls-verify: false', '  images:', '    "a/b":',
                                 '      - "latest"', '    "c: d\\n- e":', '      - "latest"']
    tls = bench_env.skopeo_sync_yaml('h:1', ['a'], 'v1', cert_dir='/certs dir')
    assert '  tls-verify: true' in tls.splitlines() and '  cert-dir: "/certs dir"' in tls.splitlines()


@pytest.mark.integration
def test_the_skopeo_cells_sync_exactly_the_fleet(tmp_path):
    names = ['fleet/one', 'fleet/two', 'fleet/three']
    with Registry(tmp_path / 'source') as source, Registry(tmp_path / 'push') as push:
        digests = {}
        for name in names + ['other/four']:
            layout = build_oci_layout(tmp_path / name.replace('/', '_'), layers=[{'name': name.encode()}])
            digests[name] = seed_image(source, name, 'latest', layout.path)
        yaml_path = tmp_path / 'skopeo-sync.yaml'
        yaml_path.write_text(bench_env.skopeo_sync_yaml(source.host, names, 'latest', tls_verify=False))
        state = dict(STATE, source={'host': source.host}, push={'host': push.host, 'storage': str(tmp_path / 'x')})
        images = {'mirror': {'glob': 'fleet/*', 'bytes': 1, 'skopeo_yaml': str(yaml_path)}, 'tag': 'latest'}
        plan = bench_plan.Plan(state, images, str(tmp_path / 'out'), '/venv/bin/python')
        for workflow in ('bulk-mirror', 'resync'):
            cell = next(plan.cells(['skopeo'], [workflow], [4], [3]))
            result = subprocess.run(['bash', '-c', cell['command']], capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
        catalog = push.client().get('/v2/_catalog').json()['repositories']
        bulk = sorted(n for n in catalog if n.startswith('bulk-'))
        assert len(bulk) == 3 and len({n.split('/')[0] for n in bulk}) == 1
        # Without --scoped, skopeo keeps the last name component, as occystrap's multi-image destinations do.
        assert sorted(n.split('/', 1)[1] for n in bulk) == ['one', 'three', 'two']
        assert sorted(n for n in catalog if n.startswith('resync/')) == ['resync/one', 'resync/three', 'resync/two']
        for name in names:
            raw = skopeo_inspect('docker://%s/resync/%s:latest' % (push.host, name.split('/')[1]), raw=True,
                                 parse=False)
            assert json.loads(raw) and 'sha256:' + hashlib.sha256(raw).hexdigest() == digests[name]
