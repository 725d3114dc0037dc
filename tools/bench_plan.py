"""The benchmark grid: which command every (tool, workflow, -j, -J) cell runs, as JSON lines for benchmark.sh.

Workflows (images as tools/bench_env.py seeds them; SRC is the source registry, PUSH the second, empty one):

==================  ==========================================================================================
``single-pull``     registry://SRC/library/ubuntu:latest -> dir://OUT (one 30 MB layer)
``single-tar``      the same -> tar://OUT/ubuntu.tar
``single-push``     the same -> registry://PUSH/bench/ubuntu:latest. PUSH is another registry, emptied before
                    every run, so the layer is really uploaded (within one registry it would be a cross-repository
                    mount that moves no bytes)
``app-pull``        registry://SRC/bench/app:latest (24 layers, about 190 MB) -> dir://OUT: where -j matters
``app-push``        the app image -> registry://PUSH/bench/app:latest
``bulk-quay-info``  info quay://ORG?api=STANDIN&registry=SRC over the 60 repositories of the stand-in's
                    organisation: API listing, tag checks, manifests and configs, no layers
``multi-dir``       registry://SRC/fleet/*:latest (12 images sharing base layers) -> dir://OUT?unique_names=true
``bulk-mirror``     registry://SRC/mirror-N/*:latest (N small repositories, 100 by default) ->
                    registry://PUSH/bulk-<nanoseconds>: a fresh prefix every run, so every image is copied
``resync``          the same into registry://PUSH/resync, which ``prepare`` has already filled (with this checkout,
                    -J 6): nothing is left to copy, what is timed is finding that out
==================  ==========================================================================================

On real services, seeding nothing into them (``--remote FILE``, the JSON benchmark.sh writes from --source,
--quay-api and their options; never part of ``all``):

====================  ========================================================================================
``remote-pull``       each --source registry://HOST/NAME:TAG -> dir://OUT, with occystrap's own credential and
                      TLS sources (docker config, helpers) plus --ca-cert; no --insecure, no delay proxy
``remote-tar``        the same -> tar://OUT/image.tar
``remote-push``       the same -> the local push registry (directly, never through the delay proxy)
``remote-quay-info``  info quay://ORG?api=URL[&registry=HOST] with --rate-limit when given
====================  ========================================================================================

The memory curve (``--memory-curve``; never part of ``all`` either): peak RSS over -J and the number of images,
each cell run once under tools/peakrss.py (``once``), its wall time the row's time:

===================  =========================================================================================
``curve-mirror``     registry://SRC/memcurve-N/*:latest -> registry://PUSH/bulk-<nanoseconds>, as bulk-mirror
``curve-quay-info``  info quay://memcurve-N:latest?api=STANDIN&registry=SRC, as bulk-quay-info
===================  =========================================================================================

for every N of ``--curve-repos`` (cells carry ``repos``) and -J of ``--curve-image-jobs``.

Remote cells carry ``image`` (the source, or the organisation) and ``stats_dir``: every run writes its
``--stats-file`` counters there (a file per run), from which benchmark.sh takes the 429 answers per run
(``throttled``) and the bytes moved (these images' sizes are not known beforehand).

Tools: ``occystrap`` (this checkout), ``occystrap-http1`` / ``occystrap-http2`` (the same with --no-http2 /
--http2), ``baseline`` (another revision, same CLI), ``occystrap-0.4.17`` (the previous implementation, a black
box with the same CLI shape) and ``skopeo`` (``skopeo copy`` to dir:, docker-archive: and docker:// for the
single-image workflows; ``skopeo sync --src yaml`` of the same repositories, from the YAML bench_env.py wrote, for
the mirroring workflows). skopeo has no -j/-J, so its j and J are null; single-image workflows have a null J, and
the mirroring workflows a null j (our default -j: their images are a few small layers each, so -J is what counts).
0.4.17 runs the single-image workflows only (see OLD_WORKFLOWS); it is run with its defaults, which include
verifying its output after processing.

Every cell has ``prepare`` (empties OUT and, for pushes and bulk-mirror, the push registry's storage; for resync it
fills the destination instead; hyperfine runs it before every timed run) and ``bytes`` (compressed bytes the
workflow moves, null for info and resync).
"""

