"""Valid choices for model hyperparameters.

Pure Python so configs, the CLI and the search space can validate names without TensorFlow.
"""

ACTIVATIONS = ("relu", "prelu", "leaky_relu")
POOLINGS = ("max", "avg")
PADDINGS = ("same", "valid")
OPTIMIZERS = ("adam", "rmsprop", "sgd", "adamw", "nadam")
TRANSFER_BASES = ("vgg16", "vgg19")
