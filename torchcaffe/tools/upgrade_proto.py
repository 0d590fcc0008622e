"""Caffe's upgrade tools: old-format nets and solvers rewritten in the current format.

    upgrade_net_proto_text old_net.prototxt new_net.prototxt
    upgrade_net_proto_binary old.caffemodel new.caffemodel
    upgrade_solver_proto_text old_solver.prototxt new_solver.prototxt

As tools/upgrade_net_proto_text.cpp, upgrade_net_proto_binary.cpp and
upgrade_solver_proto_text.cpp: read the file without upgrading, upgrade what
needs it (``torchcaffe.upgrade``: V0 and V1 layers, net-level inputs, data-layer
transformation fields, 3-param BatchNorm; a solver's ``solver_type`` enum), write
the result (even when nothing needed upgrading, which is logged as an error, as
Caffe does). Exit status: 0 on success, 1 for a wrong argument count or a
failed upgrade, 2 when the input does not parse, each with one ``error:`` line.
"""
import logging
import os
import sys

from .. import io
from ..errors import CaffeError
from ..glog import LOGGER_NAME, install_default_handler
from ..upgrade import needs_upgrade, upgrade_net_param_in_place, upgrade_solver_param

__all__ = ['upgrade_net_file', 'upgrade_solver_file', 'net_text_main', 'net_binary_main',
           'solver_text_main']

log = logging.getLogger(LOGGER_NAME + '.upgrade_proto')


def upgrade_net_file(src, dst, binary=False):
    """Upgrade the net in ``src`` (prototxt, or a binary caffemodel) into ``dst``.

    Returns
    -------
    bool : whether the net needed an upgrade.
    """
    net = io.read_caffemodel(src, upgrade=False) if binary \
        else io.read_net_prototxt(src, upgrade=False)
    needed = needs_upgrade(net)
    if needed:
        upgrade_net_param_in_place(net, src)
    else:
        log.error('File already in latest proto format: %s', src)
    if binary:
        io.write_caffemodel(net, dst)
    else:
        io.write_prototxt(net, dst)
    log.info('Wrote upgraded NetParameter %s proto to %s', 'binary' if binary else 'text', dst)
    return needed


def upgrade_solver_file(src, dst):
    """Upgrade the solver prototxt ``src`` (``solver_type`` -> ``type``) into ``dst``.

    Returns
    -------
    bool : whether it needed an upgrade.
    """
    solver = io.read_solver_prototxt(src, upgrade=False)
    needed = solver.HasField('solver_type')
    if needed:
        # Only the type: the snapshot_prefix rule applies when a solver is read to train.
        solver = upgrade_solver_param(solver, None)
    else:
        log.error('File already in latest proto format: %s', src)
    io.write_prototxt(solver, dst)
    log.info('Wrote upgraded SolverParameter text proto to %s', dst)
    return needed


def _run(argv, name, usage, upgrade):
    argv = sys.argv[1:] if argv is None else list(argv)
    install_default_handler()
    if len(argv) != 2:
        print('usage: %s %s' % (name, usage), file=sys.stderr)
        return 1
    src, dst = argv
    try:
        if not os.path.isfile(src):
            raise FileNotFoundError('%s not found' % src)
        upgrade(src, dst)
    except (CaffeError, OSError) as err:
        print('error: %s' % str(err).splitlines()[0], file=sys.stderr)
        return 2
    return 0


def net_text_main(argv=None):
    """``upgrade_net_proto_text v0_net_proto_file_in net_proto_file_out``."""
    return _run(argv, 'upgrade_net_proto_text', 'v0_net_proto_file_in net_proto_file_out',
                upgrade_net_file)


def net_binary_main(argv=None):
    """``upgrade_net_proto_binary v0_net_proto_file_in net_proto_file_out``."""
    return _run(argv, 'upgrade_net_proto_binary', 'v0_net_proto_file_in net_proto_file_out',
                lambda src, dst: upgrade_net_file(src, dst, binary=True))


def solver_text_main(argv=None):
    """``upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out``."""
    return _run(argv, 'upgrade_solver_proto_text',
                'old_solver_proto_file_in solver_proto_file_out', upgrade_solver_file)


if __name__ == '__main__':
    sys.exit(net_text_main())
