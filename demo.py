"""The main job on the embedded demo data: the staged FCN pipeline, trained from scratch.

    bash run_demo.sh                       # sets up .venv, runs this: about 4 min on 2 cores
    python demo.py                         # the same, where the dependencies are installed
    python demo.py --gpu 0                 # train and infer on a GPU
    python demo.py --precision bf16        # bfloat16 autocast (tf32: TF32 on CUDA)
    python demo.py --quick --out /tmp/q    # a few iterations per stage: the pipeline runs
    python demo.py --validate-only         # only regenerate and check every net

1. Nets: every model folder's ``net.py`` runs again into ``--out``/nets and must
   write the committed prototxts; each net is read back and the real PASCAL VOC
   demo image's shape propagated through it (every Crop fits, the score map comes
   out at the input's size); a narrow FCN-8s's weights round-trip through
   ``.caffemodel`` and ``.caffemodel.h5``.
2. Data: ``data/make_demo_data.py`` writes the generated scenes to
   ``data/demo-gen`` (SBD layout for training, VOC layout for validation), unless
   they are there from the same generator and settings.
3. Training, as the reference's staged schedule: ``demo/fcn32s`` from scratch,
   scored on the val split; ``demo/fcn16s`` from FCN-32s's weights (copied by
   layer name, upsampling set bilinear), scored; ``demo/fcn8s`` from FCN-16s's,
   scored. Each folder's ``solver.prototxt`` holds its hyperparameters; the
   snapshots go to ``--out``/<stage>/ instead of the folder's snapshot/.
4. Inference: FCN-8s's deploy net segments a few val images into ``--out``/infer
   (``<id>.png`` labels in VOC's colours, ``<id>_overlay.jpg``).
5. A table of overall accuracy, mean accuracy, mean IU and frequency-weighted IU
   per stage, and the total time. The exit status is 1 when a net fails to
   validate or FCN-8s does not beat FCN-32s on mean IU (not checked with --quick).

Results are deterministic for a given ``--threads`` (data order, fillers and
dropout are seeded; float sums depend on how the work is split over threads).
"""
import argparse
import filecmp
import hashlib
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

import infer
import score
import torchcaffe as caffe
import training
from torchcaffe import graph, io
from torchcaffe.layer_types import create_layer

ROOT = os.path.dirname(os.path.abspath(__file__))
MODEL_DIRS = ['voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s', 'voc-fcn8s-atonce', 'voc-fcn-alexnet',
              'siftflow-fcn32s', 'siftflow-fcn16s', 'siftflow-fcn8s',
              'nyud-fcn32s-color', 'nyud-fcn32s-hha', 'nyud-fcn32s-color-d',
              'nyud-fcn32s-color-hha',
              'pascalcontext-fcn32s', 'pascalcontext-fcn16s', 'pascalcontext-fcn8s',
              'ilsvrc-nets', 'demo/fcn32s', 'demo/fcn16s', 'demo/fcn8s']
PHASES = {'train': caffe.TRAIN, 'trainval': caffe.TRAIN, 'val': caffe.TEST, 'test': caffe.TEST,
          'deploy': caffe.TEST}
# Channels of the data layers' tops across the families (labels are one channel);
# NYUD's depth is one channel, concatenated with color into 4-channel 'data'.
TOP_CHANNELS = {'data': 3, 'color': 3, 'hha': 3, 'depth': 1}
SCORES = ('score', 'score_sem', 'score_geo')  # SIFT Flow has two heads

# The staged pipeline: (stage, model folder, the stage whose weights it starts from).
STAGES = [('FCN-32s', 'demo/fcn32s', None),
          ('FCN-16s', 'demo/fcn16s', 'FCN-32s'),
          ('FCN-8s', 'demo/fcn8s', 'FCN-16s')]
