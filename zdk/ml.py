"""``pyspark.ml`` Estimator and Model: zdk training as a Pipeline stage, with persistence.

``KerasEstimator.fit(df)`` runs a zdk trainer; ``KerasModel.transform(df)`` adds
predictions. Both save and load through ``pyspark.ml`` (``save``/``load``,
``Pipeline.save``/``PipelineModel.load``): parameters as Spark ML metadata, the Keras
model as ``model.keras`` in the stage's directory, written through Hadoop's
FileSystem API (so ``file://``, ``hdfs://`` and ``s3a://`` all work).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Params, TypeConverters
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from zdk import io
from zdk.errors import ConfigError
from zdk.runtime.models import serialize_optimizer
from zdk.mlparams import param as _param
from zdk.predictors import ModelPredictor

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class _ColumnParams(Params):
    _input_kwargs: dict[str, Any]  # set by pyspark's @keyword_only

    featuresCols = _param("featuresCols", "feature columns, one per model input", TypeConverters.toListString)
    predictionCol = _param("predictionCol", "the prediction column added", TypeConverters.toString)


class _Writer(MLWriter):
    def __init__(self, instance: Any) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sc)
        io.save_model(self.instance.keras_model, f"{path.rstrip('/')}/{MODEL_FILE}", spark=self.sparkSession)


class _Reader(MLReader):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        metadata = DefaultParamsReader.loadMetadata(path, self.sc)
        keras_model = io.load_model(f"{path.rstrip('/')}/{MODEL_FILE}", spark=self.sparkSession)
        instance = self.cls(keras_model=keras_model)
        DefaultParamsReader.getAndSetParams(instance, metadata)
        instance._resetUid(metadata["uid"])
        return instance


class KerasModel(Model, _ColumnParams, MLReadable, MLWritable):
    """A trained Keras model as a Spark ML Model: ``transform`` adds predictions.

    Args:
        keras_model: the trained model.
        featuresCols: feature columns (one per input).
        predictionCol: the column added (a dense vector).
    """

    @keyword_only
    def __init__(self, *, keras_model: Any = None, featuresCols: Sequence[str] = ("features",),
                 predictionCol: str = "prediction") -> None:
        super().__init__()
        self.keras_model = keras_model
        #: One record per worker step of the training run.
        self.history: list[dict[str, Any]] = []
        #: The per-epoch figures of a validated run: each figure (``loss``, ``val_loss``, …) to one value per epoch.
        self.epoch_history: dict[str, list[float]] = {}
        self._setDefault(featuresCols=["features"], predictionCol="prediction")
        kwargs = {k: (list(v) if k == "featuresCols" else v) for k, v in self._input_kwargs.items() if k != "keras_model"}
        self._set(**kwargs)

    def _transform(self, dataframe: Any) -> Any:
        if self.keras_model is None:
            raise ConfigError("KerasModel has no keras_model; load it with KerasModel.load(path)")
        return ModelPredictor(self.keras_model, features_col=self.getOrDefault(self.featuresCols),
                              output_col=self.getOrDefault(self.predictionCol)).predict(dataframe)

    def write(self) -> MLWriter:
        return _Writer(self)

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)


class KerasEstimator(Estimator, _ColumnParams, MLReadable, MLWritable):
    """Trains a Keras model with a zdk algorithm as a Spark ML Estimator.

    Args:
        keras_model: the built model to train (its weights are the start).
        algorithm: a registered algorithm name.
        algorithmParams: the algorithm's hyperparameters (JSON-able dict).
        featuresCols: feature columns (one per input); labelCols: label columns (one per output).
        predictionCol: the column the fitted model adds.
        workerOptimizer: a Keras optimizer name or instance (stored as its config).
        loss: a Keras loss name; metrics: metric names.
        numWorkers, numEpoch, batchSize, numShards: as for the trainers.
        shuffle: shuffle rows before training.
        validation: a fraction of the rows set aside for validation (a seeded split), or the name
            of a boolean column marking the validation rows; the fitted model's ``epoch_history``
            then holds ``val_loss`` and ``val_<metric>`` per epoch.
    """

    labelCols = _param("labelCols", "label columns, one per model output", TypeConverters.toListString)
    algorithm = _param("algorithm", "registered zdk algorithm", TypeConverters.toString)
    algorithmParams = _param("algorithmParams", "algorithm hyperparameters as JSON", TypeConverters.toString)
    workerOptimizer = _param("workerOptimizer", "worker optimizer config as JSON", TypeConverters.toString)
    loss = _param("loss", "Keras loss name", TypeConverters.toString)
    metrics = _param("metrics", "Keras metric names", TypeConverters.toListString)
    numWorkers = _param("numWorkers", "workers", TypeConverters.toInt)
    numEpoch = _param("numEpoch", "epochs", TypeConverters.toInt)
    batchSize = _param("batchSize", "minibatch size", TypeConverters.toInt)
    numShards = _param("numShards", "parameter-server shards", TypeConverters.toInt)
    shuffle = _param("shuffle", "shuffle rows before training", TypeConverters.toBoolean)
    validation = _param("validation", "validation fraction, or the name of a boolean column marking validation rows",
                        TypeConverters.identity)

    @keyword_only
    def __init__(self, *, keras_model: Any = None, algorithm: str = "adag", algorithmParams: dict | None = None,
                 featuresCols: Sequence[str] = ("features",), labelCols: Sequence[str] = ("label",),
                 predictionCol: str = "prediction", workerOptimizer: Any = "adam", loss: str | None = None,
                 metrics: Sequence[str] = ("accuracy",), numWorkers: int = 2, numEpoch: int = 1, batchSize: int = 32,
                 numShards: int = 1, shuffle: bool = False, validation: float | str | None = None) -> None:
        super().__init__()
        self.keras_model = keras_model
        self._setDefault(algorithm="adag", algorithmParams="{}", featuresCols=["features"], labelCols=["label"],
                         predictionCol="prediction", workerOptimizer=json.dumps("adam"), metrics=["accuracy"],
                         numWorkers=2, numEpoch=1, batchSize=32, numShards=1, shuffle=False)
        kwargs = dict(self._input_kwargs)
        kwargs.pop("keras_model", None)
        if "algorithmParams" in kwargs:
            kwargs["algorithmParams"] = json.dumps(kwargs["algorithmParams"] or {})
        if "workerOptimizer" in kwargs:
            opt = kwargs["workerOptimizer"]
            kwargs["workerOptimizer"] = json.dumps(opt if isinstance(opt, str) else serialize_optimizer(opt))
        for key in ("featuresCols", "labelCols", "metrics"):
            if key in kwargs:
                kwargs[key] = list(kwargs[key])
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _trainer(self) -> Any:
        import keras

        from zdk.trainers import Trainer

        if self.keras_model is None:
            raise ConfigError("`keras_model` must be given to KerasEstimator. Received: keras_model=None",
                              field="keras_model")
        if not self.isDefined(self.loss):
            raise ConfigError("`loss` must be set on KerasEstimator. Received: loss=None", field="loss")
        get = self.getOrDefault
        optimizer = json.loads(get(self.workerOptimizer))
        if not isinstance(optimizer, str):
            optimizer = keras.optimizers.deserialize(optimizer)
        return Trainer(self.keras_model, optimizer, get(self.loss), algorithm=get(self.algorithm),
                       metrics=get(self.metrics), features_col=get(self.featuresCols), label_col=get(self.labelCols),
                       num_workers=get(self.numWorkers), num_epoch=get(self.numEpoch), batch_size=get(self.batchSize),
                       num_shards=get(self.numShards), progress=False, **json.loads(get(self.algorithmParams)))

    def _split(self, dataframe: Any) -> dict[str, Any]:
        """``train``'s validation arguments for the ``validation`` param."""
        if not self.isDefined(self.validation) or self.getOrDefault(self.validation) is None:
            return {}
        value = self.getOrDefault(self.validation)
        if isinstance(value, str):
            from pyspark.sql import functions as F
            from pyspark.sql import types as T

            if value not in dataframe.columns or not isinstance(dataframe.schema[value].dataType, T.BooleanType):
                raise ConfigError(f"`validation` must be a fraction or a boolean column of the DataFrame. "
                                  f"Received: validation={value!r}", field="validation")
            return {"dataframe": dataframe.filter(~F.col(value)), "validation_data": dataframe.filter(F.col(value))}
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`validation` must be a fraction or a boolean column's name. Received: "
                              f"validation={value!r}", field="validation")
        return {"validation_split": float(value)}

    def _fit(self, dataframe: Any) -> KerasModel:
        trainer = self._trainer()
        split = {"dataframe": dataframe, **self._split(dataframe)}
        trained = trainer.train(shuffle=self.getOrDefault(self.shuffle), **split)
        if isinstance(trained, list):
            raise ConfigError(f"`algorithm` must train one model for KerasEstimator. Received: "
                              f"algorithm={self.getOrDefault(self.algorithm)!r}, which returns {len(trained)}",
                              field="algorithm")
        model = KerasModel(keras_model=trained, featuresCols=self.getOrDefault(self.featuresCols),
                           predictionCol=self.getOrDefault(self.predictionCol))
        model.history = trainer.history
        model.epoch_history = dict(trainer.keras_history.history) if trainer.keras_history is not None else {}
        return self._copyValues(model)

    def write(self) -> MLWriter:
        return _Writer(self)

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)
