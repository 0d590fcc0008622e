"""gflags-style command lines, as Caffe's tools read them.

gflags accepts a flag with one dash or two, its value after ``=`` or as the next
argument (``--solver=s.prototxt``, ``--solver s.prototxt``, ``-solver s.prototxt``);
a boolean flag also as ``--plot`` / ``--noplot``. Flags and positional arguments may
come in any order; ``--`` ends the flags.

>>> spec = {'solver': (str, ''), 'iterations': (int, 50), 'plot': (bool, False)}
>>> parse(['train', '-solver', 's.prototxt', '--iterations=3', '--plot'], spec)
(['train'], {'solver': 's.prototxt', 'iterations': 3, 'plot': True})
"""
import sys

from ..errors import CaffeError

__all__ = ['FlagError', 'parse', 'usage', 'parse_tool']

_TRUE = ('true', 't', 'yes', 'y', '1')
_FALSE = ('false', 'f', 'no', 'n', '0')


class FlagError(CaffeError, ValueError):
    """A command line that does not parse: an unknown flag, a missing or bad value."""


def _convert(name, kind, text):
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise FlagError("flag --%s: %r is not a boolean (true or false)" % (name, text))
    try:
        return kind(text)
    except ValueError:
        raise FlagError("flag --%s: %r is not %s" % (
            name, text, 'an integer' if kind is int else 'a %s' % kind.__name__)) from None


def parse(argv, spec):
    """Split ``argv`` into positional arguments and flag values.

    Parameters
    ----------
    argv : list of str
    spec : dict
        Flag name -> (type, default); type is str, int, float or bool.

    Returns
    -------
    (list of str, dict) : the positional arguments, and every flag's value (its
        default when not given).

    Raises
    ------
    FlagError
        An unknown flag (gflags: "unknown command line flag"), a flag without its
        value, or a value of the wrong type.
    """
    values = {name: default for name, (_, default) in spec.items()}
    positional = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == '--':
            positional.extend(args[i:])
            break
        if not arg.startswith('-') or arg == '-':
            positional.append(arg)
            continue
        name, eq, text = arg.lstrip('-').partition('=')
        if name not in spec and name.startswith('no') and not eq \
                and spec.get(name[2:], (None,))[0] is bool:
            values[name[2:]] = False
            continue
        if name not in spec:
            raise FlagError("unknown command line flag '%s'" % name)
        kind = spec[name][0]
        if not eq:
            if kind is bool:
                values[name] = True
                continue
            if i >= len(args):
                raise FlagError("flag '%s' is missing its argument" % name)
            text = args[i]
            i += 1
        values[name] = _convert(name, kind, text)
    return positional, values


def usage(spec, helps):
    """Lines listing the flags with their defaults and help texts."""
    lines = []
    for name, (kind, default) in spec.items():
        lines.append('    -%s (%s) type: %s default: %s'
                     % (name, helps.get(name, ''), kind.__name__,
                        '"%s"' % default if kind is str else default))
    return lines


def parse_tool(name, argv, spec, helps, usage_text, enough):
    """A Caffe tool's command line: ``(positional, values)``, or the exit status after
    printing the usage (0 for ``-help``; 1 for a bad flag, as gflags exits, or when
    ``enough(len(positional))`` is false)."""
    if any(a in ('-h', '-help', '--help') for a in argv):
        print(usage_text + '\n'.join(usage(spec, helps)))
        return 0
    try:
        positional, values = parse(argv, spec)
    except FlagError as err:
        print('%s: %s' % (name, err), file=sys.stderr)
        return 1
    if not enough(len(positional)):
        print(usage_text + '\n'.join(usage(spec, helps)), file=sys.stderr)
        return 1
    return positional, values
