"""Caffe's log lines through Python ``logging``, in glog's format.

Caffe logs with glog: ``I1121 20:34:51.123456 12345 solver.cpp:243] Iteration 20, ...``
(severity letter, month and day, time to the microsecond, thread id, source file
and line). torchcaffe logs to the ``torchcaffe`` logger; :class:`GlogFormatter`
writes records in that format, with the Python file and line.

So that a training script shows its progress without any logging setup,
:func:`install_default_handler` gives the ``torchcaffe`` logger level INFO and a
stderr handler in glog format that stays silent as soon as the application
configures the root logger (``logging.basicConfig``, pytest's log capture): then
the records reach the application's handlers instead, by propagation.
"""
import logging
import sys
import time

__all__ = ['LOGGER_NAME', 'glog_prefix', 'GlogFormatter', 'install_default_handler']

LOGGER_NAME = 'torchcaffe'

# glog knows INFO, WARNING, ERROR and FATAL; its verbose logs print as INFO.
_SEVERITY_LETTERS = {logging.DEBUG: 'I', logging.INFO: 'I', logging.WARNING: 'W',
                     logging.ERROR: 'E', logging.CRITICAL: 'F'}


def glog_prefix(record):
    """The glog prefix of a log record: ``'I1121 20:34:51.123456 12345 solver.py:243] '``.

    The thread id is the process id (the main thread's id on Linux, which is
    what Caffe's single-threaded training prints).

    >>> r = logging.LogRecord('torchcaffe', logging.WARNING, '/x/solver.py', 7, 'm', (), None)
    >>> r.created, r.process = time.mktime((2015, 11, 21, 20, 34, 51, 0, 0, -1)) + 0.25, 42
    >>> glog_prefix(r)
    'W1121 20:34:51.250000    42 solver.py:7] '
    """
    level = record.levelno
    letter = _SEVERITY_LETTERS.get(level)
    if letter is None:
        letter = 'F' if level > logging.ERROR else 'E' if level > logging.WARNING \
            else 'W' if level > logging.INFO else 'I'
    seconds = int(record.created)
    micros = int(round((record.created - seconds) * 1e6))
    if micros >= 1000000:
        seconds, micros = seconds + 1, micros - 1000000
    t = time.localtime(seconds)
    return '%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] ' % (
        letter, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micros,
        record.process or 0, record.filename, record.lineno)


class GlogFormatter(logging.Formatter):
    """A formatter that writes records as glog lines (see :func:`glog_prefix`)."""

    def format(self, record):
        text = glog_prefix(record) + record.getMessage()
        if record.exc_info:
            text += '\n' + self.formatException(record.exc_info)
        return text


class _DefaultHandler(logging.StreamHandler):
    """stderr in glog format, only while the application has not configured logging."""

    def __init__(self):
        super().__init__()
        self.setFormatter(GlogFormatter())

    @property
    def stream(self):
        return sys.stderr  # looked up at each record, so redirections are followed

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record):
        if logging.getLogger().handlers:
            return  # the application's own handlers get the record by propagation
        super().emit(record)


def install_default_handler():
    """Make INFO records of the ``torchcaffe`` logger visible by default (idempotent).

    Sets the logger's level to INFO unless it was set, and adds the default stderr
    handler unless present. Records still propagate, so ``caplog`` and the root
    logger's handlers see them.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, _DefaultHandler) for h in logger.handlers):
        logger.addHandler(_DefaultHandler())
    return logger
