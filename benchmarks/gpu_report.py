"""The Python half of ``benchmarks/gpu_check.sh``: the environment, the CUDA test list,
and the summary JSON and report of a run.

    python benchmarks/gpu_report.py env OUT/env.json          # versions, device, nvidia-smi
    python benchmarks/gpu_report.py cuda-tests                # node ids of the CUDA-only tests
    python benchmarks/gpu_report.py summary OUT               # OUT/summary.json, OUT/report.md

``summary`` reads what the steps left in OUT: ``steps.jsonl`` (one line per
step: name, exit status, seconds, budget, written by gpu_check.sh),
``env.json``, ``cuda-tests.xml`` (pytest's JUnit XML), ``crosscheck.json``,
``bench-<precision>.json`` (bench_fcn.py --json) and ``logs/demo_<precision>.log``
(demo.py's table). Every step gets a status ('ok', 'failed: ...',
'timed out ...', 'skipped: ...') and its numbers; a step that exited 0 but left
no numbers, or non-finite ones, is 'failed: ...'.
"""
import glob
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = ('fp32', 'tf32', 'bf16')
# gpu_check.sh's steps in the order the report lists them.
ORDER = ('setup', 'env', 'demo_data', 'demo_fp32', 'demo_bf16', 'cuda_tests', 'crosscheck',
         'bench_fp32', 'bench_bf16', 'bench_tf32')
NO_CUDA = 'skipped: no CUDA'
# A decorator that skips a test where torch sees no CUDA device.
CUDA_MARK = r'pytest\.mark\.skipif\(\s*not\s+torch\.cuda\.is_available\(\)'
CUDA_SKIP = re.compile('^@' + CUDA_MARK)
# demo.py's table: stage, iterations, four metrics, seconds.
DEMO_ROW = re.compile(r'^(FCN-\d+s)\s+(\d+)\s+' + r'\s+'.join([r'(\S+)'] * 4) + r'\s+(\d+)s\s*$')
DEMO_METRICS = ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc')
# The GPU targets (fp32, TF32 off): FCN-8s solver iterations per second on
# SBD-size images, and the 500 x 500 forward.
TARGET_SOLVER_PER_S = 30.0
TARGET_FORWARD_MS = 10.0


# ------------------------------------------------------------------------ env

def environment():
    """Versions of Python, torch, CUDA, cuDNN and the packages, the device, nvidia-smi."""
    info = dict(python=platform.python_version(), executable=sys.executable,
                platform=platform.platform(), cpus=os.cpu_count())
    for name in ('numpy', 'scipy', 'google.protobuf', 'PIL', 'h5py', 'cv2', 'pytest'):
        try:
            module = __import__(name, fromlist=['__version__'])
            info[name.split('.')[-1]] = getattr(module, '__version__', '?')
        except Exception as err:  # noqa: BLE001 -- recorded, not fatal
            info[name.split('.')[-1]] = 'missing (%s)' % err
    try:
        import torch
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    cuda_available=torch.cuda.is_available(),
                    cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                        capability='%d.%d' % (props.major, props.minor),
                        memory_gib=round(props.total_memory / 2 ** 30, 1),
                        multiprocessors=props.multi_processor_count)
    except Exception as err:  # noqa: BLE001
        info['torch'] = 'missing (%s)' % err
    try:
        import torchcaffe
        info['torchcaffe'] = os.path.dirname(torchcaffe.__file__)
    except Exception as err:  # noqa: BLE001
        info['torchcaffe'] = 'import failed (%s)' % err
    info['git_commit'] = _run(['git', '-C', ROOT, 'rev-parse', 'HEAD'])
    info['nvidia_smi'] = (_run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,'
                                'clocks.max.sm,power.limit', '--format=csv,noheader'])
                          if shutil.which('nvidia-smi') else 'not found')
    return info


