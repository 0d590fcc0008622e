"""Generated scenes laid out as the VOC model folders read them."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'data'))

import make_demo_data  # noqa: E402


def make_voc_tree(root, **kwargs):
    """Generate demo scenes under ``root/gen`` and link them where a model folder in
    ``root`` looks: ``root/data/sbdd/dataset`` (SBD layout, training) and
    ``root/data/pascal/VOC2011`` (VOC layout, validation). ``kwargs`` go to
    ``make_demo_data.make_demo_data`` (num_train, num_val, seed, sizes)."""
    gen = root / 'gen'
    make_demo_data.make_demo_data(out=str(gen), **kwargs)
    (root / 'data' / 'pascal').mkdir(parents=True)
    (root / 'data' / 'sbdd').mkdir()
    os.symlink(gen / 'sbdd', root / 'data' / 'sbdd' / 'dataset')
    os.symlink(gen / 'VOC', root / 'data' / 'pascal' / 'VOC2011')
    return gen