DATA_DIR = os.path.join(ROOT, 'data', 'demo-gen')
GENERATOR = os.path.join(ROOT, 'data', 'make_demo_data.py')
STAMP = 'generated-by.json'
INFER_IMAGES = 4
# --quick: iterations per stage, val images scored, images segmented.
QUICK = dict(iters=3, val=3, infer=2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=os.path.join(ROOT, 'out', 'demo'),
                        help='folder for snapshots, predictions and regenerated nets '
                             '(default out/demo)')
    parser.add_argument('--quick', action='store_true',
                        help='a few iterations per stage and a few images: checks that the '
                             'pipeline runs, not what it learns')
    parser.add_argument('--gpu', type=int, default=None, metavar='ID',
                        help='train and infer on this GPU (default: CPU)')
    parser.add_argument('--precision', choices=list(caffe.PRECISIONS), default='fp32',
                        help="arithmetic: fp32 (Caffe's, default), tf32 (TF32 tensor cores "
                             "on CUDA) or bf16 (bfloat16 autocast, float32 weights and "
                             "updates)")
    parser.add_argument('--threads', type=int, default=2,
                        help='CPU threads for torch (default 2; results are reproducible '
                             'for a given count)')
    parser.add_argument('--backend', choices=infer.BACKENDS, default='torch',
                        help='run the inference step in the engine (default) or in '
                             'onnxruntime')
    parser.add_argument('--validate-only', action='store_true',
                        help='only regenerate and validate the nets (step 1)')
    parser.add_argument('--image', default=os.path.join(ROOT, 'data', 'demo', 'image.jpg'))
    parser.add_argument('--label', default=os.path.join(ROOT, 'data', 'demo', 'label.png'))
    return parser.parse_args(argv)


# ------------------------------------------------------------------------ 1. the nets

def load_net_script(folder):
    """Import ``<folder>/net.py`` as a module (each folder's script has the same name)."""
    path = os.path.join(ROOT, folder, 'net.py')
    name = 'net_' + folder.replace('-', '_').replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def regenerate(folder, out_dir):
    """Run the folder's net.py into ``out_dir``; return [(name, equal to committed)]."""
    written = load_net_script(folder).main(out_dir)
    return [(os.path.basename(p),
             filecmp.cmp(p, os.path.join(ROOT, folder, os.path.basename(p)), shallow=False))
            for p in written]


def with_input_size(net, shape):
    """A copy of ``net`` whose Input layers take ``shape``, as inference reshapes a net."""
    net = caffe.caffe_pb2.NetParameter.FromString(net.SerializeToString())
    for layer in net.layer:
        if layer.type == 'Input':
            del layer.input_param.shape[:]
            layer.input_param.shape.add().dim.extend(shape)
    return net


def param_count(layers, shapes, phase):
    """Learnable values in ``layers`` given the inferred blob ``shapes``."""
    total = 0
    for lp in layers:
        if lp.type in ('Python', 'Input'):
            continue
        bottoms = [shapes[b] for b in lp.bottom]
        total += sum(int(np.prod(s)) for s in create_layer(lp, phase).param_shapes(bottoms))
    return total


def validate(path, phase, image_hw):
    """Parse a net prototxt and propagate the demo image's shape through it."""
    net = io.read_net_prototxt(path)
    h, w = image_hw
    data_shape = (1, 3, h, w) if 'ilsvrc' not in path else (1, 3, 224, 224)
    net = with_input_size(net, data_shape)
    layers = graph.filter_layers(net, graph.make_state(phase))
    inputs = {top: (1, TOP_CHANNELS.get(top, 1), h, w)
              for lp in layers if lp.type == 'Python' for top in lp.top}
    inputs['data'] = data_shape if 'data' in inputs or 'ilsvrc' in path else inputs.get('data')
    shapes = graph.infer_shapes(layers, {k: v for k, v in inputs.items() if v}, phase)
    crops = ['%s %s' % (lp.name, list(lp.crop_param.offset)) for lp in layers if lp.type == 'Crop']
    outs = [b for b in SCORES if b in shapes] or [list(shapes)[-1]]
    for out in outs:
        if out in SCORES and shapes[out][2:] != (h, w):
            raise SystemExit('%s: %s %s does not match the input %s'
                             % (path, out, shapes[out], (h, w)))
    out = outs[0]
    return dict(layers=len(layers), out='%s %s' % (out, 'x'.join(map(str, shapes[out]))),
                params=param_count(layers, shapes, phase), crops=', '.join(crops) or '-')


