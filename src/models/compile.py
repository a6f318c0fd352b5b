"""Optimizers and compilation, fixing the loss and the metric names every trial logs.

History keys are always `loss, acc, val_loss, val_acc`, whatever the number of classes.
"""

import keras
from sweeps.models.errors import check_choice
from sweeps.models.names import OPTIMIZERS

_OPTIMIZER_CLASSES = {
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
}


def make_optimizer(name: str, learning_rate: float | None) -> keras.optimizers.Optimizer:
    """Return a fresh optimizer.

    Args:
        name: One of OPTIMIZERS.
        learning_rate: None keeps the Keras default of that optimizer.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    kwargs: dict[str, float] = {} if learning_rate is None else {"learning_rate": learning_rate}
    if name == "sgd":
        # Plain SGD crawls at the epoch budgets of the studies; momentum makes it a fair rival.
        kwargs["momentum"] = 0.9
    return _OPTIMIZER_CLASSES[name](**kwargs)


def compile_model(
    model: keras.Model,
    *,
    optimizer: str,
    learning_rate: float | None,
    num_classes: int,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Compile `model` in place for integer labels and return it.

    Two classes: binary cross-entropy on 0/1 labels of shape (N,) against the sigmoid output.
    More: sparse categorical cross-entropy against the softmax output.
    """
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy()
        metric = keras.metrics.BinaryAccuracy(name="acc")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metric = keras.metrics.SparseCategoricalAccuracy(name="acc")
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss=loss,
        metrics=[metric],
        jit_compile=jit_compile,
    )
    return model
