"""Training logs as train and test tables (CSV): Caffe's tools/extra/parse_log.py.

    parse_log caffe.INFO out_dir/              # writes out_dir/caffe.INFO.train, .test
    parse_log snapshot/train.log . --delimiter ';'

Reads Caffe's glog logs (``I1121 20:34:51.123456 12345 solver.cpp:243] ...``), the
same lines torchcaffe's solver logs (``torchcaffe.glog``), and the seg-test lines
of training.py (``>>> 2016-05-04 12:00:00.123456 Iteration 4000 mean IU 0.62``).
As Caffe's parser: the iteration is the last ``Iteration N`` seen (nothing counts
before the first), the learning rate the last ``lr = R``; each ``Train net
output #k: name = v`` / ``Test net output #k: name = v`` fills the row of that
iteration, which is complete once it has as many columns as the first row;
Seconds count from the line that says ``Solving`` (else the first timed line);
the first row's LearningRate (logged only after it) is the second row's.

Columns: NumIters, Seconds, LearningRate, then the outputs by name. Where this
differs from Caffe's script: a last row that is not complete is kept (Caffe drops
it, so a log with a single test had an empty test table); glog's year-less
dates take the log file's modification year, with a step to the next year when
the month goes back (Caffe uses the file's creation year and no step); NumIters
is written as an integer.
"""
import argparse
import csv
import datetime
import math
import os
import re
import sys

__all__ = ['parse_log', 'parse_lines', 'write_csv', 'save_csv_files', 'main']

GLOG_LINE = re.compile(r'^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+\d+ [^\]]*\] (.*)$')
SCORE_LINE = re.compile(r'^>>> (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (.*)$')
ITERATION = re.compile(r'Iteration (\d+)')
TRAIN_OUTPUT = re.compile(r'Train net output #(\d+): (\S+) = ([-+.\deEinfa]+)')
TEST_OUTPUT = re.compile(r'Test net output #(\d+): (\S+) = ([-+.\deEinfa]+)')
LEARNING_RATE = re.compile(r'lr = ([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)')
# training.py / score.py: "Iteration N <metric name> <value>"
SCORE_METRIC = re.compile(r'^Iteration (\d+) (loss|overall accuracy|mean accuracy|mean IU|'
                          r'fwavacc) ([-+.\deEinfa]+)$')

# The header glog writes at the top of a log file: the only place with the year.
GLOG_HEADER = re.compile(r'^Log file created at: (\d{4})/')
FIXED = ('NumIters', 'Seconds', 'LearningRate')


def _number(text):
    """``text`` as a float (nan and inf included), or None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _glog_time(match, year):
    month, day, hour, minute, second, micro = (int(match.group(k)) for k in range(1, 7))
    return datetime.datetime(year, month, day, hour, minute, second, micro)


class _Table:
    """Rows of one kind (train or test), filled as Caffe's parse_line_for_net_output."""

    def __init__(self):
        self.rows = []
        self.row = None

    def add(self, iteration, seconds, rate, name, value):
        if self.row is None or self.row['NumIters'] != iteration:
            if self.row is not None:
                self.rows.append(self.row)
            self.row = {'NumIters': iteration, 'Seconds': seconds, 'LearningRate': rate}
        self.row[name] = value
        if self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None

    def finish(self):
        if self.row is not None:
            self.rows.append(self.row)
            self.row = None
        if len(self.rows) > 1:  # Caffe's fix_initial_nan_learning_rate
            self.rows[0]['LearningRate'] = self.rows[1]['LearningRate']
        return self.rows