def roundtrip_weights(out_dir, image_hw):
    """Fill a narrow FCN-8s deploy net's params, write both weight formats, read back."""
    from nets import voc
    net = with_input_size(voc.stage_nets('fcn8s', width=1 / 16)['deploy'], (1, 3) + image_hw)
    layers = graph.filter_layers(net, graph.make_state(caffe.TEST))
    shapes = graph.infer_shapes(layers, phase=caffe.TEST)
    weights = caffe.caffe_pb2.NetParameter(name=net.name)
    gen = torch.Generator().manual_seed(1337)
    for lp in layers:
        layer = create_layer(lp, caffe.TEST)
        bottoms = [shapes[b] for b in lp.bottom]
        tensors = [torch.empty(s) for s in layer.param_shapes(bottoms)]
        if not tensors:
            continue
        for t in tensors:  # the nets leave most fillers at Caffe's constant 0
            t.normal_(0, 0.01, generator=gen)
        entry = weights.layer.add(name=lp.name, type=lp.type)
        entry.blobs.extend(io.array_to_blobproto(t.numpy()) for t in tensors)
    results = []
    os.makedirs(out_dir, exist_ok=True)
    for name in ('fcn8s-narrow.caffemodel', 'fcn8s-narrow.caffemodel.h5'):
        path = os.path.join(out_dir, name)
        (io.write_caffemodel_h5 if name.endswith('.h5') else io.write_caffemodel)(weights, path)
        back = {l.name: l.blobs for l in io.read_caffemodel(path).layer}
        # HDF5 lists groups by name, so compare layer by layer name, not by position.
        same = (sorted(back) == sorted(l.name for l in weights.layer) and
                all(len(back[l.name]) == len(l.blobs) and
                    all(np.array_equal(io.blobproto_to_array(a), io.blobproto_to_array(b))
                        for a, b in zip(l.blobs, back[l.name]))
                    for l in weights.layer))
        results.append((name, os.path.getsize(path), same))
    return results


def describe_demo_image(image, label):
    """Size of the demo image and the classes in its label."""
    img = Image.open(image)
    lab = np.array(Image.open(label))
    classes = open(os.path.join(ROOT, 'data', 'pascal', 'classes.txt')).read().split('\n')[:21]
    present = [classes[c] if c < 21 else 'void' for c in np.unique(lab)]
    return (img.height, img.width), present


def validate_nets(out_dir, image, label):
    """Step 1: regenerate, read back and shape-check every net; return the problem count."""
    image_hw, present = describe_demo_image(image, label)
    print('demo image %s: %d x %d, label classes: %s'
          % (os.path.relpath(image, ROOT), image_hw[0], image_hw[1], ', '.join(present)))
    failures = 0
    print('\n%-21s %-8s %-9s %6s %-22s %12s  %s' % ('model', 'net', 'committed', 'layers',
                                                 'output', 'params', 'crop offsets'))
    for folder in MODEL_DIRS:
        for name, same in regenerate(folder, os.path.join(out_dir, folder)):
            net_name = name[:-len('.prototxt')]
            info = validate(os.path.join(ROOT, folder, name),
                            PHASES.get(net_name, caffe.TEST), image_hw)
            failures += not same
            print('%-21s %-8s %-9s %6d %-22s %12s  %s'
                  % (folder, net_name[:8], 'same' if same else 'DIFFERS', info['layers'],
                     info['out'], '{:,}'.format(info['params']), info['crops']))
        solver_path = os.path.join(ROOT, folder, 'solver.prototxt')
        if os.path.exists(solver_path):
            s = io.read_solver_prototxt(solver_path)
            print('%-21s solver   base_lr %g momentum %g weight_decay %g max_iter %d snapshot %d'
                  % (folder, s.base_lr, s.momentum, s.weight_decay, s.max_iter, s.snapshot))
    print('\nweights round trip (narrow FCN-8s deploy, demo image size):')
    for name, size, same in roundtrip_weights(out_dir, image_hw):
        failures += not same
        print('  %-28s %9s bytes  %s' % (name, '{:,}'.format(size),
                                         'read back bit-identical' if same else 'MISMATCH'))
    print('%s; regenerated files in %s'
          % ('all nets valid' if not failures else '%d problem(s)' % failures, out_dir))
    return failures


