"""The info, search and check commands, and process with the filters, end to end through the CLI.

Test images are OCI layouts from ``build_oci_layout`` turned into `docker save` tarballs by skopeo (an independent
writer), or multi-image tarballs assembled here by hand; results are read with jq, tar and skopeo.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from occystrap import reports
from occystrap.model import Image, Layer
from tests.services import build_oci_layout, layer_tar, skopeo, skopeo_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = [
    {'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from occystrap tests\n', 'etc/app.conf': b'debug=0\n',
     'var/cache/apt/pkgcache.bin': b'cache' * 100},
    {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho tool\n', 'mode': 0o755},
     'usr/bin/tool-link': {'type': 'symlink', 'target': 'tool'}, 'usr/lib/mod.pyc': b'\x00pyc'},
]


def occystrap(*args, check_rc=None):
    result = subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    if check_rc is not None:
        assert result.returncode == check_rc, (result.returncode, result.stdout, result.stderr)
    return result


def jq(expression, text):
    """Evaluate a jq expression over JSON text with the real jq (proves the output parses for scripts)."""
    result = subprocess.run(['jq', '-c', expression], input=text, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def image_tar(tmp_path):
    """A `docker save` tarball of a two-layer image, written by skopeo; returns (path, OciImage)."""
    oci = build_oci_layout(tmp_path / 'oci', layers=LAYERS)
    path = tmp_path / 'image.tar'
    skopeo_copy('oci:%s:latest' % oci.path, 'docker-archive:%s:example/app:1.0' % path)
    return path, oci


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def write_docker_save(path, images):
    """A legacy multi-image `docker save` tarball: images is [(repo_tag, [layer files dict...])]; layers shared."""
    members = {}
    manifest = []
    for number, (repo_tag, layers) in enumerate(images):
        diff_ids, names = [], []
        for files in layers:
            data = layer_tar(files)
            diff_ids.append('sha256:' + _sha(data))
            names.append('%s/layer.tar' % _sha(data))
            members[names[-1]] = data
        config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'created': '2020-01-01T00:00:00Z',
                             'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
                             'history': [{'created_by': 'image %d layer %d' % (number, i)}
                                         for i in range(len(layers))]}).encode()
        members['%s.json' % _sha(config)] = config
        manifest.append({'Config': '%s.json' % _sha(config), 'RepoTags': [repo_tag], 'Layers': names})
    members['manifest.json'] = json.dumps(manifest).encode()
    with tarfile.open(path, 'w') as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def corrupt_member(path, name_startswith, at=600):
    """Flip a byte inside the first member whose name starts with the prefix (size unchanged)."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.isreg() and m.name.startswith(name_startswith))
    with open(path, 'r+b') as f:
        f.seek(member.offset_data + min(at, member.size - 1))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xff]))


# --- info -------------------------------------------------------------------------------------------------------

def test_info_text(image_tar):
    path, oci = image_tar
    out = occystrap('info', 'tar://%s' % path, check_rc=0).stdout
    assert out.splitlines()[0].endswith('example/app:1.0')
    assert 'platform: linux/amd64' in out
    assert oci.config_digest in out
    for number, diffid in enumerate(oci.diff_ids):
        assert diffid[:19] in out
        assert 'occystrap test layer %d' % number in out


def test_info_json_parses_with_jq(image_tar):
    path, oci = image_tar
    out = occystrap('-O', 'json', 'info', 'tar://%s' % path, check_rc=0).stdout
    (summary,) = jq('.[] | {tag, platform, config_digest, created, n: (.layers | length)}', out)
    assert summary == {'tag': '1.0', 'platform': 'linux/amd64', 'config_digest': oci.config_digest,
                       'created': '2020-09-13T12:26:40Z', 'n': 2}
    assert jq('.[0].layers[].diffid', out) == oci.diff_ids
    layer_sizes = jq('.[0].layers[].size', out)
    assert layer_sizes == [len(layer_tar(files)) for files in LAYERS]


def test_info_multi_image_tarball(tmp_path):
    path = write_docker_save(tmp_path / 'multi.tar', [('one/app:1', [LAYERS[0]]),
                                                      ('two/app:2', [LAYERS[0], LAYERS[1]])])
    out = occystrap('-O', 'json', '-J', '2', 'info', 'tar://%s' % path, check_rc=0).stdout
    assert jq('.[] | [.reference, (.layers | length)]', out) == [['one/app:1', 1], ['two/app:2', 2]]


def test_info_of_a_missing_tarball_fails_with_one_line(tmp_path):
    result = occystrap('info', 'tar://%s' % (tmp_path / 'nope.tar'), check_rc=1)
    assert result.stderr.startswith('error: ') and len(result.stderr.splitlines()) == 1