import argparse
import json
import shlex
import sys

WORKFLOWS = ('single-pull', 'single-tar', 'single-push', 'app-pull', 'app-push', 'bulk-quay-info', 'multi-dir',
             'bulk-mirror', 'resync')
MIRRORS = ('bulk-mirror', 'resync')
MULTI_IMAGE = ('bulk-quay-info', 'multi-dir') + MIRRORS
PUSHES = ('single-push', 'app-push')
SKOPEO_WORKFLOWS = ('single-pull', 'single-tar', 'single-push', 'app-pull', 'app-push') + MIRRORS
# 0.4.17's quay:// always asks quay.io (it takes no api= or registry=) and it has no registry catalog glob, so
# it cannot run any multi-image workflow against local services.
OLD_WORKFLOWS = ('single-pull', 'single-tar', 'single-push', 'app-pull', 'app-push')
RESYNC_PREFIX = 'resync'
# A destination prefix no earlier run used: the shell expands it when the command runs (GNU date, nanoseconds).
FRESH_PREFIX = '"bulk-$(date +%s%N)"'
FILL_IMAGE_JOBS = 6
CURVE_WORKFLOWS = ('curve-mirror', 'curve-quay-info')
DEFAULT_CURVE_REPOS = (100, 400)
DEFAULT_CURVE_IMAGE_JOBS = (1, 3, 6, 12, 24, 32)
REMOTE_WORKFLOWS = ('remote-pull', 'remote-tar', 'remote-push', 'remote-quay-info')
TOOLS = ('occystrap', 'occystrap-http1', 'occystrap-http2', 'baseline', 'occystrap-0.4.17', 'skopeo')
DEFAULT_JOBS = (1, 4, 8, 16)
DEFAULT_IMAGE_JOBS = (1, 3, 6)


def parse_int_list(text):
    """'1,4,8' -> [1, 4, 8]; raises ValueError for anything else (empty items, zero, negatives)."""
    values = []
    for item in text.split(','):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f'expected a comma-separated list of positive integers, got {text!r}')
        values.append(int(item))
    return values


def parse_workflows(text):
    """'single-pull,multi-dir' -> a list in WORKFLOWS order; 'all' is every local workflow. ValueError when unknown."""
    if text == 'all':
        return list(WORKFLOWS)
    known = WORKFLOWS + CURVE_WORKFLOWS + REMOTE_WORKFLOWS
    names = [n.strip() for n in text.split(',') if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f'unknown workflow {", ".join(unknown) or text!r}; choose from {", ".join(known)}')
    return [w for w in known if w in names]


def _shell(argv):
    return ' '.join(shlex.quote(str(a)) for a in argv)