# ------------------------------------------------------------------------ 2. the data

def load_generator():
    spec = importlib.util.spec_from_file_location('make_demo_data', GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generator_stamp():
    """What the dataset depends on: the generator's source and its default settings."""
    with open(GENERATOR, 'rb') as f:
        source = f.read()
    args = vars(load_generator().parse_args([]))
    args.pop('out')
    return dict(generator_sha1=hashlib.sha1(source).hexdigest(), settings=args)


def ensure_data(data_dir=DATA_DIR):
    """Generate the demo dataset into ``data_dir`` unless it is there and current.

    A stamp file written after the data records the generator's hash and settings;
    data without it, or from another generator version, is written again.
    """
    stamp = generator_stamp()
    stamp_path = os.path.join(data_dir, STAMP)
    try:
        with open(stamp_path) as f:
            current = json.load(f) == stamp
    except (OSError, ValueError):
        current = False
    if current:
        print('demo data: %s is current' % os.path.relpath(data_dir, ROOT))
        return
    start = time.time()
    os.makedirs(data_dir, exist_ok=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)  # stale until the new data is complete
    info = load_generator().make_demo_data(data_dir, **{
        {'train': 'num_train', 'val': 'num_val'}.get(k, k): v
        for k, v in stamp['settings'].items()})
    with io.atomic_path(stamp_path) as tmp, open(tmp, 'w') as f:
        json.dump(stamp, f, indent=1)
    print('demo data: wrote %d train + %d val scenes to %s in %.1f s'
          % (len(info['train']), len(info['val']), os.path.relpath(data_dir, ROOT),
             time.time() - start))


# ------------------------------------------------------------------------ 3. training

def stage_solver(folder, out_dir, max_iter=None):
    """The folder's solver, with snapshots in ``out_dir`` (and ``max_iter`` if given),
    written to ``out_dir``/solver.prototxt; returns that path."""
    param = io.read_solver_prototxt(os.path.join(ROOT, folder, 'solver.prototxt'))
    param.snapshot_prefix = os.path.join(os.path.abspath(out_dir), 'train')
    if max_iter is not None:
        param.max_iter = max_iter
        param.snapshot = 0
        param.display = 1
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'solver.prototxt')
    io.write_prototxt(param, path)
    return path


def train_stage(folder, weights, out_dir, quick=False):
    """Train one stage in its model folder; score it at the end.

    Returns
    -------
    metrics : dict (``score.seg_metrics``), iterations : int, weights : str (the
    final snapshot's .caffemodel).
    """
    solver_file = os.path.abspath(stage_solver(folder, out_dir,
                                               QUICK['iters'] if quick else None))
    with training.working_dir(os.path.join(ROOT, folder)):
        solver = training.prepare_solver(weights=weights, solver_file=solver_file)
        val = training.val_ids(solver)
        names = score.read_class_names(os.path.join(DATA_DIR, 'classes.txt'))
        max_iter = solver.param.max_iter
        results = training.train(solver, max_iter, max_iter,
                                 val[:QUICK['val']] if quick else val, names=names)
    final = '%s_iter_%d.caffemodel' % (solver.param.snapshot_prefix, solver.iter)
    return results[-1][1], solver.iter, final


