"""Write generated nets as prototxt files, the way every model folder's net.py does."""
import os

from torchcaffe.io import write_prototxt


def write_nets(protos, out_dir):
    """Write each NetParameter of ``protos`` to ``<out_dir>/<name>.prototxt``.

    Parameters
    ----------
    protos : dict
        name -> NetParameter, e.g. ``{'train': ..., 'val': ..., 'deploy': ...}``.
    out_dir : str or path
        Created if missing.

    Returns
    -------
    list of str : the paths written, in the order of ``protos``.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, proto in protos.items():
        path = os.path.join(str(out_dir), name + '.prototxt')
        write_prototxt(proto, path)
        paths.append(path)
    return paths
