"""Text from images and registries reaches a terminal with its control characters escaped, through the real command:
file names in `search`, history in `info`, error lines, per-image result lines, log lines and a registry's own error
message. JSON output keeps the exact text (json.dumps escapes it)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from occystrap.terminal import printable
from tools.delayproxy import FaultProxy, respond_status

ESC_NAME = 'etc/\x1b[31mred\x1b[0m'
CR_NAME = 'etc/over\rwrite'
BIDI_NAME = 'etc/invoice\u202etxt.exe'
BYTE_NAME = 'etc/odd\udcffbyte'                  # the byte 0xff, as tarfile decodes a non-UTF-8 name
PLAIN_NAME = 'etc/caf\u00e9'
NAMES = [ESC_NAME, CR_NAME, BIDI_NAME, BYTE_NAME, PLAIN_NAME]
RAW_CONTROLS = [b'\x1b', b'\r', b'\x07', '\u202e'.encode(), b'\xc2\x9b']


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def tar_bytes(members):
    """A PAX tar of name -> bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_save(path, images):
    """A legacy docker save tarball of [(repo_tag, layer_tar, created_by, config_name or None)]."""
    members, manifest = {}, []
    for number, (tag, layer, created_by, config_name) in enumerate(images):
        config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers',
                                                                                'diff_ids': [sha256(layer)]},
                             'history': [{'created_by': created_by}]}).encode()
        config_member = sha256(config).split(':')[1] + '.json'
        members[config_member] = config
        members['layer%d/layer.tar' % number] = layer
        manifest.append({'Config': config_name or config_member, 'RepoTags': [tag],
                         'Layers': ['layer%d/layer.tar' % number]})
    members['manifest.json'] = json.dumps(manifest).encode()
    path.write_bytes(tar_bytes(members))
    return path