def parse_lines(lines, year=None):
    """Parse log lines; see the module docstring.

    Parameters
    ----------
    lines : iterable of str
    year : int, optional
        The year of the first glog line (glog writes none in its lines), unless the
        lines start with glog's file header, which says it; default this year.

    Returns
    -------
    (list of dict, list of dict) : the train rows and the test rows.
    """
    year = datetime.date.today().year if year is None else year
    entries = []   # (datetime, message)
    last_month = None
    for line in lines:
        line = line.rstrip('\r\n')
        m = GLOG_HEADER.match(line)
        if m and last_month is None:
            year = int(m.group(1))
            continue
        m = GLOG_LINE.match(line)
        if m:
            month = int(m.group(1))
            if last_month is not None and month < last_month:
                year += 1  # the log ran over New Year
            last_month = month
            entries.append((_glog_time(m, year), m.group(7)))
            continue
        m = SCORE_LINE.match(line)
        if m:
            stamp = datetime.datetime.fromisoformat(m.group(1))
            entries.append((stamp, m.group(2)))
    start = next((t for t, msg in entries if 'Solving' in msg), None)
    if start is None and entries:
        start = entries[0][0]
    train, test = _Table(), _Table()
    iteration, rate = None, math.nan
    for stamp, message in entries:
        score = SCORE_METRIC.match(message)
        m = ITERATION.search(message)
        if m:
            iteration = int(m.group(1))
        if iteration is None:
            continue  # Caffe's parser starts at the first iteration
        seconds = (stamp - start).total_seconds()
        m = LEARNING_RATE.search(message)
        if m:
            rate = float(m.group(1))
        if score:
            if _number(score.group(3)) is not None:
                test.add(iteration, seconds, rate, score.group(2), _number(score.group(3)))
            continue
        for regex, table in ((TRAIN_OUTPUT, train), (TEST_OUTPUT, test)):
            m = regex.search(message)
            if m and _number(m.group(3)) is not None:
                table.add(iteration, seconds, rate, m.group(2), _number(m.group(3)))
    return train.finish(), test.finish()


def parse_log(path):
    """Parse the log file ``path``: (train rows, test rows), as :func:`parse_lines`."""
    year = datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.readlines()
    # glog's dates have no year: count back from the file's last write, in case the
    # log ran over New Year.
    months = [int(m.group(1)) for m in map(GLOG_LINE.match, lines) if m]
    wraps = sum(1 for a, b in zip(months, months[1:]) if b < a)
    return parse_lines(lines, year - wraps)


def columns(rows):
    """NumIters, Seconds, LearningRate, then every output name in order of appearance."""
    names = list(FIXED)
    for row in rows:
        for name in row:
            if name not in names:
                names.append(name)
    return names


def _text(value):
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if value == value else 'nan'


def write_csv(rows, path, delimiter=','):
    """Write ``rows`` as CSV: a header line (see :func:`columns`), then one line a row."""
    names = columns(rows)
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator='\n')
        writer.writerow(names)
        for row in rows:
            writer.writerow([_text(row[n]) if n in row else '' for n in names])


def save_csv_files(log_path, output_dir, train_rows, test_rows, delimiter=',', verbose=False):
    """``<output_dir>/<log name>.train`` and ``.test``, as Caffe's script names them."""
    base = os.path.join(output_dir, os.path.basename(log_path))
    paths = []
    for suffix, rows in (('.train', train_rows), ('.test', test_rows)):
        write_csv(rows, base + suffix, delimiter)
        if verbose:
            print('Wrote %s' % (base + suffix))
        paths.append(base + suffix)
    return paths


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Parse a Caffe training log into CSV: '
                                '<logfile>.train and <logfile>.test in output_dir.')
    p.add_argument('logfile_path', help='path to the log file')
    p.add_argument('output_dir', help='directory in which to place the output CSV files')
    p.add_argument('--verbose', action='store_true', help='print some extra info')
    p.add_argument('--delimiter', default=',',
                   help='column delimiter in the output files (default: %(default)r)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not os.path.isfile(args.logfile_path):
            raise FileNotFoundError('log %s not found' % args.logfile_path)
        if not os.path.isdir(args.output_dir):
            raise FileNotFoundError('output directory %s not found' % args.output_dir)
        train, test = parse_log(args.logfile_path)
        save_csv_files(args.logfile_path, args.output_dir, train, test, args.delimiter,
                       args.verbose)
    except (OSError, ValueError) as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
