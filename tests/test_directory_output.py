"""dir:// output: docker-save layout that skopeo reads, zero-copy placement, shared layers, catalog, expand."""

import collections
import json
import os
import subprocess
import sys
import tarfile
import threading

import pytest

from occystrap import streams
from occystrap.outputs.directory import DirectoryOutput
from occystrap.pipeline import RunContext
from occystrap.settings import Settings
from occystrap.uris import parse_uri
from tests.helpers import WHITEOUT_LAYERS, image_from_layout, snapshot, umoci_rootfs
from tests.services import build_oci_layout, skopeo

BASE = {'etc': {'type': 'dir'}, 'etc/os-release': b'NAME=test\n', 'bin': {'type': 'dir'},
        'bin/sh': {'type': 'file', 'data': b'#!shell\n', 'mode': 0o755}}


class Counter:
    """Counts blob opens, safely across threads: a second open means a layer was fetched twice."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def hit(self, digest):
        with self.lock:
            self.counts[digest] += 1


def output_for(path, ctx, **options):
    query = '&'.join('%s=%s' % (k, str(v).lower()) for k, v in options.items())
    return DirectoryOutput(parse_uri('dir://%s%s' % (path, '?' + query if query else ''), 'output'), ctx)


def write_images(path, images, settings=None, **options):
    ctx = RunContext(settings or Settings(parallel=4))
    try:
        out = output_for(path, ctx, **options)
        for image in images:
            out.write(image)
        out.finalize()
        return out, ctx
    finally:
        ctx.close()


def test_layout_is_a_docker_save_that_skopeo_reads(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', [BASE, {'app/run': b'run\n'}])
    dest = tmp_path / 'out'
    out, _ = write_images(dest, [image_from_layout(oci)])
    manifest = json.loads((dest / 'manifest.json').read_text())
    hexes = [d.split(':')[1] for d in oci.diff_ids]
    assert manifest == [{'Config': oci.config_digest.split(':')[1] + '.json', 'RepoTags': ['test/image:latest'],
                         'Layers': ['%s/layer.tar' % h for h in hexes]}]
    for diffid, h in zip(oci.diff_ids, hexes):
        assert streams.sha256_file(dest / h / 'layer.tar') == diffid
    assert streams.sha256_file(dest / manifest[0]['Config']) == oci.config_digest
    assert [n for n in os.listdir(dest) if n.startswith('.')] == []    # no temporary leftovers
    archive = tmp_path / 'saved.tar'
    subprocess.run(['tar', '-C', str(dest), '-cf', str(archive), '.'], check=True)
    config = json.loads(skopeo('inspect', '--config', 'docker-archive:%s' % archive).stdout)
    assert config['rootfs']['diff_ids'] == oci.diff_ids
    skopeo('copy', 'docker-archive:%s' % archive, 'oci:%s:copied' % (tmp_path / 'copy'))


def test_layers_are_renamed_into_place_not_copied(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', [BASE, {'app/run': b'run\n'}])
    dest = tmp_path / 'out'
    image = image_from_layout(oci)
    ctx = RunContext(Settings(parallel=2))
    try:
        out = output_for(dest, ctx)
        assert os.path.dirname(ctx.workdir) == str(dest)         # temporary files live on the destination's disk
        temp = image.layers[0].materialize(ctx.workdir)
        inode = os.stat(temp).st_ino
        out.write(image)
        out.finalize()
    finally:
        ctx.close()
    assert os.stat(dest / oci.diff_ids[0].split(':')[1] / 'layer.tar').st_ino == inode
    assert (out.renames, out.copies) == (2, 0)
    assert not os.path.exists(temp)
    assert [n for n in os.listdir(dest) if n.startswith('.occystrap-tmp')] == []


def test_temp_dir_on_another_filesystem_copies(tmp_path):
    other = '/dev/shm'
    assert os.stat(other).st_dev != os.stat(tmp_path).st_dev, \
        'this test needs %s and %s on different filesystems; pick another --temp-dir' % (other, tmp_path)
    temp = os.path.join(other, 'occystrap-test-%d' % os.getpid())
    oci = build_oci_layout(tmp_path / 'layout', [BASE, {'app/run': b'run\n'}])
    dest = tmp_path / 'out'
    try:
        out, _ = write_images(dest, [image_from_layout(oci)], Settings(parallel=2, temp_dir=temp))
        assert (out.renames, out.copies) == (0, 2)
        assert os.listdir(temp) == []                              # the run's temporary directory went away
    finally:
        subprocess.run(['rm', '-rf', temp], check=True)
    for diffid in oci.diff_ids:
        assert streams.sha256_file(dest / diffid.split(':')[1] / 'layer.tar') == diffid


def test_unique_names_store_shared_layers_once_and_accumulate_a_catalog(tmp_path):
    one = build_oci_layout(tmp_path / 'one', [BASE, {'one': b'1\n'}])
    two = build_oci_layout(tmp_path / 'two', [BASE, {'two': b'2\n'}])
    assert one.diff_ids[0] == two.diff_ids[0]
    dest = tmp_path / 'shared'
    counter = Counter()
    out, _ = write_images(dest, [image_from_layout(one, 'org/one', 'v1', counter),
                                 image_from_layout(two, 'org/two', 'latest', counter)], unique_names=True)
    assert counter.counts[one.manifest['layers'][0]['digest']] == 1
    layer_dirs = sorted(n for n in os.listdir(dest) if os.path.isdir(dest / n) and not n.startswith('.'))
    assert layer_dirs == sorted({d.split(':')[1] for d in one.diff_ids + two.diff_ids})
    catalog = json.loads((dest / 'catalog.json').read_text())
    assert catalog == {'org/one:v1': 'manifest-org+one@v1.json', 'org/two:latest': 'manifest-org+two@latest.json'}
    entry = json.loads((dest / catalog['org/two:latest']).read_text())[0]
    assert entry['Layers'] == ['%s/layer.tar' % d.split(':')[1] for d in two.diff_ids]
    assert out.reused == 1

    # A later run adds an image; what is already there is neither fetched again nor dropped from the catalog.
    three = build_oci_layout(tmp_path / 'three', [BASE, {'one': b'1\n'}, {'three': b'3\n'}])
    counter = Counter()
    out, _ = write_images(dest, [image_from_layout(three, 'org/three', 'v3', counter)], unique_names=True)
    assert sum(counter.counts.values()) == 1 and out.reused == 2
    catalog = json.loads((dest / 'catalog.json').read_text())
    assert sorted(catalog) == ['org/one:v1', 'org/three:v3', 'org/two:latest']


def test_concurrent_images_and_runs_keep_the_catalog_whole(tmp_path):
    layouts = [build_oci_layout(tmp_path / ('l%d' % i), [BASE, {'common': b'shared\n'}, {'own': b'%d\n' % i}])
               for i in range(8)]
    dest = tmp_path / 'shared'
    counter = Counter()
    errors = []

    def run(chunk):
        # Each thread is a separate output, as separate processes would be; images inside it run in parallel too.
        try:
            ctx = RunContext(Settings(parallel=4))
            try:
                out = output_for(dest, ctx, unique_names=True)
                threads = [threading.Thread(target=out.write, args=(image_from_layout(layouts[i], 'org/img%d' % i,
                                                                                      'latest', counter),))
                           for i in chunk]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                out.finalize()
            finally:
                ctx.close()
        except Exception as e:  # surfaced below
            errors.append(e)

    runs = [threading.Thread(target=run, args=(chunk,)) for chunk in ([0, 1, 2, 3], [4, 5, 6, 7])]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert errors == []
    catalog = json.loads((dest / 'catalog.json').read_text())
    assert sorted(catalog) == ['org/img%d:latest' % i for i in range(8)]
    for reference, manifest in catalog.items():
        entry = json.loads((dest / manifest).read_text())[0]
        for layer in entry['Layers']:
            assert streams.sha256_file(dest / layer) == 'sha256:' + layer.split('/')[0]
    base_blob = layouts[0].manifest['layers'][0]['digest']
    # Within one output a shared layer is fetched once; two independent runs may each fetch it once.
    assert 1 <= counter.counts[base_blob] <= 2


def test_expand_applies_whiteouts_like_umoci(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', WHITEOUT_LAYERS)
    dest = tmp_path / 'out'
    write_images(dest, [image_from_layout(oci)], expand=True)
    ours = snapshot(dest / 'rootfs')
    theirs = umoci_rootfs(oci, tmp_path)
    assert ours == snapshot(theirs)
    for name in ours:     # lower layers' directory mtimes survive later layers writing into them
        assert os.lstat(dest / 'rootfs' / name).st_mtime == os.lstat(theirs / name).st_mtime, name
    expected = {'etc', 'etc/b', 'etc/c', 'opt', 'opt/new', 'var', 'var/fresh', 'hard', 'abs'}
    assert set(ours) == expected
    assert ours['opt/new'][2] == b'newer\n'
    assert ours['abs'] == ('symlink', '/etc/b')
    assert os.stat(dest / 'rootfs' / 'hard').st_ino == os.stat(dest / 'rootfs' / 'etc' / 'b').st_ino
    assert [n for n in os.listdir(dest) if n.startswith('.rootfs')] == []


def test_expand_by_hand_agrees(tmp_path):
    """Applying the layer tars one by one with tarfile and whiteout rules written out here gives the same tree."""
    oci = build_oci_layout(tmp_path / 'layout', WHITEOUT_LAYERS)
    dest = tmp_path / 'out'
    write_images(dest, [image_from_layout(oci)], expand=True)
    tree = {}
    for diffid in oci.diff_ids:
        with tarfile.open(dest / diffid.split(':')[1] / 'layer.tar') as tar:
            members = tar.getmembers()
            for m in members:
                head, _, base = m.name.rpartition('/')
                if base == '.wh..wh..opq':
                    own = {x.name for x in members}
                    tree = {k: v for k, v in tree.items() if not k.startswith(head + '/') or k in own}
                elif base.startswith('.wh.'):
                    gone = (head + '/' if head else '') + base[4:]
                    tree = {k: v for k, v in tree.items() if k != gone and not k.startswith(gone + '/')}
                else:
                    tree = {k: v for k, v in tree.items() if not (k.startswith(m.name + '/') and not m.isdir())}
                    if m.isreg():
                        tree[m.name] = ('file', tar.extractfile(m).read())
                    elif m.issym():
                        tree[m.name] = ('symlink', m.linkname)
                    elif m.islnk():
                        tree[m.name] = tree[m.linkname]
                    elif m.isdir():
                        tree[m.name] = ('dir',)
    ours = {k: (v[0], v[2]) if v[0] == 'file' else v if v[0] == 'symlink' else ('dir',)
            for k, v in snapshot(dest / 'rootfs').items()}
    assert ours == tree


def test_unique_names_expand_one_rootfs_per_image(tmp_path):
    one = build_oci_layout(tmp_path / 'one', [BASE, {'one': b'1\n'}])
    two = build_oci_layout(tmp_path / 'two', [BASE, {'two': b'2\n'}])
    dest = tmp_path / 'shared'
    write_images(dest, [image_from_layout(one, 'org/one', 'v1'), image_from_layout(two, 'org/two', 'v2')],
                 unique_names=True, expand=True)
    assert (dest / 'rootfs-org+one@v1' / 'one').read_bytes() == b'1\n'
    assert (dest / 'rootfs-org+two@v2' / 'two').read_bytes() == b'2\n'
    assert not (dest / 'rootfs-org+one@v1' / 'two').exists()


def test_cli_tarball_to_expanded_directory(tmp_path):
    oci = build_oci_layout(tmp_path / 'layout', WHITEOUT_LAYERS)
    archive = tmp_path / 'image.tar'
    subprocess.run(['tar', '-C', str(oci.path), '-cf', str(archive), '.'], check=True)
    dest = tmp_path / 'out'
    result = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'tar://%s' % archive,
                             'dir://%s?unique_names=true&expand=true' % dest], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    catalog = json.loads((dest / 'catalog.json').read_text())
    assert len(catalog) == 1
    manifest = json.loads((dest / list(catalog.values())[0]).read_text())[0]
    assert [layer.split('/')[0] for layer in manifest['Layers']] == [d.split(':')[1] for d in oci.diff_ids]
    rootfs = [n for n in os.listdir(dest) if n.startswith('rootfs-')]
    assert len(rootfs) == 1
    assert snapshot(dest / rootfs[0]) == snapshot(umoci_rootfs(oci, tmp_path))


@pytest.mark.parametrize('options', ['', '?expand=true'])
def test_destination_that_is_a_file_is_a_clear_error(tmp_path, options):
    oci = build_oci_layout(tmp_path / 'layout', [BASE])
    archive = tmp_path / 'image.tar'
    subprocess.run(['tar', '-C', str(oci.path), '-cf', str(archive), '.'], check=True)
    target = tmp_path / 'file'
    target.write_text('x')
    result = subprocess.run([sys.executable, '-m', 'occystrap', 'process', 'tar://%s' % archive,
                             'dir://%s%s' % (target, options)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and 'not a directory' in result.stderr
