"""mlp_torch: the linear softmax classifier and multi-layer perceptrons, gradient by gradient.

The package is layered; a module imports its own layer or lower ones, never a higher one
(``tests/test_layers.py`` checks every import, and that argparse stays in the command line):

    base:      errors, utils, metrics                        (anyone may import these)
    ops:       functional, optim, finite_difference, gradcheck  (the lecture's formulas)
    models:    models/, compare                              (three gradient paths, compared)
    data:      data/                                         (datasets, cache, device batches)
    training:  training/, bench                              (train(config), callbacks, checkpoints)
    sweep:     sweep/                                        (hyperparameter search on Optuna)
    commands:  commands/, cli, __main__                      (the ``mlp-torch`` command)
"""

__version__ = "0.1.0"