# --- search -----------------------------------------------------------------------------------------------------

def test_search_glob_text_and_script_friendly(image_tar):
    path, oci = image_tar
    out = occystrap('search', 'tar://%s' % path, 'usr/bin/*', check_rc=0).stdout
    assert out.splitlines() == ['docker.io/example/app:1.0 %s usr/bin/tool' % oci.diff_ids[1],
                                'docker.io/example/app:1.0 %s usr/bin/tool-link' % oci.diff_ids[1]]
    out = occystrap('search', '--script-friendly', 'tar://%s' % path, '*.conf', check_rc=0).stdout
    assert out.splitlines() == ['docker.io/example/app:1.0:%s:etc/app.conf' % oci.diff_ids[0]]


def test_search_regex_json(image_tar):
    path, oci = image_tar
    out = occystrap('-O', 'json', 'search', '--regex', 'tar://%s' % path, r'\.(pyc|bin)$', check_rc=0).stdout
    expected = [['var/cache/apt/pkgcache.bin', 'file', oci.diff_ids[0]], ['usr/lib/mod.pyc', 'file', oci.diff_ids[1]]]
    assert jq('.[] | [.path, .type, .diffid]', out) == expected
    assert jq('.[0] | [.image, .tag, .size]', out) == [['docker.io/example/app', '1.0', 500]]


def test_search_bad_regex_is_a_usage_error(image_tar):
    path, _ = image_tar
    result = occystrap('search', '--regex', 'tar://%s' % path, '(', check_rc=2)
    assert 'regular expression' in result.stderr


# --- check ------------------------------------------------------------------------------------------------------

def test_check_ok(image_tar):
    path, _ = image_tar
    assert occystrap('check', 'tar://%s' % path, check_rc=0).stdout == 'docker.io/example/app:1.0 ok\n'
    out = occystrap('-O', 'json', 'check', 'tar://%s' % path, check_rc=0).stdout
    reference = 'docker.io/example/app:1.0'
    assert jq('.', out) == [[{'schema': 1, 'image': reference, 'reference': reference, 'ok': True, 'errors': []}]]


def test_check_reports_a_corrupted_layer(image_tar):
    path, oci = image_tar
    corrupt_member(path, oci.diff_ids[1].split(':')[1])
    result = occystrap('check', 'tar://%s' % path, check_rc=1)
    assert result.stdout.startswith('docker.io/example/app:1.0 FAILED: ')
    assert oci.diff_ids[1] in result.stdout
    out = occystrap('-O', 'json', 'check', 'tar://%s' % path, check_rc=1).stdout
    (report,) = jq('.[0]', out)
    assert report['ok'] is False and len(report['errors']) == 1 and 'digest mismatch' in report['errors'][0]
    # --fast does not read layer data, so the damage goes unseen
    occystrap('check', '--fast', 'tar://%s' % path, check_rc=0)


def test_check_fast_finds_config_problems(tmp_path):
    path = tmp_path / 'bad-config.tar'
    data = layer_tar({'f': b'1'})
    config = json.dumps({'architecture': 'amd64', 'rootfs': {'type': 'tarball',
                                                             'diff_ids': ['sha256:' + _sha(data)]}}).encode()
    members = {'%s/layer.tar' % _sha(data): data, '%s.json' % _sha(config): config,
               'manifest.json': json.dumps([{'Config': '%s.json' % _sha(config), 'RepoTags': ['bad/cfg:1'],
                                             'Layers': ['%s/layer.tar' % _sha(data)]}]).encode()}
    with tarfile.open(path, 'w') as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    result = occystrap('check', '--fast', 'tar://%s' % path, check_rc=1)
    assert 'config has no os' in result.stdout and "rootfs.type is 'tarball'" in result.stdout


def test_check_multi_image_one_bad_does_not_stop_the_other(tmp_path):
    only_second = {'opt/unique': b'only in two' * 100}
    path = write_docker_save(tmp_path / 'multi.tar', [('one/app:1', [LAYERS[0]]),
                                                      ('two/app:2', [LAYERS[0], only_second])])
    corrupt_member(path, _sha(layer_tar(only_second)))
    result = occystrap('-J', '2', 'check', 'tar://%s' % path, check_rc=1)
    lines = result.stdout.splitlines()      # in the tarball's order, whichever finished first
    assert len(lines) == 2 and lines[0] == 'one/app:1 ok'
    assert lines[1].startswith('two/app:2 FAILED: digest mismatch')