def segment_val_images(deploy, weights, out_dir, count, gpu=None, backend='torch'):
    """Step 4: segment the first ``count`` val images; returns infer.run's result."""
    with open(os.path.join(DATA_DIR, 'VOC', 'ImageSets', 'Segmentation', 'val.txt')) as f:
        ids = f.read().split()[:count]
    images = [os.path.join(DATA_DIR, 'VOC', 'JPEGImages', i + '.jpg') for i in ids]
    net = infer.load_net(deploy, weights, gpu, backend)
    return infer.run(net, images, out_dir, overwrite=True)


# ------------------------------------------------------------------------ 5. the table

METRICS = [('overall acc', 'overall_acc'), ('mean acc', 'mean_acc'), ('mean IU', 'mean_iu'),
           ('fwavacc', 'fwavacc')]


def table(rows):
    """The per-stage table: stage, iterations, the four metrics, training time."""
    lines = ['%-8s %10s %s %9s' % ('stage', 'iterations',
                                   ' '.join('%11s' % title for title, _ in METRICS), 'time')]
    for stage, iters, metrics, seconds in rows:
        lines.append('%-8s %10d %s %8.0fs' % (stage, iters, ' '.join(
            '%11.4f' % metrics[key] for _, key in METRICS), seconds))
    return '\n'.join(lines)


def run_pipeline(args):
    """Steps 2 to 5; returns the exit status."""
    ensure_data()
    rows, weights = [], {}
    for stage, folder, start_from in STAGES:
        print('\n==== %s (%s)%s' % (stage, folder, ' from %s' % start_from if start_from
                                    else ' from scratch'), flush=True)
        begin = time.time()
        metrics, iters, weights[stage] = train_stage(
            folder, weights.get(start_from), os.path.join(args.out, folder.split('/')[-1]),
            args.quick)
        rows.append((stage, iters, metrics, time.time() - begin))
    print('\n==== inference')
    result = segment_val_images(os.path.join(ROOT, STAGES[-1][1], 'deploy.prototxt'),
                                weights[STAGES[-1][0]], os.path.join(args.out, 'infer'),
                                QUICK['infer'] if args.quick else INFER_IMAGES, args.gpu,
                                args.backend)
    print('segmented %d val images with %s (%s backend) into %s'
          % (len(result['done']), STAGES[-1][0], args.backend,
             os.path.join(args.out, 'infer')))
    print('\n' + table(rows))
    first, last = rows[0][2]['mean_iu'], rows[-1][2]['mean_iu']
    if args.quick:
        print('(--quick: too few iterations to compare the stages)')
        return 0
    if not last > first:
        print('FAILED: %s mean IU %.4f does not beat %s mean IU %.4f'
              % (rows[-1][0], last, rows[0][0], first))
        return 1
    print('%s beats %s on mean IU: %.4f > %.4f' % (rows[-1][0], rows[0][0], last, first))
    return 0


def main(argv=None):
    start = time.time()
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    threads, precision = torch.get_num_threads(), caffe.precision()
    torch.set_num_threads(args.threads)
    try:
        failures = validate_nets(os.path.join(args.out, 'nets'), args.image, args.label)
        if failures or args.validate_only:
            status = 1 if failures else 0
        else:
            if args.gpu is not None:
                training.set_device(args.gpu)
            caffe.set_precision(args.precision)
            status = run_pipeline(args)
    finally:
        torch.set_num_threads(threads)
        caffe.set_precision(precision)
    print('\ntotal time %.1f s (%s)' % (time.time() - start, 'ok' if status == 0 else 'FAILED'))
    return status


if __name__ == '__main__':
    sys.exit(main())
