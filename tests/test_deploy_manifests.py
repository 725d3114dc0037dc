"""deploy/kubernetes: the manifests parse, say what an Indexed Job of shards needs, agree with each other and with
their README, and their command line, run as the kubelet would run it for every index, mirrors a tarball fleet
with the real tool, once per repository.

No cluster is available here: what the tests cannot show is the cluster's part (scheduling, the volume, retries).
"""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from occystrap import sharding
from tests.helpers import legacy_members, write_tar
from tests.services import layer_tar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, 'deploy', 'kubernetes')
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
IMAGE = 'occystrap:latest'


def load(name):
    with open(os.path.join(DEPLOY, name)) as f:
        documents = list(yaml.safe_load_all(f))
    assert len(documents) == 1, name
    return documents[0]


def read(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return f.read()


@pytest.fixture(scope='module')
def job():
    return load('job.yaml')


def pod(job_spec):
    return job_spec['template']['spec']


def container(job_spec):
    containers = pod(job_spec)['containers']
    assert len(containers) == 1
    return containers[0]


def env_list(job_spec):
    return container(job_spec)['env']


def env_value(job_spec, name):
    values = [e.get('value') for e in env_list(job_spec) if e['name'] == name]
    assert len(values) == 1, name
    return values[0]


def test_every_manifest_parses_as_one_kubernetes_object():
    names = sorted(n for n in os.listdir(DEPLOY) if n.endswith('.yaml'))
    assert names == ['cronjob.yaml', 'job.yaml', 'results-pvc.yaml']
    for name in names:
        document = load(name)
        assert document['apiVersion'] and document['kind'] and document['metadata']['name'], name


def test_job_is_indexed_with_the_shard_from_the_completion_index(job):
    assert (job['apiVersion'], job['kind']) == ('batch/v1', 'Job')
    spec = job['spec']
    assert spec['completionMode'] == 'Indexed'
    count = spec['completions']
    assert isinstance(count, int) and 1 <= count <= sharding.MAX_SHARDS
    assert isinstance(spec['parallelism'], int) and 1 <= spec['parallelism'] <= count
    assert pod(spec)['restartPolicy'] == 'Never'
    assert container(spec)['image'] == IMAGE
    names = [e['name'] for e in env_list(spec)]
    # $(VAR) only expands a variable defined before it: the index must come first, from the Job's annotation.
    assert names.index('JOB_COMPLETION_INDEX') < names.index('OCCYSTRAP_SHARD')
    index = env_list(spec)[names.index('JOB_COMPLETION_INDEX')]
    assert index['valueFrom']['fieldRef']['fieldPath'] == INDEX_ANNOTATION
    assert env_value(spec, 'OCCYSTRAP_SHARD') == '$(JOB_COMPLETION_INDEX)/%d' % count


def test_credentials_come_from_the_secret_as_docker_config(job):
    spec = pod(job['spec'])
    volumes = {v['name']: v for v in spec['volumes']}
    mounts = {m['name']: m for m in container(job['spec'])['volumeMounts']}
    assert set(mounts) <= set(volumes)
    secrets = [name for name, v in volumes.items() if 'secret' in v]
    assert len(secrets) == 1
    secret = volumes[secrets[0]]['secret']
    assert secret['items'] == [{'key': 'config.json', 'path': 'config.json'}]
    assert mounts[secrets[0]]['readOnly'] is True
    assert env_value(job['spec'], 'DOCKER_CONFIG') == mounts[secrets[0]]['mountPath']
    # The README's command creates the Secret the Job mounts.
    assert 'kubectl create secret generic %s --from-file=config.json=' % secret['secretName'] in read('README.md')


def test_results_volume_is_the_claim_of_results_pvc(job):
    claim = load('results-pvc.yaml')
    assert claim['kind'] == 'PersistentVolumeClaim' and claim['spec']['accessModes'] == ['ReadWriteMany']
    volumes = {v['name']: v for v in pod(job['spec'])['volumes']}
    assert volumes['results']['persistentVolumeClaim']['claimName'] == claim['metadata']['name']
    mounts = {m['name']: m['mountPath'] for m in container(job['spec'])['volumeMounts']}
    assert env_value(job['spec'], 'RESULTS') == mounts['results']


def test_rate_limit_is_the_fleet_total_divided_by_parallelism(job):
    rate = float(env_value(job['spec'], 'OCCYSTRAP_RATE_LIMIT'))
    stated = re.search(r'value: "([0-9.]+)" +# = ([0-9.]+) requests/s for the whole fleet / parallelism ([0-9]+)',
                       read('job.yaml'))
    assert stated, 'job.yaml no longer states how the rate limit was divided'
    assert float(stated.group(1)) == rate
    assert int(stated.group(3)) == job['spec']['parallelism']
    assert rate * job['spec']['parallelism'] == pytest.approx(float(stated.group(2)))


def test_cronjob_runs_the_same_job_on_a_schedule(job):
    cron = load('cronjob.yaml')
    assert (cron['apiVersion'], cron['kind']) == ('batch/v1', 'CronJob')
    assert len(cron['spec']['schedule'].split()) == 5
    assert cron['spec']['concurrencyPolicy'] == 'Forbid'
    template = cron['spec']['jobTemplate']['spec']
    assert template == job['spec']
    assert template['completionMode'] == 'Indexed' and container(template)['image'] == IMAGE
    assert env_value(template, 'OCCYSTRAP_SHARD') == '$(JOB_COMPLETION_INDEX)/%d' % template['completions']


def test_containerfile_runs_as_the_user_the_pods_ask_for(job):
    context = pod(job['spec'])['securityContext']
    containerfile = read('Containerfile')
    assert re.search(r'^USER %d:%d$' % (context['runAsUser'], context['runAsGroup']), containerfile, re.M)
    assert context['runAsNonRoot'] is True


def kubelet_environment(job_spec, index, overrides):
    """The container's environment as the kubelet builds it: in order, $(VAR) expanded from earlier entries."""
    env = {}
    for entry in env_list(job_spec):
        if 'valueFrom' in entry:
            assert entry['valueFrom']['fieldRef']['fieldPath'] == INDEX_ANNOTATION
            value = str(index)
        else:
            value = re.sub(r'\$\(([A-Za-z_][A-Za-z0-9_]*)\)', lambda m: env.get(m.group(1), m.group(0)),
                           entry['value'])
        env[entry['name']] = overrides.get(entry['name'], value)
    return env


def test_the_pod_command_mirrors_every_repository_once_across_the_indexes(job, tmp_path):
    spec = job['spec']
    count = spec['completions']
    names = ['team/svc-%02d' % i for i in range(3 * count)]
    base = layer_tar({'etc/base': b'base\n'})
    tarball = write_tar(tmp_path / 'fleet.tar', legacy_members(
        [(['%s:v1' % n], [base, layer_tar({'etc/name': n.encode()})]) for n in names]))
    results = tmp_path / 'results'
    results.mkdir()
    command = container(spec)['command']
    for index in range(count):
        env = kubelet_environment(spec, index, {
            'SOURCE': 'tar://%s' % tarball, 'DESTINATION': 'dir://%s?unique_names=true' % (tmp_path / 'mirror'),
            'DOCKER_CONFIG': str(tmp_path / 'docker'), 'OCCYSTRAP_TEMP_DIR': str(tmp_path / 'work'),
            'RESULTS': str(results)})
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
        env['HOME'] = str(tmp_path)
        ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        with open(results / ('shard-%d.json' % index)) as f:
            summary = json.load(f)
        assert summary['shard'] == '%d/%d' % (index, count) and summary['source_images'] == len(names)
        owned = ['%s:v1' % n for n in names if sharding.owner(n, count) == index]
        assert [r['image'] for r in summary['results']] == owned
    summaries = sorted(str(p) for p in results.iterdir())
    merged = subprocess.run(['jq', '-s', '-f', os.path.join(ROOT, 'tools', 'merge-shards.jq'), *summaries],
                            capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    report = json.loads(merged.stdout)
    assert report['ok'] is True and report['of'] == count and report['missing_shards'] == []
    assert [r['image'] for r in report['results']] == sorted('%s:v1' % n for n in names)
