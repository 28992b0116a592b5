"""mlp_torch: the linear softmax classifier and multi-layer perceptrons, gradient by gradient.

Layers, lowest first (a lower layer never imports a higher one):

    functional  -> hand-written autograd Functions with the lecture's formulas (ops)
    models      -> LinearSoftmax, MLP, Perceptron with builtin / custom / manual gradients
    data        -> CIFAR cat/dog/bear, image folders, synthetic data, on-device batches
    training    -> train(config) -> metrics, evaluate(...), TensorBoard logging, checkpoints
    cli         -> the ``mlp-torch`` command
"""

__version__ = "0.1.0"
