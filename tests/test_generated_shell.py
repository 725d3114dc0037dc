"""Generated scripts and configs keep image text as data: mount.sh from an image whose name, tag and file names
try to inject commands, run with `mount` replaced by a recorder, runs nothing it was not written to run."""

import io
import json
import os
import subprocess
import tarfile

import pytest

from occystrap import streams
from occystrap.errors import OccystrapError
from occystrap.model import Image, Layer
from occystrap.outputs.mounts import MountsOutput
from occystrap.outputs.ocibundle import OCIBundleOutput
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri

# Each of these, written unquoted into a shell script (in a comment, a double-quoted string or bare), runs `touch`.
HOSTILE_NAMES = [
    'evil\ntouch pwned-newline\n#',
    'evil$(touch pwned-subst)',
    'evil`touch pwned-backquote`',
    "evil'; touch pwned-quote; '",
    'evil"; touch pwned-dquote; "',
    'evil\r\ntouch pwned-crlf',
    'evil\x1b]0;title\x07; touch pwned-esc',
]
RECORDER = '''#!/bin/sh
# Stands in for mount(8): records its arguments, one per line, and mounts nothing.
for arg in "$@"; do printf '%s\\n' "$arg"; done > "$MOUNT_RECORD"
'''


def layer_tar(path, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return Layer.from_file(str(path), diffid=streams.sha256_bytes(buf.getvalue()))


def hostile_image(tmp_path, name, tag):
    """An Image built directly, as no input would accept it, so these tests do not depend on input validation."""
    layer = layer_tar(tmp_path / 'layer.tar', {'etc/$(touch pwned-file)\n': b'x', 'bin/`id`': b'y'})
    config = {'architecture': 'amd64', 'os': 'linux',
              'config': {'Cmd': ['/bin/sh', '-c', name], 'Labels': {'l\n': name}, 'Hostname': name},
              'rootfs': {'type': 'layers', 'diff_ids': [layer.diffid]}}
    return Image(name=name, tag=tag, config_bytes=json.dumps(config).encode(), layers=[layer], source='test')


def write(output_class, scheme, dest, image):
    ctx = RunContext(Settings(parallel=2))
    try:
        out = output_class(parse_uri('%s://%s' % (scheme, dest), 'output'), ctx)
        try:
            out.write(image)
        except BaseException:
            out.abort()
            raise
        out.finalize()
    finally:
        ctx.close()


def run_script(script, args, cwd, tmp_path):
    bin_dir = tmp_path / 'fakebin'
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / 'mount'
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    record = tmp_path / 'mount-args'
    env = dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']), MOUNT_RECORD=str(record))
    result = subprocess.run(['sh', str(script)] + args, cwd=str(cwd), env=env, capture_output=True, text=True)
    return result, record.read_text().splitlines() if record.exists() else None


@pytest.mark.parametrize('name', HOSTILE_NAMES)
def test_mount_script_from_hostile_names_runs_no_injected_command(tmp_path, name):
    dest = tmp_path / 'mounts'
    write(MountsOutput, 'mounts', dest, hostile_image(tmp_path, name, name.replace('evil', 'tag')))
    script = dest / 'mount.sh'
    text = script.read_text()
    assert 'touch' not in text.split('image=', 1)[0]              # nothing of the name before its one quoted value
    for checker in (['bash', '-n'], ['sh', '-n'], ['shellcheck']):
        result = subprocess.run(checker + [str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (checker, result.stdout, result.stderr)
    assert not any(c in text for c in '\r\x1b\x07')               # no control character reaches the file either

    work = tmp_path / 'cwd'
    work.mkdir()
    result, recorded = run_script(script, [str(tmp_path / 'target')], work, tmp_path)
    assert result.returncode == 0, result.stderr
    layer_dir = json.loads((dest / 'manifest.json').read_text())['layers'][0]['path']
    here = str(dest)
    assert recorded == ['-t', 'overlay', 'overlay', '-o', 'lowerdir=%s/%s:%s/layers/empty' % (here, layer_dir, here),
                        str(tmp_path / 'target')]
    result, _ = run_script(script, [], work, tmp_path)            # the usage message shows the name
    assert result.returncode == 2 and 'mounts evil' in result.stderr
    assert not [p for p in os.listdir(work) if p.startswith('pwned')]
    assert not [p for p in os.listdir(tmp_path) if p.startswith('pwned')]


def test_mount_script_read_write_form_passes_upper_and_work_as_given(tmp_path):
    dest = tmp_path / 'mounts'
    write(MountsOutput, 'mounts', dest, hostile_image(tmp_path, HOSTILE_NAMES[0], 'latest'))
    work = tmp_path / 'cwd'
    work.mkdir()
    upper, workdir = str(tmp_path / 'up,per'), str(tmp_path / 'work$(touch pwned-arg)')
    result, recorded = run_script(dest / 'mount.sh', [str(tmp_path / 't'), upper, workdir], work, tmp_path)
    assert result.returncode == 0, result.stderr
    assert recorded[4].endswith(',upperdir=%s,workdir=%s' % (upper, workdir))
    assert not [p for p in os.listdir(work) if p.startswith('pwned')]


@pytest.mark.parametrize('diffid', ['sha256:$(touch pwned)', 'sha256:a,upperdir=/etc', 'sha256:a:b', 'sha256:a/../../x',
                                    'sha256:a\nb'])
def test_mounts_refuses_a_diffid_that_cannot_name_a_layer_directory(tmp_path, diffid):
    good = hostile_image(tmp_path, 'plain', 'latest')
    image = good.replace(layers=[Layer(diffid=diffid, path=good.layers[0].path)])
    assert image.layers[0].diffid == diffid
    dest = tmp_path / 'mounts'
    with pytest.raises(OccystrapError, match='names a layer directory, has a malformed|cannot name a layer dir'):
        write(MountsOutput, 'mounts', dest, image)
    assert not dest.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith('pwned') or p.startswith('.m')]


def test_oci_bundle_config_keeps_hostile_text_as_json_strings(tmp_path):
    name = HOSTILE_NAMES[0]
    dest = tmp_path / 'bundle'
    write(OCIBundleOutput, 'oci', dest, hostile_image(tmp_path, name, 'latest'))
    raw = (dest / 'config.json').read_bytes()
    assert raw.isascii() and not set(raw) & (set(range(32)) - {10})   # newlines of the indentation only
    spec = json.loads(raw)
    assert spec['process']['args'] == ['/bin/sh', '-c', name]     # data, exactly as the image has it
    assert spec['hostname'] == name and spec['annotations']['l\n'] == name
    assert not [p for p in os.listdir(tmp_path) if p.startswith('pwned')]