class Plan:
    """Builds the cells of one benchmark run from the environment state and the seeded images."""

    def __init__(self, state, images, out, python, baseline_python=None, old_occystrap=None, old_has_image_jobs=False,
                 tools_dir=None, py_spy=None, remote=None):
        self.state = state
        self.images = images
        self.out = out
        self.python = python
        self.baseline_python = baseline_python
        self.old_occystrap = old_occystrap
        self.old_has_image_jobs = old_has_image_jobs
        self.tools_dir = tools_dir or '.'
        self.py_spy = py_spy
        self.remote = remote or {}

    # --- what each workflow reads and writes

    @property
    def src(self):
        return self.state['source']['host']

    @property
    def push(self):
        return self.state['push']['host']

    def source_ref(self, workflow):
        key = 'app' if workflow.startswith('app-') else 'ubuntu'
        return f'{self.src}/{self.images[key]["name"]}:{self.images.get("tag", "latest")}'

    def push_ref(self, workflow):
        name = 'bench/app' if workflow.startswith('app-') else 'bench/ubuntu'
        return f'{self.push}/{name}:latest'

    def bytes_moved(self, workflow):
        if workflow in ('bulk-quay-info', 'resync'):
            return None
        if workflow == 'multi-dir':
            return self.images['fleet']['bytes']
        if workflow == 'bulk-mirror':
            return self.images['mirror']['bytes']
        return self.images['app' if workflow.startswith('app-') else 'ubuntu']['bytes']

    def prepare(self, workflow):
        command = f'rm -rf {shlex.quote(self.out)} && mkdir -p {shlex.quote(self.out)}'
        if workflow in PUSHES or workflow == 'bulk-mirror':
            command += f' && rm -rf {shlex.quote(self.state["push"]["storage"] + "/docker")}'
        if workflow == 'resync':
            # Fill (or top up) the destination, so that the timed run finds every image already there.
            fill = [self.python, '-m', 'occystrap'] + self.transport_flags() + [
                '-J', str(FILL_IMAGE_JOBS), 'process', self.mirror_source(), self.mirror_destination()]
            command += f' && {_shell(fill)} >/dev/null'
        return command

    # --- the mirroring workflows

    def mirror_source(self):
        return f'registry://{self.src}/{self.images["mirror"]["glob"]}:{self.images.get("tag", "latest")}'

    def mirror_destination(self, fresh=False):
        """registry://PUSH/PREFIX as a shell word; a fresh prefix is expanded by the shell that runs the command."""
        if fresh:
            return shlex.quote(f'registry://{self.push}/') + FRESH_PREFIX
        return f'registry://{self.push}/{RESYNC_PREFIX}'

    # --- occystrap-shaped command lines

    def occystrap_args(self, workflow):
        """The subcommand and URIs for our CLI (and 0.4.17's, which has the same shape)."""
        tag = self.images.get('tag', 'latest')
        if workflow == 'single-pull' or workflow == 'app-pull':
            return ['process', f'registry://{self.source_ref(workflow)}', f'dir://{self.out}/image']
        if workflow == 'single-tar':
            return ['process', f'registry://{self.source_ref(workflow)}', f'tar://{self.out}/ubuntu.tar']
        if workflow in PUSHES:
            return ['process', f'registry://{self.source_ref(workflow)}', f'registry://{self.push_ref(workflow)}']
        if workflow == 'bulk-quay-info':
            org = self.images['quay']['org']
            return ['info', f'quay://{org}:{tag}?api={self.state["quay"]["api"]}&registry={self.src}']
        if workflow == 'multi-dir':
            return ['process', f'registry://{self.src}/{self.images["fleet"]["glob"]}:{tag}',
                    f'dir://{self.out}/images?unique_names=true']
        if workflow == 'resync':
            return ['process', self.mirror_source(), self.mirror_destination()]
        raise ValueError(workflow)

    def occystrap_command(self, argv, workflow):
        """argv as one shell command; bulk-mirror's destination is appended here, a word the shell expands."""
        if workflow == 'bulk-mirror':
            return _shell(argv + ['process', self.mirror_source()]) + ' ' + self.mirror_destination(fresh=True)
        return _shell(argv)

    def transport_flags(self):
        return ['--ca-cert', self.state['ca']] if self.state.get('tls') else ['--insecure']

    def occystrap_argv(self, tool, workflow, j, J):
        """The command line of an occystrap cell (for bulk-mirror without its subcommand: see occystrap_command)."""
        if tool == 'occystrap-0.4.17':
            argv = [self.old_occystrap]
        else:
            argv = [self.baseline_python if tool == 'baseline' else self.python, '-m', 'occystrap']
        argv += self.transport_flags()
        if tool == 'occystrap-http1':
            argv.append('--no-http2')
        elif tool == 'occystrap-http2':
            argv.append('--http2')
        if j is not None:
            argv += ['-j', str(j)]
        if J is not None:
            argv += ['-J', str(J)]
        if workflow == 'bulk-mirror':
            return argv
        return argv + self.occystrap_args(workflow)

    def skopeo_command(self, workflow):
        """A skopeo cell's command: `skopeo copy`, or for the mirroring workflows `skopeo sync --src yaml`."""
        if workflow not in MIRRORS:
            return _shell(self.skopeo_argv(workflow))
        # The source's TLS settings are in the YAML; the destination's are flags. Without --scoped, skopeo puts
        # each image at DEST/<last name component>:tag, as our multi-image destinations do.
        dest_flags = ([f'--dest-cert-dir={self.state["cert_dir"]}'] if self.state.get('tls')
                      else ['--dest-tls-verify=false'])
        argv = ['skopeo', '--insecure-policy', 'sync', '--src', 'yaml', '--dest', 'docker',
                '--src-no-creds', '--dest-no-creds'] + dest_flags + [self.images['mirror']['skopeo_yaml']]
        if workflow == 'bulk-mirror':
            return _shell(argv) + ' ' + shlex.quote(f'{self.push}/') + FRESH_PREFIX
        return _shell(argv + [f'{self.push}/{RESYNC_PREFIX}'])

    def skopeo_argv(self, workflow):
        if self.state.get('tls'):
            src_flags, dest_flags = [f'--src-cert-dir={self.state["cert_dir"]}'], [
                f'--dest-cert-dir={self.state["cert_dir"]}']
        else:
            src_flags, dest_flags = ['--src-tls-verify=false'], ['--dest-tls-verify=false']
        source = f'docker://{self.source_ref(workflow)}'
        argv = ['skopeo', '--insecure-policy', 'copy', '--quiet', '--src-no-creds'] + src_flags
        if workflow in ('single-pull', 'app-pull'):
            return argv + [source, f'dir:{self.out}/image']
        if workflow == 'single-tar':
            name = self.images['ubuntu']['name']
            return argv + [source, f'docker-archive:{self.out}/ubuntu.tar:{name}:latest']
        if workflow in PUSHES:
            return argv + ['--dest-no-creds'] + dest_flags + [source, f'docker://{self.push_ref(workflow)}']
        raise ValueError(f'skopeo has no {workflow} workflow')

    # --- the memory curve

    def curve_cell(self, workflow, repos, J):
        fleet = self.images['curve'][str(repos)]
        argv = [self.python, '-m', 'occystrap'] + self.transport_flags() + ['-J', str(J)]
        prepare = f'rm -rf {shlex.quote(self.out)} && mkdir -p {shlex.quote(self.out)}'
        if workflow == 'curve-mirror':
            source = f'registry://{self.src}/{fleet["glob"]}:{self.images.get("tag", "latest")}'
            command = _shell(argv + ['process', source]) + ' ' + self.mirror_destination(fresh=True)
            prepare += f' && rm -rf {shlex.quote(self.state["push"]["storage"] + "/docker")}'
            nbytes = fleet['bytes']
        else:
            uri = f'quay://{fleet["org"]}:{self.images.get("tag", "latest")}?api={self.state["quay"]["api"]}' \
                  f'&registry={self.src}'
            command, nbytes = _shell(argv + ['info', uri]), None
        return {'tool': 'occystrap', 'workflow': workflow, 'j': None, 'J': J, 'repos': repos, 'once': True,
                'bytes': nbytes, 'command': command, 'prepare': prepare}

    # --- on real services

    def remote_targets(self, workflow):
        """What a remote workflow runs over: the --source references, or the one Quay organisation."""
        if workflow == 'remote-quay-info':
            quay = self.remote.get('quay')
            return [quay['org']] if quay else []
        return list(self.remote.get('sources', []))

    def remote_cell(self, workflow, target, j, J, index):
        """A cell of a remote workflow; its command writes --stats-file into the cell's stats_dir, a file per run."""
        argv = [self.python, '-m', 'occystrap']
        if self.remote.get('ca_cert'):
            argv += ['--ca-cert', self.remote['ca_cert']]
        argv += ['-j', str(j)] + (['-J', str(J)] if J is not None else [])
        if workflow == 'remote-quay-info':
            if self.remote.get('rate_limit'):
                argv += ['--rate-limit', str(self.remote['rate_limit'])]
            quay = self.remote['quay']
            uri = f'quay://{target}?api={quay["api"]}' + (f'&registry={quay["registry"]}' if quay.get('registry')
                                                          else '')
            args = ['info', uri]
        else:
            source = target if target.startswith('registry://') else f'registry://{target}'
            if workflow == 'remote-pull':
                args = ['process', source, f'dir://{self.out}/image']
            elif workflow == 'remote-tar':
                args = ['process', source, f'tar://{self.out}/image.tar']
            else:
                name = source.split('://', 1)[1].split('/', 1)[1]
                # The push registry is ours: plain HTTP, or TLS with the benchmark's own CA.
                option = 'tls-verify=false' if self.state.get('tls') else 'insecure=true'
                args = ['process', source, f'registry://{self.state["push"]["direct"]}/remote/{name}?{option}']
        stats_dir = f'{self.remote["stats_dir"]}/{workflow}-{index}-j{j}-J{J}'
        command = (_shell(argv) + ' --stats-file ' + shlex.quote(stats_dir + '/') + '"run-$(date +%s%N).json" '
                   + _shell(args))
        prepare = f'rm -rf {shlex.quote(self.out)} && mkdir -p {shlex.quote(self.out)} {shlex.quote(stats_dir)}'
        if workflow == 'remote-push':
            prepare += f' && rm -rf {shlex.quote(self.state["push"]["storage"] + "/docker")}'
        return {'tool': 'occystrap', 'workflow': workflow, 'image': target, 'j': j, 'J': J, 'bytes': None,
                'command': command, 'prepare': prepare, 'stats_dir': stats_dir}

    def remote_cells(self, workflow, jobs, image_jobs):
        for index, target in enumerate(self.remote_targets(workflow)):
            for J in (image_jobs if workflow == 'remote-quay-info' else [None]):
                for j in jobs:
                    yield self.remote_cell(workflow, target, j, J, index)

    # --- the grid

    def cells(self, tools, workflows, jobs, image_jobs, profile_out=None, curve_repos=DEFAULT_CURVE_REPOS,
              curve_image_jobs=DEFAULT_CURVE_IMAGE_JOBS):
        """Every cell, in run order: tool by tool, workflow by workflow, -J then -j ascending."""
        for tool in tools:
            for workflow in workflows:
                if workflow in CURVE_WORKFLOWS:
                    if tool == 'occystrap':
                        for repos in curve_repos:
                            for J in curve_image_jobs:
                                yield self.curve_cell(workflow, repos, J)
                    continue
                if workflow in REMOTE_WORKFLOWS:
                    if tool == 'occystrap':     # only this checkout: the other tools' credentials differ
                        yield from self.remote_cells(workflow, jobs, image_jobs)
                    continue
                if tool == 'skopeo':
                    if workflow in SKOPEO_WORKFLOWS:
                        yield self.cell(tool, workflow, None, None, self.skopeo_command(workflow))
                    continue
                if tool == 'occystrap-0.4.17' and workflow not in OLD_WORKFLOWS:
                    continue
                multi = workflow in MULTI_IMAGE and (tool != 'occystrap-0.4.17' or self.old_has_image_jobs)
                for J in (image_jobs if multi else [None]):
                    for j in ([None] if workflow in MIRRORS else jobs):
                        argv = self.occystrap_argv(tool, workflow, j, J)
                        command = self.occystrap_command(argv, workflow)
                        if tool == 'occystrap-0.4.17' and self.state.get('tls'):
                            # Black box: point whatever HTTP stack it uses at our CA through the environment.
                            ca = shlex.quote(self.state['ca'])
                            command = f'SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca} {command}'
                        cell = self.cell(tool, workflow, j, J, command)
                        if tool == 'occystrap' and profile_out:
                            stem = profile_out.rsplit('.', 1)[0]
                            profiler = [argv[0], f'{self.tools_dir}/bench_profile.py', '-o', profile_out,
                                        '--summary', stem + '.txt']
                            if self.py_spy:
                                # A sampled flame graph of every thread, from a run of its own (py-spy attaches
                                # from outside, so the cProfile run's overhead is not in it).
                                spy = [self.py_spy, 'record', '--threads', '--rate', '250', '-o', stem + '.svg', '--']
                                cell['flame_command'] = self.occystrap_command(spy + argv, workflow)
                            else:
                                profiler += ['--flamegraph', stem + '.svg']
                            cell['profile_command'] = self.occystrap_command(profiler + argv[1:], workflow)
                        yield cell

    def cell(self, tool, workflow, j, J, command):
        return {'tool': tool, 'workflow': workflow, 'j': j, 'J': J, 'bytes': self.bytes_moved(workflow),
                'command': command, 'prepare': self.prepare(workflow)}