def _run(cmd):
    """The command's output, or None where it fails (no git checkout, no driver)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------ CUDA tests

def cuda_tests(tests_dir=os.path.join(ROOT, 'tests')):
    """Node ids (``tests/test_x.py::test_name``, or the file) of the tests that skip
    without CUDA.

    A test counts when ``pytest.mark.skipif(not torch.cuda.is_available(), ...)``
    decorates its ``def`` (other decorators may sit between), directly or through
    a module-level name bound to that mark; a file counts whole when its
    ``pytestmark`` holds the mark.
    """
    found = []
    for path in sorted(glob.glob(os.path.join(tests_dir, 'test_*.py'))):
        rel = os.path.relpath(path, ROOT)
        marks, pending, tests = set(), False, []
        with open(path) as f:
            for line in f:
                bound = re.match(r'(\w+)\s*=.*' + CUDA_MARK, line)
                if bound:
                    marks.add(bound.group(1))
                    if bound.group(1) == 'pytestmark':
                        tests = None  # the whole file
                        break
                elif CUDA_SKIP.match(line) or re.match(r'@(\w+)\s*$', line) and \
                        re.match(r'@(\w+)', line).group(1) in marks:
                    pending = True
                elif pending and line.startswith(('def ', 'async def ')):
                    tests.append(re.match(r'(?:async )?def (\w+)', line).group(1))
                    pending = False
                elif pending and not line.startswith(('@', ' ', ')', '\n')):
                    pending = False  # something else came between: not a test
        found += [rel] if tests is None else ['%s::%s' % (rel, t) for t in tests]
    return found


def junit_counts(path):
    """Counts and outcomes of a pytest JUnit XML file.

    Returns
    -------
    dict : tests, passed, failed, errors, skipped, skip_reasons ({reason: count}),
    failures ([test id]).
    """
    root = ET.parse(path).getroot()
    counts = dict(tests=0, passed=0, failed=0, errors=0, skipped=0, skip_reasons={},
                  failures=[])
    for case in root.iter('testcase'):
        counts['tests'] += 1
        name = '%s::%s' % (case.get('classname', ''), case.get('name', ''))
        if case.find('failure') is not None:
            counts['failed'] += 1
            counts['failures'].append(name)
        elif case.find('error') is not None:
            counts['errors'] += 1
            counts['failures'].append(name)
        elif case.find('skipped') is not None:
            counts['skipped'] += 1
            reason = case.find('skipped').get('message', '')
            counts['skip_reasons'][reason] = counts['skip_reasons'].get(reason, 0) + 1
        else:
            counts['passed'] += 1
    return counts


# ------------------------------------------------------------------------ demo

def demo_table(text):
    """demo.py's per-stage table from its printed output: {stage: {iterations,
    overall_acc, mean_acc, mean_iu, fwavacc, seconds}}, and the total seconds (or None).

    >>> rows, total = demo_table('FCN-32s  1000  0.8  0.5  0.3125  0.7  41s\\n'
    ...                          'total time 99.5 s (ok)')
    >>> rows['FCN-32s']['mean_iu'], rows['FCN-32s']['seconds'], total
    (0.3125, 41.0, 99.5)
    """
    rows = {}
    for line in text.splitlines():
        match = DEMO_ROW.match(line.strip())
        if match:
            values = [float(v) for v in match.groups()[2:6]]
            rows[match.group(1)] = dict(iterations=int(match.group(2)),
                                        seconds=float(match.group(7)),
                                        **dict(zip(DEMO_METRICS, values)))
    total = re.findall(r'^total time ([\d.]+) s', text, re.M)
    return rows, float(total[-1]) if total else None


# ------------------------------------------------------------------------ summary

def finite(value):
    """True for a finite number (bools and None are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def read_steps(out):
    """gpu_check.sh's step records, in order, the last record of a name winning."""
    steps = {}
    path = os.path.join(out, 'steps.jsonl')
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    steps.pop(record['step'], None)
                    steps[record['step']] = record
    return steps


def numbers_env(out, _):
    env = _load_json(os.path.join(out, 'env.json'))
    problem = None if env.get('torch', '').split(' ')[0] != 'missing' else 'torch missing'
    return env, problem


def log_counts(path):
    """Counts from ``pytest -v`` output, for a run stopped before it wrote its XML:
    the same keys as :func:`junit_counts`, skip reasons unknown."""
    counts = dict(tests=0, passed=0, failed=0, errors=0, skipped=0, skip_reasons={},
                  failures=[])
    with open(path) as f:
        for line in f:
            match = re.match(r'^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)\b', line)
            if match:
                name, outcome = match.groups()
                counts['tests'] += 1
                key = {'PASSED': 'passed', 'FAILED': 'failed', 'ERROR': 'errors',
                       'SKIPPED': 'skipped'}[outcome]
                counts[key] += 1
                if key in ('failed', 'errors'):
                    counts['failures'].append(name)
    return counts


def numbers_cuda_tests(out, mode):
    xml = os.path.join(out, 'cuda-tests.xml')
    if not os.path.exists(xml):
        counts = log_counts(os.path.join(out, 'logs', 'cuda_tests.log'))
        return counts, 'no JUnit XML (stopped early?): %d results read from the log' % (
            counts['tests'])
    counts = junit_counts(xml)
    if counts['tests'] == 0:
        return counts, 'no tests ran'
    if counts['failed'] or counts['errors']:
        return counts, '%d failed, %d errors' % (counts['failed'], counts['errors'])
    cuda_skips = sum(n for reason, n in counts['skip_reasons'].items() if 'CUDA' in reason)
    if counts['skipped'] == counts['tests'] == cuda_skips and mode != 'gpu':
        counts['status'] = NO_CUDA
    elif counts['skipped']:
        return counts, '%d of %d skipped on a CUDA machine' % (counts['skipped'], counts['tests'])
    return counts, None


def numbers_crosscheck(out, _):
    report = _load_json(os.path.join(out, 'crosscheck.json'))
    parts = {}
    baselines = report.get('baselines', [])
    for label, comparison in report['comparisons'].items():
        for part, c in comparison.items():
            parts['%s %s' % (label, part)] = dict(
                ok='baseline' if label in baselines else c['ok'], worst=c['worst'],
                worst_rel_l2=c['worst_rel_l2'], max_abs=max(r['max_abs'] for r in c['arrays']))
    numbers = dict(ok=report['ok'], device=report['device'], size=report['size'],
                   width=report['width'], steps=report['steps'], tolerance=report['tolerance'],
                   factor=report.get('factor'),
                   losses=report['losses'], parts=parts)
    values = [p['worst_rel_l2'] for p in parts.values()] + [p['max_abs'] for p in parts.values()]
    values += [v for losses in report['losses'].values() for v in losses]
    numbers['complete'] = report.get('complete', True)
    if not parts or not all(finite(v) for v in values):
        return numbers, 'non-finite or missing differences'
    if not numbers['complete']:
        return numbers, 'incomplete: only the %s runs finished' % ', '.join(report['runs'])
    if not report['ok']:
        return numbers, 'differences above the tolerance %g' % report['tolerance']
    return numbers, None


def numbers_bench(precision):
    def read(out, _):
        result = _load_json(os.path.join(out, 'bench-%s.json' % precision))
        keys = ('median_ms', 'per_s', 'tflops', 'peak_mib')
        bad = [r for r in result['rows'] if not all(finite(r[k]) for k in keys)]
        numbers = dict(device=result['device'], precision=result['precision'],
                       width=result['width'], peak_tflops=result['peak_tflops'],
                       repeats=result['repeats'], rows=result['rows'], checks=result['checks'],
                       complete=result.get('complete', True))
        if not result['rows'] or bad:
            return numbers, 'missing or non-finite numbers'
        return numbers, None
    return read


def numbers_demo(precision):
    def read(out, _):
        with open(os.path.join(out, 'logs', 'demo_%s.log' % precision)) as f:
            rows, total = demo_table(f.read())
        numbers = dict(stages=rows, total_seconds=total)
        if len(rows) != 3 or not all(finite(v) for r in rows.values() for v in r.values()):
            return numbers, 'no complete per-stage table with finite numbers'
        return numbers, None
    return read


READERS = dict(env=numbers_env, cuda_tests=numbers_cuda_tests, crosscheck=numbers_crosscheck,
               **{'bench_' + p: numbers_bench(p) for p in PRECISIONS},
               **{'demo_' + p: numbers_demo(p) for p in PRECISIONS})


def step_status(record, reader, out, mode):
    """The step's status and numbers: the exit status first, then what it wrote."""
    status = record['status']
    numbers = None
    if reader is not None and not status.startswith('skipped'):
        try:
            numbers, problem = reader(out, mode)
        except (OSError, ValueError, KeyError, ET.ParseError) as err:
            numbers, problem = None, 'no results (%s: %s)' % (type(err).__name__, err)
        if numbers and numbers.get('status'):
            status = numbers.pop('status') if status == 'ok' else status
        elif status == 'ok' and problem:
            status = 'failed: ' + problem
        elif problem:
            status = '%s; %s' % (status, problem)
    return status, numbers


def summarize(out):
    """Build summary.json's content from what the steps left in ``out``."""
    meta = _load_json(os.path.join(out, 'run.json'))
    steps = {}
    records = read_steps(out)
    order = [n for n in ORDER if n in records] + [n for n in records if n not in ORDER]
    for name, record in ((n, records[n]) for n in order):
        status, numbers = step_status(record, READERS.get(name), out, meta['mode'])
        steps[name] = dict(status=status, seconds=record.get('seconds'),
                           budget_s=record.get('budget_s'), log=record.get('log'),
                           numbers=numbers)
    good = ('ok', NO_CUDA)
    return dict(meta, seconds=time.time() - meta['started_epoch'],
                ok=all(s['status'] in good for s in steps.values()), steps=steps)


# ------------------------------------------------------------------------ report

def _fmt(value, spec='%.3g'):
    return spec % value if finite(value) else '-'


def _pair(a, b, spec='%.1f'):
    return '%s / %s' % (_fmt(a, spec), _fmt(b, spec))


def bench_rows(bench):
    """One table row per net and size: the engine and the module side by side."""
    cells = {}
    for row in bench['rows']:
        cells.setdefault((row['net'], row['size']), {})[(row['pass'], row['impl'])] = row
    lines = []
    for (net, size), c in cells.items():
        def get(pass_, impl, key):
            return c.get((pass_, impl), {}).get(key)
        lines.append('| %s | %s | %s | %s | %s | %s | %s | %s |' % (
            net, size, bench['precision'] + ('' if bench.get('complete', True) else ' (cut short)'),
            _pair(get('forward', 'engine', 'median_ms'), get('forward', 'module', 'median_ms')),
            _pair(get('fwd+bwd', 'engine', 'median_ms'), get('fwd+bwd', 'module', 'median_ms')),
            _pair(get('solver', 'engine', 'per_s'), get('solver', 'module', 'per_s'), '%.2f'),
            _pair(get('solver', 'engine', 'peak_mib'), get('solver', 'module', 'peak_mib'),
                  '%.0f'),
            '%s (%s %%)' % (_fmt(get('fwd+bwd', 'engine', 'tflops'), '%.2f'),
                            _fmt(get('fwd+bwd', 'engine', 'peak_percent'), '%.1f'))))
    return lines


def targets(bench):
    """Lines on the issue's fp32 targets, from the fp32 bench's FCN-8s rows."""
    lines = []
    for row in bench['rows']:
        if row['net'] != 'fcn8s' or row['impl'] != 'engine':
            continue
        if row['pass'] == 'solver':
            lines.append('- FCN-8s solver at %s: %.2f it/s (target >= %g): %s'
                         % (row['size'], row['per_s'], TARGET_SOLVER_PER_S,
                            'met' if row['per_s'] >= TARGET_SOLVER_PER_S else 'missed'))
        elif row['pass'] == 'forward' and row['size'] == '500x500':
            lines.append('- FCN-8s forward at 500x500: %.2f ms (target < %g ms): %s'
                         % (row['median_ms'], TARGET_FORWARD_MS,
                            'met' if row['median_ms'] < TARGET_FORWARD_MS else 'missed'))
    return lines


def report(summary):
    """report.md: the steps, then a table per kind of result."""
    steps = summary['steps']
    env = (steps.get('env') or {}).get('numbers') or {}
    lines = ['# gpu_check: %s' % ('all steps ok' if summary['ok'] else 'some steps not ok'), '',
             'Mode %s; %s; torch %s (CUDA %s, cuDNN %s); Python %s; commit %s; %.0f s of a %d s '
             'budget.' % (summary['mode'], env.get('device', 'no CUDA device'), env.get('torch'),
                          env.get('torch_cuda'), env.get('cudnn'), env.get('python'),
                          str(env.get('git_commit') or '?')[:12], summary.get('seconds') or 0,
                          summary['budget_s']),
             '']
    if env.get('nvidia_smi') and env['nvidia_smi'] != 'not found':
        lines += ['nvidia-smi (name, driver, memory, max SM clock, power limit): %s'
                  % env['nvidia_smi'], '']
    lines += ['| step | status | seconds | budget s |', '| --- | --- | ---: | ---: |']
    for name, s in steps.items():
        lines.append('| %s | %s | %s | %s |' % (name, s['status'], _fmt(s['seconds'], '%.0f'),
                                                _fmt(s['budget_s'], '%.0f')))
    tests = (steps.get('cuda_tests') or {}).get('numbers')
    if tests:
        lines += ['', '## CUDA tests', '',
                  '%d tests: %d passed, %d failed, %d errors, %d skipped.'
                  % (tests['tests'], tests['passed'], tests['failed'], tests['errors'],
                     tests['skipped'])]
        lines += ['- failed: `%s`' % name for name in tests['failures']]
        lines += ['- skipped (%d): %s' % (n, reason)
                  for reason, n in tests['skip_reasons'].items()]
    cross = (steps.get('crosscheck') or {}).get('numbers')
    if cross:
        lines += ['', '## Cross-check: FCN-8s %s, width %g, %d SGD steps, fp32 (TF32 off)'
                  % (cross['size'], cross['width'], cross['steps']), '',
                  'rel_l2 = ||test - ref|| / ||ref|| per array; the worst array of each part. '
                  'An array passes at rel_l2 <= %g, or at most %s times the baseline '
                  '(CPU float32 against float64) for that array.'
                  % (cross['tolerance'], _fmt(cross.get('factor'), '%g')), '',
                  '| comparison, part | worst rel_l2 | worst array | max abs diff | ok |',
                  '| --- | ---: | --- | ---: | --- |']
        for label, p in cross['parts'].items():
            verdict = p['ok'] if p['ok'] == 'baseline' else 'yes' if p['ok'] else 'NO'
            lines.append('| %s | %s | %s | %s | %s |' % (label, _fmt(p['worst_rel_l2']),
                                                      p['worst'], _fmt(p['max_abs']), verdict))
        for run, losses in cross['losses'].items():
            lines.append('')
            lines.append('Solver losses, %s: %s' % (run, ', '.join('%.7g' % v for v in losses)))
    benches = [(p, (steps.get('bench_' + p) or {}).get('numbers')) for p in PRECISIONS]
    benches = [(p, b) for p, b in benches if b]
    if benches:
        first = benches[0][1]
        lines += ['', '## Speed (bench_fcn.py): engine / nn.Module', '',
                  '%s; peak TFLOP/s per precision: %s; median of %d timed runs.'
                  % (first['device'], ', '.join('%s %s' % (p, _fmt(b['peak_tflops'], '%g'))
                                               for p, b in benches), first['repeats']), '',
                  '| net | size | precision | forward ms | fwd+bwd ms | solver it/s '
                  '| solver peak MiB | fwd+bwd TFLOP/s (% peak) |',
                  '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |']
        for _, bench in benches:
            lines += bench_rows(bench)
        fp32 = dict(benches).get('fp32')
        if fp32:
            lines += ['', 'Targets (fp32, TF32 off):'] + targets(fp32)
    demos = [(p, (steps.get('demo_' + p) or {}).get('numbers')) for p in PRECISIONS]
    demos = [(p, d) for p, d in demos if d and d['stages']]
    if demos:
        lines += ['', '## Demo (demo.py), mean IU per stage', '',
                  '| stage | iterations | ' + ' | '.join('mean IU %s' % p for p, _ in demos)
                  + ' | ' + ' | '.join('time %s' % p for p, _ in demos) + ' |',
                  '| --- | ---: |' + ' ---: |' * (2 * len(demos))]
        for stage in ('FCN-32s', 'FCN-16s', 'FCN-8s'):
            got = [d['stages'].get(stage, {}) for _, d in demos]
            lines.append('| %s | %s | %s | %s |' % (
                stage, '/'.join(sorted({str(g.get('iterations', '-')) for g in got})),
                ' | '.join(_fmt(g.get('mean_iu'), '%.4f') for g in got),
                ' | '.join(_fmt(g.get('seconds'), '%.0f s') for g in got)))
    return '\n'.join(lines) + '\n'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['env'] and len(argv) == 2:
        with open(argv[1], 'w') as f:
            json.dump(environment(), f, indent=1)
        return 0
    if argv == ['cuda-tests']:
        print('\n'.join(cuda_tests()))
        return 0
    if argv[:1] == ['summary'] and len(argv) == 2:
        out = argv[1]
        summary = summarize(out)
        with open(os.path.join(out, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        text = report(summary)
        with open(os.path.join(out, 'report.md'), 'w') as f:
            f.write(text)
        print(text)
        return 0 if summary['ok'] else 1
    sys.exit(__doc__)


if __name__ == '__main__':
    sys.exit(main())
