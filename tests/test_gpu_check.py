"""benchmarks/gpu_check.sh: its CPU dry run, the summary it writes, and its helpers.

The dry run here runs a subset of the steps (env, cuda_tests, crosscheck,
bench_fp32, demo_fp32), which covers every kind of step; the whole dry run
(bench in three precisions, the demo in two) takes a few minutes on two cores
and is run by hand (README, "On a GPU").
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import gpu_crosscheck, gpu_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu_check.sh')
DRY_STEPS = 'env,cuda_tests,crosscheck,bench_fp32,demo_fp32'


def run_check(out, *args, **env):
    environ = dict(os.environ, GPU_CHECK_PYTHON=sys.executable, **env)
    return subprocess.run(['bash', SCRIPT, '--cpu-dry-run', *args, str(out)], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """One dry run of a subset of the steps: (exit status, summary, output folder)."""
    out = tmp_path_factory.mktemp('gpu_check')
    done = run_check(out, '--steps', DRY_STEPS)
    summary = json.loads((out / 'summary.json').read_text())
    return done, summary, out


def numbers(summary, step):
    return summary['steps'][step]['numbers']


# -- the dry run ----------------------------------------------------------------------------

def test_dry_run_records_every_step_ok_and_the_cuda_tests_as_skipped_for_want_of_cuda(dry_run):
    done, summary, _ = dry_run
    statuses = {name: s['status'] for name, s in summary['steps'].items()}
    assert statuses == {'setup': 'ok', 'env': 'ok', 'cuda_tests': 'skipped: no CUDA',
                        'crosscheck': 'ok', 'bench_fp32': 'ok', 'demo_data': 'ok',
                        'demo_fp32': 'ok'}, done.stdout[-3000:]
    assert summary['ok'] is True and summary['mode'] == 'cpu-dry-run'
    assert done.returncode == 0
    for name, step in summary['steps'].items():
        assert math.isfinite(step['seconds']) and step['seconds'] >= 0, name


def test_dry_run_environment_names_this_python_and_torch(dry_run):
    env = numbers(dry_run[1], 'env')
    import torch
    assert env['executable'] == sys.executable
    assert env['torch'] == torch.__version__
    assert env['cuda_available'] is False and 'device' not in env


def test_dry_run_runs_exactly_the_cuda_only_tests_and_all_of_them_skip(dry_run):
    tests = numbers(dry_run[1], 'cuda_tests')
    expected = len(gpu_report.cuda_tests())
    # parametrized tests count once per parameter set, so at least one per function
    assert tests['tests'] >= expected >= 6
    assert tests['skipped'] == tests['tests'] and tests['passed'] == tests['failed'] == 0
    assert all('CUDA' in reason for reason in tests['skip_reasons'])


def test_dry_run_crosscheck_float32_is_within_1e_4_of_float64_but_not_equal(dry_run):
    cross = numbers(dry_run[1], 'crosscheck')
    assert set(cross['parts']) == {'cpu32 vs cpu64 forward', 'cpu32 vs cpu64 backward',
                                   'cpu32 vs cpu64 solver'}
    for part in cross['parts'].values():
        # float32's rounding (6e-8 per operation, grown through ~20 layers) but no more;
        # exactly 0 would mean both runs computed in the same precision
        assert part['ok'] and 1e-9 < part['worst_rel_l2'] < 1e-4, part
    losses = cross['losses']
    assert len(losses['cpu32']) == len(losses['cpu64']) == 5
    np.testing.assert_allclose(losses['cpu32'], losses['cpu64'], rtol=1e-5)


def test_dry_run_crosscheck_json_lists_every_blob_and_param(dry_run):
    report = json.loads((dry_run[2] / 'crosscheck.json').read_text())
    parts = report['comparisons']['cpu32 vs cpu64']
    forward = {r['name'] for r in parts['forward']['arrays']}
    backward = {r['name'] for r in parts['backward']['arrays']}
    solver = {r['name'] for r in parts['solver']['arrays']}
    assert {'data', 'conv1_1', 'fc7', 'score', 'loss'} <= forward
    assert 'drop6' not in forward  # the nets run without Dropout
    assert {'data', 'conv1_1[0]', 'score_pool3[1]', 'upscore8[0]'} <= backward
    assert {'loss', 'fc6[0]', 'history fc6[0]', 'history score_fr[1]'} <= solver


def test_dry_run_bench_rows_are_finite_and_positive(dry_run):
    bench = numbers(dry_run[1], 'bench_fp32')
    assert bench['precision'] == 'fp32' and bench['width'] == 0.0625
    assert {(r['pass'], r['impl']) for r in bench['rows']} >= {
        ('forward', 'engine'), ('forward', 'module'), ('fwd+bwd', 'engine'),
        ('fwd+bwd', 'module'), ('solver', 'engine'), ('solver', 'module')}
    for row in bench['rows']:
        for key in ('median_ms', 'per_s', 'tflops'):
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)


def test_dry_run_demo_gives_a_mean_iu_per_stage(dry_run):
    demo = numbers(dry_run[1], 'demo_fp32')
    assert list(demo['stages']) == ['FCN-32s', 'FCN-16s', 'FCN-8s']
    for stage in demo['stages'].values():
        assert stage['iterations'] == 3  # demo --quick
        assert 0 <= stage['mean_iu'] <= 1 and 0 <= stage['overall_acc'] <= 1
    assert demo['total_seconds'] > 0


def test_dry_run_report_has_the_step_table_and_one_section_per_result(dry_run):
    text = (dry_run[2] / 'report.md').read_text()
    for heading in ('| step | status |', '## CUDA tests', '## Cross-check', '## Speed',
                    '## Demo'):
        assert heading in text
    assert '| cuda_tests | skipped: no CUDA |' in text
    assert 'FCN-8s solver at 48x40' in text  # the targets line


# -- budgets ---------------------------------------------------------------------------------

def test_a_step_over_its_budget_is_killed_and_recorded_and_the_summary_still_written(tmp_path):
    done = run_check(tmp_path, '--steps', 'crosscheck', GPU_CHECK_STEP_S='2')
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['steps']['crosscheck']['status'].startswith('timed out after 2 s')
    assert summary['steps']['crosscheck']['seconds'] < 30
    assert summary['ok'] is False and done.returncode == 1
    assert (tmp_path / 'report.md').exists()


def test_steps_past_the_run_budget_are_skipped_not_started(tmp_path):
    done = run_check(tmp_path, '--steps', 'env,crosscheck', GPU_CHECK_BUDGET_S='5')
    summary = json.loads((tmp_path / 'summary.json').read_text())
    for step in ('env', 'crosscheck'):
        assert summary['steps'][step]['status'].startswith('skipped: out of time')
    assert done.returncode == 1


# -- the helpers -----------------------------------------------------------------------------

def test_cuda_tests_finds_skipif_not_cuda_tests_through_other_decorators(tmp_path):
    (tmp_path / 'test_a.py').write_text(
        "cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')\n\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')\n"
        "@pytest.mark.parametrize('x', [1, 2])\n"
        "def test_on_cuda(x):\n    pass\n\n"
        "@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU error')\n"
        "def test_without_cuda():\n    pass\n\n"
        "@cuda\n"
        "def test_marked_by_name():\n    pass\n\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')\n"
        "x = 1\n"
        "def test_plain():\n    pass\n")
    (tmp_path / 'test_b.py').write_text(
        "pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA')]\n"
        "def test_one():\n    pass\n")
    found = gpu_report.cuda_tests(str(tmp_path))
    rel = os.path.relpath(str(tmp_path), ROOT)
    assert found == [rel + '/test_a.py::test_on_cuda', rel + '/test_a.py::test_marked_by_name',
                     rel + '/test_b.py']


def test_cuda_tests_of_the_suite_include_the_known_gpu_tests():
    found = gpu_report.cuda_tests()
    for test in ('tests/test_solver.py::test_gpu_training_matches_cpu',
                 'tests/test_infer.py::test_gpu_labels_match_the_cpu_ones',
                 'tests/test_bench_fcn.py::test_quick_run_on_cuda_measures_device_memory'):
        assert test in found
    assert not any('without_cuda' in f or 'checks_the_error' in f for f in found)


def fake_out(tmp_path, records, files=()):
    (tmp_path / 'logs').mkdir()
    (tmp_path / 'run.json').write_text(json.dumps(dict(mode='gpu', budget_s=450,
                                                       started_epoch=0)))
    (tmp_path / 'steps.jsonl').write_text(''.join(
        json.dumps(dict(step=name, status=status, seconds=1.0, budget_s=10, log='x'))
        + '\n' for name, status in records))
    for name, text in files:
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_summary_fails_a_step_that_exited_0_without_numbers_or_with_nan(tmp_path):
    bench = dict(device='d', precision='fp32', width=1.0, peak_tflops=67.0, repeats=5,
                 checks=[], rows=[{'net': 'fcn8s', 'size': '500x500', 'pass': 'forward',
                                   'impl': 'engine', 'median_ms': float('nan'), 'per_s': 1.0,
                                   'tflops': 1.0, 'peak_mib': 1.0}])
    out = fake_out(tmp_path, [('env', 'ok'), ('crosscheck', 'timed out after 150 s'),
                              ('bench_fp32', 'ok'), ('demo_fp32', 'skipped: out of time'),
                              ('bench_fp32', 'ok')],
                   [('bench-fp32.json', json.dumps(bench))])
    steps = gpu_report.summarize(out)['steps']
    assert list(steps) == ['env', 'demo_fp32', 'crosscheck', 'bench_fp32']  # the run's order
    assert steps['env']['status'].startswith('failed: no results (FileNotFoundError')
    assert steps['crosscheck']['status'].startswith('timed out after 150 s; no results')
    assert steps['bench_fp32']['status'] == 'failed: missing or non-finite numbers'
    assert steps['demo_fp32']['status'] == 'skipped: out of time'


def test_summary_on_a_gpu_fails_cuda_tests_that_skip_there(tmp_path):
    xml = ('<testsuites><testsuite><testcase classname="tests.test_a" name="test_x">'
           '<skipped message="needs CUDA"/></testcase></testsuite></testsuites>')
    out = fake_out(tmp_path, [('cuda_tests', 'ok')], [('cuda-tests.xml', xml)])
    steps = gpu_report.summarize(out)['steps']
    assert steps['cuda_tests']['status'] == 'failed: 1 of 1 skipped on a CUDA machine'


def test_cuda_tests_cut_short_are_counted_from_the_verbose_log(tmp_path):
    log = ('tests/test_a.py::test_x[1] PASSED      [ 33%]\n'
           'tests/test_a.py::test_x[2] FAILED      [ 66%]\n'
           'tests/test_b.py::test_y SKIPPED (needs CUDA) [100%]\n')
    out = fake_out(tmp_path, [('cuda_tests', 'timed out after 150 s')])
    (tmp_path / 'logs' / 'cuda_tests.log').write_text(log)
    step = gpu_report.summarize(out)['steps']['cuda_tests']
    assert step['status'] == ('timed out after 150 s; no JUnit XML (stopped early?): '
                              '3 results read from the log')
    numbers = step['numbers']
    assert (numbers['passed'], numbers['failed'], numbers['skipped']) == (1, 1, 1)
    assert numbers['failures'] == ['tests/test_a.py::test_x[2]']


def test_compare_fails_a_part_with_one_array_over_tolerance_or_not_finite():
    ref = {'forward': {'a': np.ones(4), 'b': np.arange(4.0)}}
    close = {'forward': {'a': np.ones(4) * (1 + 1e-7), 'b': np.arange(4.0)}}
    far = {'forward': {'a': np.ones(4), 'b': np.arange(4.0) + [0, 0, 0, 1]}}
    nan = {'forward': {'a': np.ones(4) * np.nan, 'b': np.arange(4.0)}}
    assert gpu_crosscheck.compare(close, ref, 1e-4)['forward']['ok']
    result = gpu_crosscheck.compare(far, ref, 1e-4)['forward']
    assert not result['ok'] and result['worst'] == 'b'
    assert result['worst_rel_l2'] == pytest.approx(1 / math.sqrt(14))
    assert not gpu_crosscheck.compare(nan, ref, 1e-4)['forward']['ok']


def test_compare_passes_an_array_no_further_off_than_factor_times_the_float32_baseline():
    ref = {'backward': {'a': np.ones(100), 'b': np.ones(100)}}
    off = np.ones(100)
    off[0] = 1.1  # rel_l2 0.01: a flipped ReLU's worth, over the tolerance
    test = {'backward': {'a': off, 'b': off}}
    baseline = {'backward': {'arrays': [{'name': 'a', 'rel_l2': 0.002},
                                        {'name': 'b', 'rel_l2': 0.0002}]}}
    result = gpu_crosscheck.compare(test, ref, 1e-4, baseline, 10.0)['backward']
    rows = {r['name']: r for r in result['arrays']}
    assert rows['a']['ok'] and rows['a']['baseline_rel_l2'] == 0.002
    assert not rows['b']['ok'] and not result['ok']  # 0.01 > 10 x 0.0002
    assert not gpu_crosscheck.compare(test, ref, 1e-4)['backward']['ok']
    # a solver's momentum history is held to the backward's baseline of its param
    solver = gpu_crosscheck.compare({'solver': {'history a': off, 'loss': np.ones(2)}},
                                    {'solver': {'history a': np.ones(100), 'loss': np.ones(2)}},
                                    1e-4, baseline, 10.0)['solver']
    assert solver['ok'] and solver['arrays'][0]['baseline_rel_l2'] == 0.002


def test_difference_of_a_zero_reference_is_zero_only_when_equal():
    assert gpu_crosscheck.difference(np.zeros(3), np.zeros(3))['rel_l2'] == 0
    assert gpu_crosscheck.difference(np.ones(3), np.zeros(3))['rel_l2'] == math.inf
    with pytest.raises(ValueError, match='shapes differ'):
        gpu_crosscheck.difference(np.zeros(3), np.zeros(4))


def test_bench_json_is_written_after_each_net_and_size_so_a_cut_short_run_keeps_it(
        tmp_path, monkeypatch):
    from benchmarks import bench_fcn
    made = []

    class StopAfterOne(bench_fcn.Setup):
        def __init__(self, *args):
            if made:
                raise KeyboardInterrupt  # as a time limit would stop the run
            made.append(1)
            super().__init__(*args)

    monkeypatch.setattr(bench_fcn, 'Setup', StopAfterOne)
    out = tmp_path / 'bench.json'
    with pytest.raises(KeyboardInterrupt):
        bench_fcn.main(['--quick', '--nets', '8s', '--passes', 'forward', '--json', str(out)])
    result = json.loads(out.read_text())
    assert result['complete'] is False
    assert {(r['net'], r['size']) for r in result['rows']} == {('fcn8s', '48x40')}


def test_crosscheck_json_is_written_after_each_run_so_a_cut_short_run_keeps_it(
        tmp_path, monkeypatch):
    real = gpu_crosscheck.run_all

    def stop_at_float64(case, run, parts):
        if run == 'cpu64':
            raise KeyboardInterrupt  # as a time limit would stop the run
        return real(case, run, parts)

    monkeypatch.setattr(gpu_crosscheck, 'run_all', stop_at_float64)
    out = tmp_path / 'cross.json'
    with pytest.raises(KeyboardInterrupt):
        gpu_crosscheck.main(['--cpu-dry-run', '--steps', '1', '--json', str(out)])
    report = json.loads(out.read_text())
    assert report['complete'] is False and report['ok'] is False
    assert list(report['runs']) == ['cpu32'] and report['comparisons'] == {}
    assert len(report['losses']['cpu32']) == 1
