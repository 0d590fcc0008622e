"""Learning curves of training logs, as a PNG: loss, learning rate and test outputs
against iterations (Caffe's tools/extra/plot_training_log.py, in one chart).

    plot_training_log lenet.png examples/mnist/lenet.log
    plot_training_log curves.png run1.log run2.log      # several runs, one line each

The logs are read by ``parse_log`` (Caffe's glog logs, torchcaffe's, training.py's
seg-test lines). Three panels share the iteration axis: the train outputs (the
losses), the learning rate, and the test outputs (accuracy, loss, mean IU ...).
Uses matplotlib's Agg backend: no display needed.
"""
import argparse
import contextlib
import logging
import os
import sys

from ..glog import GlogFormatter, LOGGER_NAME
from .parse_log import parse_log

__all__ = ['plot_tables', 'plot_logs', 'curve_log', 'main']

log = logging.getLogger(LOGGER_NAME)


def _series(rows, name):
    points = [(r['NumIters'], r[name]) for r in rows if name in r]
    return [p[0] for p in points], [p[1] for p in points]


def _outputs(rows):
    names = []
    for r in rows:
        for n in r:
            if n not in ('NumIters', 'Seconds', 'LearningRate') and n not in names:
                names.append(n)
    return names


def plot_tables(runs, png, title=None):
    """Draw the curves of ``runs`` into ``png``.

    Parameters
    ----------
    runs : list of (label, train rows, test rows)
        Tables as ``parse_log.parse_log`` returns them.
    png : str
        The image to write.
    title : str, optional

    Returns
    -------
    int : the number of curves drawn.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_lr, ax_test) = plt.subplots(3, 1, sharex=True, figsize=(8, 9))
    drawn = 0
    for label, train, test in runs:
        prefix = '%s: ' % label if len(runs) > 1 else ''
        for name in _outputs(train):
            x, y = _series(train, name)
            ax_train.plot(x, y, marker='.', label=prefix + name)
            drawn += 1
        rated = train or test
        x, y = _series(rated, 'LearningRate')
        if x:
            ax_lr.plot(x, y, label=prefix + 'lr')
            drawn += 1
        for name in _outputs(test):
            x, y = _series(test, name)
            ax_test.plot(x, y, marker='o', label=prefix + name)
            drawn += 1
    for ax, ylabel in ((ax_train, 'train outputs'), (ax_lr, 'learning rate'),
                       (ax_test, 'test outputs')):
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
    ax_test.set_xlabel('iterations')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(png)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return drawn


def plot_logs(logs, png, title=None):
    """Parse each log file and plot them all into ``png``; returns the curve count.

    Raises
    ------
    ValueError
        No log holds a train or test output.
    """
    runs = []
    for path in logs:
        train, test = parse_log(path)
        runs.append((os.path.basename(path), train, test))
    if not any(train or test for _, train, test in runs):
        raise ValueError('%s: no train or test outputs to plot (no "Train net output" / '
                         '"Test net output" lines)' % ', '.join(logs))
    return plot_tables(runs, png, title)


class _Tee:
    """A text stream writing to several (stdout and the curve's log)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def curve_log(prefix, append=False, also_stdout=False):
    """While the block runs, torchcaffe's log (glog lines) also goes to
    ``<prefix>.log`` (with ``also_stdout``, what is printed too: training.py's seg-test
    lines); afterwards, also after a stop or an error, the learning curve of that log
    is plotted to ``<prefix>_curve.png``. ``append`` (a resumed run) adds to the log so
    that the curve covers the whole run. Used by ``caffe train --plot`` and
    ``solve.py --plot``."""
    path, png = prefix + '.log', prefix + '_curve.png'
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    stream = open(path, 'a' if append else 'w', encoding='utf-8')
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    log.info('Logging to %s for the learning curve', path)
    try:
        with (contextlib.redirect_stdout(_Tee(sys.stdout, stream)) if also_stdout
              else contextlib.nullcontext()):
            yield path
    finally:
        log.removeHandler(handler)
        stream.close()
        try:
            plot_logs([path], png)
            log.info('Learning curve: %s (log %s)', png, path)
        except ValueError as err:  # nothing logged to plot (display: 0, no tests)
            log.warning('No learning curve: %s', err)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('png', help='the image to write (.png)')
    p.add_argument('logs', nargs='+', help='training logs')
    p.add_argument('--title', default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not args.png.lower().endswith('.png'):
            raise ValueError('%s: the output must be a .png file' % args.png)
        for path in args.logs:
            if not os.path.isfile(path):
                raise FileNotFoundError('log %s not found' % path)
        n = plot_logs(args.logs, args.png, args.title)
    except (OSError, ValueError) as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('wrote %s (%d curves)' % (args.png, n))
    return 0


if __name__ == '__main__':
    sys.exit(main())
