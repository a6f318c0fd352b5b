"""Trains one trial with Keras: build, fit with per-epoch reports, best epoch, test, artifacts.

Keras (and TensorFlow, on the TensorFlow backend only: see :mod:`sweeps.backend`) is imported
only when a :class:`KerasTrainer` trains, so ``--help``, ``plan`` parsing and the tests of the
loop stay fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sweeps import backend, plots, precision, resume
from sweeps.data import AugmentSpec
from sweeps.errors import TrialFailed, mask_config
from sweeps.models import check_architecture, create_model
from sweeps.signals import deferred
from sweeps.trial import TrialOutcome, TrialSpec

log = logging.getLogger("sweeps.trainer")

_KERAS_TO_OURS = {
    "loss": "train_loss",
    "acc": "train_acc",
    "val_loss": "val_loss",
    "val_acc": "val_acc",
}


def configure_tensorflow(threads: int | None = None, *, gpu_memory_mb: int | None = None) -> None:
    """Process-wide TensorFlow settings; must run before the first model is built.

    GPU memory growth lets several worker processes share one card; a cap replaces it (a
    logical device of that size): ``gpu_memory_mb``, else this worker's share of a card it
    shares (``SWEEPS_GPU_SHARE`` of the card's memory), so that ``sweep.trials_per_gpu``
    workers cannot starve each other; ``threads`` pins TensorFlow's intra-op pool, so that
    two workers on one host do not fight for the cores.
    """
    import tensorflow as tf

    limit_mb = backend.tensorflow_limit_mb(gpu_memory_mb)
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            if limit_mb:  # TensorFlow refuses growth and a limit on one device
                limit = tf.config.LogicalDeviceConfiguration(memory_limit=limit_mb)
                tf.config.set_logical_device_configuration(gpu, [limit])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:
            log.warning("TensorFlow was already running; train.threads applies from the next run")


class KerasTrainer:
    """Trains trials on one loaded dataset.

    Args:
        data: A :class:`sweeps.data.ImageData`, loaded once per worker process.
    """

    def __init__(self, data: Any) -> None:
        self.data = data

    def run(self, spec: TrialSpec, report: Callable[..., None]) -> TrialOutcome:
        """Trains one trial; ``report`` may raise to prune or fail it.

        With ``train.resumable`` every epoch end writes the trial's state first
        (``spec.state_path``) and hands it to ``report(epoch, metrics, state=path)``; with
        ``spec.resume_from`` training goes on from that state's epoch: its weights and
        optimizer variables, its best epoch and history, and the data order of the next epoch.
        Dropout and augmentation draws after a resume come from a seed derived from the epoch.
        """
        import keras

        from sweeps.models.compile import compile_model  # imports Keras

        h, w, c = self.data.image_shape
        size = spec.input_size or (h, w)
        shape = (size[0], size[1], c)
        num_classes = self.data.num_classes
        check_architecture(
            spec.model_name, input_shape=shape, num_classes=num_classes, **spec.model_kwargs
        )
        keras.backend.clear_session()  # without it every trial's graphs stay in memory
        keras.utils.set_random_seed(spec.seed)
        # Layers keep the policy they were built under; per trial, since ablation rows may differ.
        with precision.policy(spec.train.precision):
            model = create_model(
                spec.model_name, input_shape=shape, num_classes=num_classes, **spec.model_kwargs
            )
            compile_model(
                model,
                optimizer=spec.train.optimizer,
                learning_rate=spec.train.learning_rate,
                num_classes=num_classes,
                jit_compile=spec.train.jit_compile,
            )
        keeper = _best_epoch(report, spec.metric, spec.train.patience, spec.state_path)
        start = 0
        if spec.resume_from is not None:
            start = _restore(model, keeper, spec)
            keras.utils.set_random_seed(spec.seed + 100_003 * start)  # fresh, reproducible draws
        train_ds, val_ds, test_ds = self._datasets(spec, size, c, start)
        try:
            if not keeper.finished(spec.train.epochs):
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=spec.train.epochs,
                    initial_epoch=start,
                    verbose=spec.train.verbose,
                    # A PyDataset is told fit's epoch number, so it shuffles as tf.data does.
                    callbacks=[keeper, *_epoch_feeds(train_ds)],
                    shuffle=False,
                )
        except Exception as exc:
            if _out_of_memory(exc):
                raise TrialFailed(f"out of memory at batch size {spec.train.batch_size}") from exc
            raise
        if keeper.best_weights is None:
            raise TrialFailed("no epoch finished")
        model.set_weights(keeper.best_weights)
        probs = model.predict(test_ds, verbose=0)
        test, per_class, confusion = evaluate(probs, self.data.test.y, self.data.class_names)
        artifacts = write_artifacts(
            spec, model, keeper.history, confusion, per_class, self.data.class_names
        )
        return TrialOutcome(
            history=keeper.history,
            best_epoch=keeper.best_epoch,
            best=keeper.history[keeper.best_epoch - 1],
            test=test,
            param_count=int(model.count_params()),
            artifacts=artifacts,
            stop_reason=keeper.stop_reason,
        )

    def _datasets(self, spec: TrialSpec, size: tuple[int, int], channels: int, start: int = 0):
        import keras

        # tf.data on TensorFlow; elsewhere a PyDataset (NumPy), so TensorFlow is never imported.
        # A PyDataset follows fit's epoch (from initial_epoch); tf.data is told where to start.
        first: dict[str, Any] = {}
        if keras.backend.backend() == "tensorflow":
            from sweeps.data import make_dataset

            first = {"start_epoch": start}
        else:
            from sweeps.data import make_pydataset as make_dataset
        common = {"batch_size": spec.train.batch_size, "image_size": size, "channels": channels}
        augment = AugmentSpec.from_dict(spec.train.augment)
        train = make_dataset(
            self.data.train, augment=augment, shuffle=True, seed=spec.seed, **common, **first
        )
        return (
            train,
            make_dataset(self.data.validation, **common),
            make_dataset(self.data.test, **common),
        )


def _epoch_feeds(train: Any) -> list[Any]:
    """The callback that keeps a PyDataset's epoch in step with fit's; none for tf.data."""
    return [train.epoch_callback()] if hasattr(train, "epoch_callback") else []


def _out_of_memory(exc: Exception) -> bool:
    """TensorFlow's ResourceExhaustedError, PyTorch's OutOfMemoryError, XLA's RESOURCE_EXHAUSTED."""
    name = type(exc).__name__
    return name in ("ResourceExhaustedError", "OutOfMemoryError") or (
        name == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(exc)
    )


def _restore(model: Any, keeper: Any, spec: TrialSpec) -> int:
    """Loads a saved state into the model and the keeper; returns the epochs it had done."""
    assert spec.resume_from is not None
    try:
        meta, weights, best = resume.unpack(spec.resume_from, spec.workdir / "resume-in")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its variables exist to be loaded
        model.load_weights(weights)
    except (resume.StateError, OSError, ValueError, KeyError) as exc:
        raise TrialFailed(f"could not resume from the saved state: {exc}") from exc
    keeper.restore(meta, best)
    return meta.epoch


def _best_epoch(
    report: Callable[..., None],
    metric: str,
    patience: int | None = None,
    state_path: Path | None = None,
) -> Any:
    """A Keras callback that reports each epoch and keeps the best epoch's weights in memory.

    The class is made on first use so that importing this module does not import Keras.
    Keeping weights in memory instead of writing a checkpoint at every improvement costs one
    copy per improving epoch and one file per trial. With ``patience``, training stops once
    ``metric`` has not improved for that many epochs (``stop_reason`` becomes ``patience``);
    the best epoch's weights are the ones tested either way. With ``state_path``, each epoch's
    resumable state is written there before the epoch is reported (a stop signal waits for
    the write).
    """
    import keras

    class BestEpoch(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.sign = 1.0 if metric.endswith("acc") else -1.0
            self.history: list[dict[str, float]] = []
            self.best_epoch = 0
            self.best_weights: list[np.ndarray] | None = None
            self.stop_reason = "epochs"
            self._best = -np.inf

        def restore(self, meta: resume.Meta, best: list[np.ndarray] | None) -> None:
            self.history = [dict(h) for h in meta.history]
            self.best_epoch, self._best, self.best_weights = meta.best_epoch, meta.best_score, best

        def finished(self, epochs: int) -> bool:
            """Whether a restored trial had already run its epochs or its patience out."""
            done = len(self.history)
            if patience is not None and done and done - self.best_epoch >= patience:
                self.stop_reason = "patience"
                return True
            return done >= epochs

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            metrics = {ours: float(logs[k]) for k, ours in _KERAS_TO_OURS.items() if k in logs}
            self.history.append(metrics)
            score = self.sign * metrics.get(metric, np.nan)
            if np.isfinite(score) and score > self._best:
                self._best, self.best_epoch = score, epoch + 1
                self.best_weights = self.model.get_weights()
            if state_path is None:
                report(epoch + 1, metrics)  # may raise to prune or fail the trial
            else:
                self._save(epoch + 1)
                report(epoch + 1, metrics, state=state_path)
            if patience is not None and epoch + 1 - self.best_epoch >= patience:
                self.stop_reason = "patience"
                self.model.stop_training = True

        def _save(self, epochs: int) -> None:
            assert state_path is not None
            meta = resume.Meta(epochs, self.history, self.best_epoch, float(self._best))
            weights = state_path.with_name("model.weights.h5")
            try:
                with deferred():
                    state_path.parent.mkdir(parents=True, exist_ok=True)
                    self.model.save_weights(weights)  # with the optimizer's variables
                    resume.write_state(state_path, meta, weights, self.best_weights)
            except OSError as exc:
                raise TrialFailed(
                    f"could not write the resumable state in {state_path.parent}: "
                    f"{exc.strerror or exc} (train.resumable=false skips it)"
                ) from exc

    return BestEpoch()


def evaluate(probs: np.ndarray, y: np.ndarray, class_names: list[str]):
    """Test loss and accuracy, the per-class report and the confusion matrix.

    Computed from one ``predict`` pass, with Keras's epsilon, so the checkpoint is run over the
    test split once.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    eps = 1e-7
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if probs.ndim == 2 and probs.shape[1] == 1:
        p = np.clip(probs[:, 0], eps, 1 - eps)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        pred = (p > 0.5).astype(int)
    else:
        p = np.clip(probs, eps, 1 - eps)
        loss = -np.mean(np.log(p[np.arange(len(y)), y]))
        pred = p.argmax(axis=1)
    labels = list(range(len(class_names)))
    report = classification_report(
        y, pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    test = {
        "test_loss": float(loss),
        "test_acc": float(np.mean(pred == y)),
        "test_macro_f1": float(report["macro avg"]["f1-score"]),
    }
    return test, report, confusion_matrix(y, pred, labels=labels)


def write_artifacts(
    spec: TrialSpec,
    model: Any,
    history: list[dict[str, float]],
    confusion: np.ndarray,
    per_class: dict,
    class_names: list[str],
):
    """Writes the trial's files into its scratch folder and lists them for upload.

    Raises:
        TrialFailed: when a file cannot be written (disk full, permissions).
    """
    import yaml

    out = spec.workdir
    try:
        out.mkdir(parents=True, exist_ok=True)
        files: list[tuple[Path, str | None]] = []
        if spec.log_checkpoint:
            ckpt = out / "best.keras"
            model.save(ckpt)
            files.append((ckpt, "checkpoint"))
        curves = plots.learning_curves(
            history, out / "learning_curves.png", title=f"{spec.study} trial {spec.number}"
        )
        cm = plots.confusion(confusion, class_names, out / "confusion_matrix.png")
        report = out / "classification_report.json"
        report.write_text(json.dumps(per_class, indent=2))
        config = out / "config.yaml"
        config.write_text(yaml.safe_dump(mask_config(spec.config), sort_keys=False))
        files += [(curves, "plots"), (cm, "plots"), (report, None), (config, None)]
    except OSError as exc:
        raise TrialFailed(
            f"could not write the trial's artifacts in {out}: {exc.strerror or exc}"
        ) from exc
    return files
