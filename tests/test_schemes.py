"""The one table of schemes: the URI grammar and the pipeline both follow it."""

import importlib
import subprocess
import sys

import pytest

from occystrap import pipeline, schemes
from occystrap.errors import UsageError
from occystrap.uris import parse_uri


def example(scheme, option=None, value='x'):
    base = {'registry': 'registry://127.0.0.1:5000/team/app:v1', 'quay': 'quay://org/app*:v1',
            'docker': 'docker://app:v1'}.get(scheme, '%s:///tmp/somewhere' % scheme)
    return base if option is None else '%s?%s=%s' % (base, option, value)


@pytest.mark.parametrize('role', ['input', 'output'])
def test_every_class_of_the_table_exists_and_plays_its_role(role):
    base = pipeline.ImageInput if role == 'input' else pipeline.ImageOutput
    for name, target in schemes.classes(role).items():
        module, cls = target.split(':')
        assert issubclass(getattr(importlib.import_module(module), cls), base), name
        assert pipeline.load(pipeline.INPUTS if role == 'input' else pipeline.OUTPUTS, name).__name__ == cls


@pytest.mark.parametrize('role', ['input', 'output'])
def test_the_grammar_takes_exactly_the_options_of_the_table(role):
    for scheme in schemes.SCHEMES:
        allowed = scheme.options(role)
        if allowed is None:
            role_word = 'source' if role == 'input' else 'destination'
            with pytest.raises(UsageError, match='unknown %s scheme' % role_word):
                parse_uri(example(scheme.name), role)
            continue
        for option in allowed:
            value = 'true' if option in scheme.booleans else 'x'
            assert parse_uri(example(scheme.name, option, value), role).options[option] == value
        for option in scheme.booleans & set(allowed):
            with pytest.raises(UsageError, match='must be true or false'):
                parse_uri(example(scheme.name, option, 'maybe'), role)
        with pytest.raises(UsageError, match="unknown option 'colour'"):
            parse_uri(example(scheme.name, 'colour'), role)


def test_aliases_parse_as_their_scheme():
    assert schemes.lookup('FILE').name == 'tar'
    assert parse_uri('file:///tmp/a.tar', 'output').scheme == 'tar'
    assert pipeline.OUTPUTS['file'] == pipeline.OUTPUTS['tar']
    assert schemes.names('input') == ('registry', 'quay', 'docker', 'tar', 'file', 'ocidir')


def test_quay_passes_on_the_options_registry_takes():
    from occystrap.inputs.quay import REGISTRY_OPTIONS
    assert set(REGISTRY_OPTIONS) == {'insecure', 'os', 'arch', 'architecture', 'variant'}
    assert 'token' not in REGISTRY_OPTIONS


def test_the_table_imports_no_scheme_module():
    code = 'import sys, occystrap.uris, occystrap.pipeline; print(sorted(m for m in sys.modules ' \
           'if m.startswith(("occystrap.inputs", "occystrap.outputs", "httpx"))))'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == '[]'


def test_outputs_take_run_facts_as_parameters_not_from_the_context(tmp_path):
    from occystrap.pipeline import RunContext, build_output
    ctx = RunContext()
    try:
        output = build_output(parse_uri('tar://%s' % (tmp_path / 'x.tar'), 'output'), ctx,
                              [pipeline_filter('normalize-timestamps:ts=5')], multi_image=True)
        inner = output.inner
        assert (inner.multi_image, inner.filters) == (True, ('normalize-timestamps:ts=5',))
        assert not hasattr(ctx, 'multi_image') and not hasattr(ctx, 'filter_fingerprint')
        single = build_output(parse_uri('tar://%s' % (tmp_path / 'y.tar'), 'output'), ctx)
        assert (single.multi_image, single.filters) == (False, ())
    finally:
        ctx.close()


def pipeline_filter(text):
    from occystrap.uris import parse_filter
    return parse_filter(text, pipeline.FILTERS)
