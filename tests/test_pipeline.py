"""The smoke profile of the DVC pipeline runs end to end in a scratch copy of the repository.

Every pipeline notebook executes (so the pipeline cannot rot), a second `dvc repro` re-runs nothing, and a changed
parameter re-runs only the stages that depend on it. The user's params.yaml and outputs are never touched.
"""

import os, shutil, subprocess, sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cmd, cwd, **kw):
    env = {
        **os.environ,
        'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}",
        'MPLBACKEND': 'Agg',
        'GIT_AUTHOR_NAME': 'smoke',
        'GIT_AUTHOR_EMAIL': 'smoke@example.org',
        'GIT_COMMITTER_NAME': 'smoke',
        'GIT_COMMITTER_EMAIL': 'smoke@example.org',
    }
    res = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, **kw)
    assert res.returncode == 0, f'`{cmd}` failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}'
    return res.stdout + res.stderr


@pytest.fixture(scope='module')
def smoke_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp('smoke') / 'repo'
    files = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split('\0')
    for f in filter(None, files):
        src = ROOT / f
        if not src.is_file() or f == 'dvc.lock':
            continue
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, repo / f)
    sh('git init -q && git add -A && git commit -qm smoke', repo)
    sh(f'{sys.executable} scripts/params_from_profile.py smoke', repo)
    out = sh('dvc repro', repo, timeout=3000)
    return repo, out


def test_smoke_pipeline_runs_every_stage(smoke_repo):
    repo, out = smoke_repo
    stages = yaml.safe_load((repo / 'dvc.yaml').read_text())['stages']
    from histodiff.stage import stage_notebooks

    for name, stage in stages.items():
        nb = stage_notebooks(stage)[1]
        assert (repo / nb).exists(), f'stage {name} left no executed notebook'
    for m in yaml.safe_load((repo / 'dvc.yaml').read_text()).get('metrics', []):
        assert (repo / m).exists(), f'metrics file {m} is missing'


def test_second_repro_reruns_nothing(smoke_repo):
    repo, _ = smoke_repo
    out = sh('dvc repro', repo)
    assert 'Running stage' not in out, out


def test_changed_parameter_reruns_only_its_dependents(smoke_repo):
    repo, _ = smoke_repo
    stages = yaml.safe_load((repo / 'dvc.yaml').read_text())['stages']
    last = list(stages)[-1]
    params = yaml.safe_load((repo / 'params.yaml').read_text())
    group = next(g for g in stages[last]['params'] if isinstance(g, str) and isinstance(params.get(g), dict))
    key = next(k for k, v in params[group].items() if isinstance(v, int) and not isinstance(v, bool))
    out = sh(f'dvc exp run -S {group}.{key}={params[group][key] + 1}', repo, timeout=1200)
    ran = [l.split("'")[1] for l in out.splitlines() if l.startswith('Running stage')]
    assert ran == [last], f'changing {group}.{key} re-ran {ran}'


def test_no_notebook_received_a_boolean_as_text(smoke_repo):
    """The parameters Papermill injected are typed like the notebook's defaults: no 'false' strings, no lists or groups
    as text."""
    import ast, json
    from histodiff.stage import stage_notebooks, notebook_defaults, check_types

    repo, _ = smoke_repo
    stages = yaml.safe_load((repo / 'dvc.yaml').read_text())['stages']
    for name, stage in stages.items():
        src, dst = stage_notebooks(stage)
        cell = next(
            c
            for c in json.loads((repo / dst).read_text())['cells']
            if 'injected-parameters' in c['metadata'].get('tags', [])
        )
        injected = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(''.join(cell['source'])).body}
        assert not [k for k, v in injected.items() if isinstance(v, str) and v.strip().lower() in ('true', 'false')], (
            name,
            injected,
        )
        check_types(injected, notebook_defaults(repo / src), src)  # raises on a str for a bool, list or dict


def test_metrics_hold_no_timings(smoke_repo):
    """DVC's metrics files hold science only (timings go to results/timings/), so `dvc metrics diff` is quiet for
    identical models."""
    import json
    from histodiff.core import split_timings

    repo, _ = smoke_repo
    files = sorted((repo / 'results' / 'metrics').glob('*.json'))
    assert len(files) >= 9
    for f in files:
        science, timings = split_timings(json.loads(f.read_text()))
        assert not timings, f'{f.name} holds timings: {timings}'
    assert (repo / 'results' / 'timings' / 'restoration.json').exists()


def test_a_registered_restorer_reaches_the_evaluation_table(smoke_repo, throwaway_plugin):
    """A restorer registered outside histodiff (an entry point) and named in the profile's list is scored in the
    evaluation table with no other file edited."""
    from conftest import plugin_env

    repo, _ = smoke_repo
    params = yaml.safe_load((repo / 'params.yaml').read_text())
    params['evaluate_restoration']['restorers'].append('throwaway')  # its profile entry
    (repo / 'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        env = {**plugin_env(throwaway_plugin), 'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}", 'MPLBACKEND': 'Agg'}
        res = subprocess.run(
            [sys.executable, '-m', 'histodiff.stage', 'evaluate_restoration'],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert res.returncode == 0, res.stderr[-4000:]
        table = (repo / 'results' / 'restoration' / 'table.md').read_text()
        assert '| throwaway (mean colour) ' in table, table
    finally:
        sh(f'{sys.executable} scripts/params_from_profile.py smoke', repo)