def occystrap(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OCCYSTRAP_')}
    return subprocess.run([sys.executable, '-m', 'occystrap'] + list(args), capture_output=True, env=env, timeout=120)


def assert_no_raw_controls(data):
    for raw in RAW_CONTROLS:
        assert raw not in data, (raw, data)


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable('caf\u00e9 \u65e5\u672c/x y') == 'caf\u00e9 \u65e5\u672c/x y'
    assert printable('a\x1b[2Jb\rc\x07d\x00e\x7ff') == 'a\\x1b[2Jb\\x0dc\\x07d\\x00e\\x7ff'
    assert printable('\x9b31m \x85') == '\\x9b31m \\x85'                      # C1 controls
    assert printable('abc\u202edef\u2066\u200f') == 'abc\\u202edef\\u2066\\u200f'
    assert printable('odd\udcffbyte \ud800') == 'odd\\xffbyte \\ud800'      # undecodable bytes, lone surrogates
    assert printable('line\nnext\ttab') == 'line\\x0anext\\x09tab'
    assert printable(42) == '42'
    printable('\udcff\x1b\u202e').encode('utf-8')                              # always encodable


def test_search_escapes_control_characters_in_file_names(tmp_path):
    layer = tar_bytes({name: b'x' for name in NAMES})
    tarball = docker_save(tmp_path / 'names.tar', [('test/names:latest', layer, 'RUN true', None)])
    for extra in ([], ['--script-friendly']):
        result = occystrap('search', 'tar://%s' % tarball, 'etc/*', *extra)
        assert result.returncode == 0, result.stderr
        assert_no_raw_controls(result.stdout)
        lines = result.stdout.decode().splitlines()
        assert len(lines) == len(NAMES)                                        # a CR or newline makes no extra line
        assert [line.endswith(printable(name)) for line, name in zip(lines, NAMES)] == [True] * len(NAMES)
        assert lines[-1].endswith('etc/caf\u00e9')                             # non-ASCII letters are left alone


def test_search_json_keeps_the_exact_names(tmp_path):
    layer = tar_bytes({name: b'x' for name in NAMES})
    tarball = docker_save(tmp_path / 'names.tar', [('test/names:latest', layer, 'RUN true', None)])
    result = occystrap('-O', 'json', 'search', 'tar://%s' % tarball, 'etc/*')
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()                                             # ensure_ascii: every control escaped
    assert [record['path'] for record in json.loads(result.stdout)] == NAMES


def test_info_escapes_history_and_keeps_json_exact(tmp_path):
    created_by = '/bin/sh -c #(nop) \x1b]0;owned\x07\x1b[2J CMD \u202e["sh"]'
    tarball = docker_save(tmp_path / 'info.tar', [('test/info:latest', tar_bytes({'a': b'a'}), created_by, None)])
    result = occystrap('info', 'tar://%s' % tarball)
    assert result.returncode == 0, result.stderr
    assert_no_raw_controls(result.stdout)
    assert '\\x1b]0;owned\\x07\\x1b[2J' in result.stdout.decode()
    result = occystrap('-O', 'json', 'info', 'tar://%s' % tarball)
    assert result.returncode == 0 and result.stdout.isascii()
    assert json.loads(result.stdout)[0]['layers'][0]['created_by'] == created_by


def test_hostile_repo_tag_never_reaches_the_terminal_raw(tmp_path):
    tarball = docker_save(tmp_path / 'tag.tar', [('test/x\x1b[2J:la\rtest', tar_bytes({'a': b'a'}), 'RUN', None)])
    for command in (['info'], ['check']):
        result = occystrap(*command, 'tar://%s' % tarball)
        assert_no_raw_controls(result.stdout + result.stderr)
        assert '\\x1b[2J' in (result.stdout + result.stderr).decode()          # shown escaped, or refused escaped


def test_error_line_escapes_the_detail(tmp_path):
    tarball = docker_save(tmp_path / 'bad.tar', [('test/bad:latest', tar_bytes({'a': b'a'}), 'RUN',
                                                  '\x1b]0;owned\x07\x1b[2Jcfg.json')])
    result = occystrap('info', 'tar://%s' % tarball)
    assert result.returncode == 1
    assert_no_raw_controls(result.stderr)
    line, = result.stderr.decode().splitlines()
    assert line.startswith('error: ') and '\\x1b]0;owned\\x07\\x1b[2Jcfg.json' in line


def test_multi_image_result_lines_and_logs_are_escaped(tmp_path):
    layer = tar_bytes({'a': b'a'})
    tarball = docker_save(tmp_path / 'multi.tar', [
        ('test/good:latest', layer, 'RUN', None),
        ('test/bad:latest', layer, 'RUN', 'missing\x1b[1A\x1b[2K\rcfg.json')])
    result = occystrap('process', 'tar://%s' % tarball, 'dir://%s' % (tmp_path / 'out'))
    assert result.returncode == 1
    assert_no_raw_controls(result.stderr)
    text = result.stderr.decode()
    failed = [line for line in text.splitlines() if 'FAILED' in line]
    assert len(failed) == 1 and 'missing\\x1b[1A\\x1b[2K\\x0dcfg.json' in failed[0]
    logged = [line for line in text.splitlines() if line.startswith('ERROR: ')]
    assert len(logged) == 1 and 'missing\\x1b[1A\\x1b[2K\\x0dcfg.json' in logged[0]
    assert text.splitlines()[-1].startswith('done: 1 image')


@pytest.mark.integration
def test_registry_error_message_is_escaped(registry):
    message = 'manifest \x1b[2J\x1b]0;owned\x07unknown\r\u202e'
    payload = json.dumps({'errors': [{'code': 'MANIFEST_UNKNOWN', 'message': message}]}).encode()
    with FaultProxy(registry.url, [respond_status('/manifests/', 404, count=None, payload=payload)]) as proxy:
        host = proxy.url.split('://')[1]
        result = occystrap('--insecure', 'info', 'registry://%s/test/hostile:v1' % host)
        assert proxy.hits
    assert result.returncode == 1
    assert_no_raw_controls(result.stderr)
    line, = result.stderr.decode().splitlines()
    assert 'answered 404' in line and 'manifest \\x1b[2J\\x1b]0;owned\\x07unknown' in line