def test_config_errors_agree_with_layers(tmp_path):
    path = tmp_path / 'l.tar'
    path.write_bytes(layer_tar({'f': b'1'}))
    layer = Layer.from_file(str(path))
    config = {'os': 'linux', 'architecture': 'amd64', 'rootfs': {'type': 'layers', 'diff_ids': [layer.diffid]},
              'history': [{'created_by': 'a'}, {'created_by': 'b', 'empty_layer': True}]}
    image = Image('x', 'y', json.dumps(config).encode(), [layer])
    assert reports.config_errors(image) == []
    config['rootfs']['diff_ids'] = ['sha256:' + '0' * 64]
    config['history'].append({'created_by': 'c'})
    errors = reports.config_errors(Image('x', 'y', json.dumps(config).encode(), [layer]))
    assert len(errors) == 2
    assert 'layer 0 has diffid' in errors[0] and 'history has 2 non-empty entries' in errors[1]


# --- process with filters ---------------------------------------------------------------------------------------

def layer_names(archive, tmp_path):
    """Member lists of each layer of a tarball we wrote, in image order, read with skopeo and GNU tar."""
    target = tmp_path / 'unpacked'
    skopeo_copy('docker-archive:%s' % archive, 'dir:%s' % target)
    manifest = json.loads((target / 'manifest.json').read_text())
    lists = []
    for layer in manifest['layers']:
        blob = target / layer['digest'].split(':', 1)[1]
        out = subprocess.run(['tar', 'tf', str(blob)], capture_output=True, text=True, check=True).stdout
        lists.append(sorted(line.removeprefix('./').rstrip('/') for line in out.splitlines()))
    return lists


def test_process_exclude_drops_files(image_tar, tmp_path):
    path, oci = image_tar
    out = tmp_path / 'out.tar'
    occystrap('process', 'tar://%s' % path, 'tar://%s' % out, '-f', 'exclude:pattern=var/cache,*.pyc', check_rc=0)
    assert layer_names(out, tmp_path) == [['etc', 'etc/app.conf', 'etc/hello.txt'],
                                          ['usr/bin/tool', 'usr/bin/tool-link']]
    occystrap('check', 'tar://%s' % out, check_rc=0)
    config = json.loads(skopeo('inspect', '--config', 'docker-archive:%s' % out).stdout)
    assert config['rootfs']['diff_ids'][0] != oci.diff_ids[0]


def test_process_exclude_without_matches_keeps_digests(image_tar, tmp_path):
    path, oci = image_tar
    out = tmp_path / 'same.tar'
    occystrap('process', 'tar://%s' % path, 'tar://%s' % out, '-f', 'exclude:pattern=nothing/here', check_rc=0)
    info = occystrap('-O', 'json', 'info', 'tar://%s' % out, check_rc=0).stdout
    assert jq('.[0].config_digest', info) == [oci.config_digest]
    assert jq('.[0].layers[].diffid', info) == oci.diff_ids


def test_process_normalize_timestamps_is_reproducible(image_tar, tmp_path):
    path, _ = image_tar
    digests = []
    for name in ('a.tar', 'b.tar'):
        out = tmp_path / name
        occystrap('process', 'tar://%s' % path, 'tar://%s' % out, '-f', 'normalize-timestamps:ts=86400',
                  check_rc=0)
        info = occystrap('-O', 'json', 'info', 'tar://%s' % out, check_rc=0).stdout
        (summary,) = jq('.[0] | {config_digest, created, diffids: [.layers[].diffid]}', info)
        digests.append(summary)
    assert digests[0] == digests[1]
    assert digests[0]['created'] == '1970-01-02T00:00:00Z'
    assert (tmp_path / 'a.tar').read_bytes() == (tmp_path / 'b.tar').read_bytes()


def test_process_search_and_inspect_filters_pass_the_image_on(image_tar, tmp_path):
    path, oci = image_tar
    out = tmp_path / 'out.tar'
    report = tmp_path / 'layers.jsonl'
    result = occystrap('process', 'tar://%s' % path, 'tar://%s' % out, '-f', 'search:pattern=*.conf',
                       '-f', 'inspect:file=%s' % report, check_rc=0)
    assert result.stdout.splitlines() == ['docker.io/example/app:1.0 %s etc/app.conf' % oci.diff_ids[0]]
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r['diffid'] for r in records] == oci.diff_ids
    assert [r['created_by'] for r in records] == ['occystrap test layer 0', 'occystrap test layer 1']
    info = occystrap('-O', 'json', 'info', 'tar://%s' % out, check_rc=0).stdout
    assert jq('.[0].config_digest', info) == [oci.config_digest]


def test_process_unknown_filter_option_is_a_usage_error(image_tar, tmp_path):
    path, _ = image_tar
    result = occystrap('process', 'tar://%s' % path, 'tar://%s' % (tmp_path / 'o.tar'), '-f', 'exclude:glob=x',
                       check_rc=2)
    assert 'does not take option' in result.stderr
    assert not (tmp_path / 'o.tar').exists()
