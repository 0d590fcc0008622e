"""The main job on the embedded demo data: regenerate and validate every net.

    bash run_demo.sh                 # sets up .venv, then runs this
    python demo.py --out out/demo    # where generated files go (default out/demo)

For every model folder it (1) runs ``net.py`` into the output folder and checks the result
equals the committed prototxts, (2) reads each prototxt and solver back through the format
layer, (3) propagates the shape of the real PASCAL VOC demo image through every layer to
show every Crop fits and the score map comes out at the input's size, and (4) writes the
weights of a narrow FCN-8s as ``.caffemodel`` and ``.caffemodel.h5`` and reads them back
bit-identically. Training, scoring and inference join once the engine and solver exist.
"""
import argparse
import filecmp
import importlib.util
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

import torchcaffe as caffe
from torchcaffe import graph, io
from torchcaffe.layer_types import create_layer

ROOT = os.path.dirname(os.path.abspath(__file__))
MODEL_DIRS = ['voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s', 'voc-fcn8s-atonce', 'ilsvrc-nets']
PHASES = {'train': caffe.TRAIN, 'val': caffe.TEST, 'deploy': caffe.TEST}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=os.path.join(ROOT, 'out', 'demo'),
                        help='folder for generated prototxts and weights')
    parser.add_argument('--image', default=os.path.join(ROOT, 'data', 'demo', 'image.jpg'))
    parser.add_argument('--label', default=os.path.join(ROOT, 'data', 'demo', 'label.png'))
    return parser.parse_args(argv)


def load_net_script(folder):
    """Import ``<folder>/net.py`` as a module (each folder's script has the same name)."""
    path = os.path.join(ROOT, folder, 'net.py')
    spec = importlib.util.spec_from_file_location('net_' + folder.replace('-', '_'), path)
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
    shapes = graph.infer_shapes(layers, {'data': data_shape, 'label': (1, 1, h, w)}, phase)
    crops = ['%s %s' % (lp.name, list(lp.crop_param.offset)) for lp in layers if lp.type == 'Crop']
    out = 'score' if 'score' in shapes else list(shapes)[-1]
    if out == 'score' and shapes['score'][2:] != (h, w):
        raise SystemExit('%s: score %s does not match the input %s' % (path, shapes['score'], (h, w)))
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


def main(argv=None):
    start = time.time()
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    image_hw, present = describe_demo_image(args.image, args.label)
    print('demo image %s: %d x %d, label classes: %s'
          % (os.path.relpath(args.image, ROOT), image_hw[0], image_hw[1], ', '.join(present)))
    failures = 0
    print('\n%-18s %-6s %-9s %6s %-22s %12s  %s' % ('model', 'net', 'committed', 'layers',
                                                 'output', 'params', 'crop offsets'))
    for folder in MODEL_DIRS:
        for name, same in regenerate(folder, os.path.join(args.out, folder)):
            net_name = name[:-len('.prototxt')]
            info = validate(os.path.join(ROOT, folder, name),
                            PHASES.get(net_name, caffe.TEST), image_hw)
            failures += not same
            print('%-18s %-6s %-9s %6d %-22s %12s  %s'
                  % (folder, net_name[:6], 'same' if same else 'DIFFERS', info['layers'],
                     info['out'], '{:,}'.format(info['params']), info['crops']))
        solver_path = os.path.join(ROOT, folder, 'solver.prototxt')
        if os.path.exists(solver_path):
            s = io.read_solver_prototxt(solver_path)
            print('%-18s solver base_lr %g momentum %g weight_decay %g max_iter %d snapshot %d'
                  % (folder, s.base_lr, s.momentum, s.weight_decay, s.max_iter, s.snapshot))
    print('\nweights round trip (narrow FCN-8s deploy, demo image size):')
    for name, size, same in roundtrip_weights(args.out, image_hw):
        failures += not same
        print('  %-28s %9s bytes  %s' % (name, '{:,}'.format(size),
                                         'read back bit-identical' if same else 'MISMATCH'))
    print('\n%s in %.1f s; generated files in %s'
          % ('all nets valid' if not failures else '%d problem(s)' % failures,
             time.time() - start, os.path.relpath(args.out, ROOT)))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
