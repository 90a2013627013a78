"""Models and data as Python objects: what the API takes besides the names a config holds.

:func:`balance.train.train`, :func:`balance.train.choose_max_lr`,
:func:`balance.range_test.find_max_lr`, :func:`balance.range_test.range_test` and
:func:`balance.pipeline.sweep` take

- ``model=``: a factory ``(input_shape, num_classes, dropout) -> nn.Module`` (a
  function or an ``nn.Module`` class), called wherever ``TrainConfig.model`` would be
  built; ``dropout`` is the run's (the searched value in a study);
- ``data=``: a :class:`balance.data.Dataset` (split and standardized already);
  ``(x_train, y_train, x_test, y_test)`` tensors or arrays, split with the config's
  ``validation_fraction`` and ``split_seed`` and standardized exactly as a
  ``"module:function"`` loader's return (:func:`balance.data.split_dataset`); or a
  :class:`balance.streaming.StreamingData` of torch Datasets, streamed.

**Labels.** With objects, ``TrainConfig.model`` and ``TrainConfig.data`` only name
them in what a study stores (its signature, the report). A field the config sets is
kept as given; one left at its default becomes the object's ``module:qualname``
(:func:`balance.plugins.object_label`): the factory's, the tensors' type
(``torch:Tensor_<fingerprint>``), the train Dataset's class with a fingerprint (or
``StreamingData.name``), a
``Dataset``'s own ``name``.

**Worker processes** (``workers > 1``) receive the objects by pickling: a factory
must be a module-level function or class, a streamed Dataset's classes and
transforms too. :func:`check_picklable` tries that before anything runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from typing import Any

from pydantic import ValidationError

from balance.config import ConfigError, StudyConfig, TrainConfig
from balance.data import Dataset, as_tensors, load_dataset, split_dataset
from balance.models import ModelFactory
from balance.plugins import object_label
from balance.streaming import StreamedSplits, StreamingData, split_streaming, streamed_label

TrainingData = Dataset | StreamedSplits
"""Data ready for a run: tensors in memory or torch Datasets streamed."""

DataArgument = Dataset | StreamedSplits | StreamingData | tuple[Any, ...] | list[Any]
"""What ``data=`` takes."""


def resolve_data(data: DataArgument | None, config: TrainConfig) -> TrainingData:
    """``data`` ready for a run of ``config`` (``None``: ``config.data`` loaded by name).

    Raises:
        ConfigError: ``data`` of another type, or tensors that do not fit together.
    """
    if data is None:
        return load_dataset(
            config.data,
            data_path=config.data_path,
            validation_fraction=config.validation_fraction,
            split_seed=config.split_seed,
        )
    if isinstance(data, Dataset | StreamedSplits):
        return data
    fraction, seed = config.validation_fraction, config.split_seed
    if isinstance(data, StreamingData):
        return split_streaming(data, validation_fraction=fraction, split_seed=seed)
    if isinstance(data, tuple | list):
        if len(data) != 4:
            raise ConfigError(
                f"data: tensors must be (x_train, y_train, x_test, y_test), got {len(data)} parts"
            )
        parts = as_tensors(data, "tensors must be")
        return split_dataset(
            data_label(data), *parts, validation_fraction=fraction, split_seed=seed
        )
    hint = " (a data set's name goes in TrainConfig.data)" if isinstance(data, str) else ""
    raise ConfigError(
        "data: expected a balance Dataset, a StreamingData or (x_train, y_train, x_test, "
        f"y_test) tensors, got {type(data).__name__}{hint}"
    )


def data_label(data: DataArgument) -> str:
    """The name ``data`` gets in a config: see the module docstring.

    Tensors and streamed Datasets carry a fingerprint after their type's name
    (``torch:Tensor_<12 hex>``), so a study resumed with other data under the same
    name is refused as a different study instead of pooling its trials.
    """
    if isinstance(data, Dataset | StreamedSplits):
        return data.name
    if isinstance(data, StreamingData):
        return streamed_label(data)
    if isinstance(data, tuple | list) and data:
        return f"{object_label(type(data[0]))}_{_tensor_fingerprint(data)}"
    return "python:data"


def _tensor_fingerprint(parts: tuple[Any, ...] | list[Any]) -> str:
    """sha256 of the four parts' dtypes, shapes and bytes (a second or so per GB)."""
    digest = hashlib.sha256()
    for part in as_tensors(parts, "tensors must be"):
        array = part.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:12]


def labelled(
    config: TrainConfig, *, model: ModelFactory | None = None, data: DataArgument | None = None
) -> TrainConfig:
    """``config`` with the labels of the objects that stand in for its ``model`` and ``data``.

    Fields the config sets are kept; a label the field's check refuses (a ``Dataset``
    named ``"my data"``) becomes the label of the object's type.
    """
    copy = config.model_copy()
    labels: dict[str, tuple[object, str]] = {}
    if model is not None:
        labels["model"] = (model, model if isinstance(model, str) else object_label(model))
    if data is not None:
        labels["data"] = (data, data_label(data))
    for name, (obj, label) in labels.items():
        if name in config.model_fields_set:
            continue
        try:
            setattr(copy, name, label)  # validated on assignment: a label is a valid field
        except ValidationError:
            setattr(copy, name, object_label(type(obj)))
    return copy


def labelled_study(
    config: StudyConfig, *, model: ModelFactory | None = None, data: DataArgument | None = None
) -> StudyConfig:
    """``config`` whose base run carries the labels of ``model`` and ``data`` (:func:`labelled`).

    Raises:
        ConfigError: a baseline that names another model while a factory builds every run.
    """
    if model is not None and config.baseline is not None and "model" in config.baseline:
        raise ConfigError(
            "baseline.model: with model= the factory builds every run of the study, the "
            f"baseline's too; leave model out of baseline (got {config.baseline['model']!r})"
        )
    if model is None and data is None:
        return config
    return config.model_copy(update={"train": labelled(config.train, model=model, data=data)})


def check_picklable(
    workers: int, *, model: ModelFactory | None = None, data: DataArgument | None = None
) -> None:
    """Refuse, in the parent and before anything runs, objects ``workers`` processes
    cannot receive; with one worker everything runs in this process and anything goes.

    Tensors always pickle and are not tried (a copy of every example); a factory and
    streamed Datasets are.

    Raises:
        ConfigError: one line naming ``model`` or ``data``.
    """
    if workers <= 1:
        return
    if model is not None:
        _check(model, "model", f"the model factory {object_label(model)}", workers)
    if isinstance(data, StreamingData | StreamedSplits):
        _check(data, "data", "the streamed torch Datasets", workers)


def _check(obj: object, field: str, what: str, workers: int) -> None:
    where = (
        "define it at module level with def or class, not as a lambda or closure"
        if field == "model"
        else "define their classes and transforms at module level, not as lambdas or closures"
    )
    try:
        payload = pickle.dumps(obj)
    except Exception as error:  # pickling a user's object can raise almost anything
        raise ConfigError(
            f"{field}: workers={workers} start processes that receive {what} by pickling, "
            f"which failed ({type(error).__name__}); {where}, or use workers=1"
        ) from None
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if b"__main__" in payload and not (main_file and os.path.isfile(main_file)):  # `python -`
        raise ConfigError(
            f"{field}: workers={workers} start processes that cannot import {what} from an "
            "interactive session or notebook (__main__ has no file); define it in a module "
            "file, or use workers=1"
        )
