"""Train any model folder, from the repository root.

    python solve.py voc-fcn32s --gpu 0
    python solve.py voc-fcn8s --gpu 0 --resume latest
    torchrun --nproc_per_node=4 solve.py voc-fcn8s --gpu 0   # 4 GPUs (GPU LOCAL_RANK each)

The same as running the folder's own ``solve.py`` (``cd voc-fcn32s && python solve.py``):
its arguments follow the folder name.
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith('-'):
        sys.exit('usage: python solve.py MODEL_FOLDER [--gpu ID] [--resume latest|FILE] ...')
    script = os.path.join(ROOT, argv[0], 'solve.py')
    if not os.path.isfile(script):
        sys.exit('solve.py: %s has no solve.py (model folders: %s)'
                 % (argv[0], ', '.join(sorted(d for d in os.listdir(ROOT)
                                              if os.path.isfile(os.path.join(ROOT, d, 'solve.py'))))))
    sys.argv = [script] + list(argv[1:])
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