def main(argv=None):
    parser = argparse.ArgumentParser(description='Print the benchmark cells as JSON lines.')
    parser.add_argument('--state', required=True, help='bench_env.py up state file')
    parser.add_argument('--images', required=True, help='bench_env.py seed output')
    parser.add_argument('--out', required=True, help='output directory the workflows write to (emptied per run)')
    parser.add_argument('--python', default=sys.executable, help='python that runs this checkout')
    parser.add_argument('--baseline-python', help='python with the baseline revision installed')
    parser.add_argument('--old-occystrap', help='the occystrap 0.4.17 executable')
    parser.add_argument('--old-has-image-jobs', action='store_true', help='0.4.17 accepts -J')
    parser.add_argument('--tools', default='occystrap', help='comma-separated: ' + ', '.join(TOOLS))
    parser.add_argument('--workflows', default='all')
    parser.add_argument('--jobs', default=','.join(map(str, DEFAULT_JOBS)))
    parser.add_argument('--image-jobs', default=','.join(map(str, DEFAULT_IMAGE_JOBS)))
    parser.add_argument('--curve-repos', default=','.join(map(str, DEFAULT_CURVE_REPOS)))
    parser.add_argument('--curve-image-jobs', default=','.join(map(str, DEFAULT_CURVE_IMAGE_JOBS)))
    parser.add_argument('--profile-out', help='add a profile_command to occystrap cells: OUT.prof, OUT.txt and the '
                        'flame graph OUT.svg (from py-spy in a flame_command with --py-spy, else from cProfile)')
    parser.add_argument('--py-spy', help='the py-spy executable, for sampled flame graphs')
    parser.add_argument('--remote', help='JSON file: sources, ca_cert, quay {api, org, registry}, rate_limit, '
                        'stats_dir, for the remote-* workflows')
    parser.add_argument('--tools-dir', default=sys.path[0], help='where bench_profile.py lives')
    args = parser.parse_args(argv)
    try:
        workflows = parse_workflows(args.workflows)
        jobs, image_jobs = parse_int_list(args.jobs), parse_int_list(args.image_jobs)
        curve_repos, curve_image_jobs = parse_int_list(args.curve_repos), parse_int_list(args.curve_image_jobs)
    except ValueError as exc:
        parser.error(str(exc))
    tools = [t for t in args.tools.split(',') if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f'unknown tool {", ".join(unknown)}')
    with open(args.state) as f:
        state = json.load(f)
    with open(args.images) as f:
        images = json.load(f)
    remote = None
    if args.remote:
        with open(args.remote) as f:
            remote = json.load(f)
    plan = Plan(state, images, args.out, args.python, args.baseline_python, args.old_occystrap,
                args.old_has_image_jobs, args.tools_dir, args.py_spy, remote)
    for cell in plan.cells(tools, workflows, jobs, image_jobs, args.profile_out, curve_repos, curve_image_jobs):
        print(json.dumps(cell, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
