"""The registered layer types with no ONNX export, and why (the reason is part of
the error that names the layer)."""
from .core import refuses

DEPLOY_HINT = ('export the deploy net (deploy.prototxt), whose data comes from an Input '
               'layer and which ends before the loss and accuracy layers')

refuses('a data layer reads its batches from a database, files or memory, while an ONNX '
        'model takes its data as graph inputs; ' + DEPLOY_HINT,
        'Data', 'ImageData', 'HDF5Data', 'WindowData', 'MemoryData', 'DummyData')
refuses('it writes its bottoms to an HDF5 file, which an ONNX graph cannot do; '
        + DEPLOY_HINT, 'HDF5Output')
refuses('a loss layer compares with labels and only training uses it; ' + DEPLOY_HINT,
        'SoftmaxWithLoss', 'EuclideanLoss', 'SigmoidCrossEntropyLoss',
        'MultinomialLogisticLoss', 'InfogainLoss', 'HingeLoss', 'ContrastiveLoss')
refuses('Accuracy compares with labels and only testing a net uses it; ' + DEPLOY_HINT,
        'Accuracy')
refuses('a Python layer runs Python code, which an ONNX graph cannot hold; export the '
        'blobs before it (outputs=, export.py --outputs) and run the layer after '
        'onnxruntime', 'Python')
