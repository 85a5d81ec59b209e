"""How many parameters a Keras model will have, read from its ``config.json`` before anything
is loaded: a 1 KB config can declare a 40 GB layer, which Keras allocates while loading.

The estimate is an upper bound for what Keras's loader builds, by these rules:

- **Models** (a config with a ``layers`` list: ``Sequential``, ``Functional``, a nested model)
  count the sum of their layers.
- **A layer's input** is its ``build_config`` shapes: Keras builds every deserialized layer from
  its ``build_config`` before calling it, so those are the shapes its weights take (every built
  layer that ``model.save`` writes carries one). A layer without one is built on the shape that
  reaches it, which the config does not state: its input is then taken to be as large as the
  largest size declared anywhere in the config (any number, and the product of any list of
  numbers).
- **Known layers** count their weights by formula from their input's shape and their settings: ``Dense`` is
  width × units + units, a convolution kernel × channels × filters + filters (channels by its
  ``data_format``), ``Embedding``
  input_dim × output_dim, an LSTM 4 × units × (width + units + 1), and so on (``_RULES``).
  Groups and shared axes, which only make a layer smaller, are ignored.
- **Layers known to have no weights** (``_WEIGHTLESS``: pooling, reshaping, merging, dropout,
  activations …) count 0.
- **Any other layer** (a class the table does not know, a custom layer) counts the product of
  its two largest numbers among its own settings and its input's size: a weight matrix between
  two of them. Nested settings (initializers, dtype policies) and the keys ``seed`` and
  ``shared_object_id`` are not sizes.
- **Wrappers** count the layers they hold (``layer``, ``backward_layer``, ``cell``, ``cells``)
  on the wrapper's input; ``Bidirectional`` without a ``backward_layer`` counts its layer twice.
- A number in the config is a size when it is positive; a float rounds up, and NaN or infinity
  counts as infinitely large.

A layer whose weights grow faster than the product of two of its numbers (the cube of a
setting), or a shape that grows between layers without any ``build_config`` (a
``RepeatVector`` of a ``RepeatVector``), can escape the estimate; they meet the loader box's
memory limit instead (:mod:`zdk.service.model_sandbox`), and the count of the loaded model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Iterator, Mapping

from zdk.errors import ConfigError

#: What NaN and infinity count as: more than any cap.
INFINITE = 10**30
_NOT_SIZES = frozenset({"seed", "shared_object_id"})
_NESTED = ("layer", "forward_layer", "cell")

_WEIGHTLESS = frozenset("""
InputLayer Flatten Reshape Permute RepeatVector Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D
GaussianDropout GaussianNoise AlphaDropout Activation ReLU LeakyReLU ELU Softmax ThresholdedReLU Masking
ActivityRegularization Identity MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D
AveragePooling3D MaxPool1D MaxPool2D MaxPool3D AvgPool1D AvgPool2D AvgPool3D GlobalMaxPooling1D
GlobalMaxPooling2D GlobalMaxPooling3D GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D ZeroPadding1D
ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D UpSampling3D Add
Subtract Multiply Average Maximum Minimum Concatenate Dot UnitNormalization Rescaling Resizing CenterCrop
RandomFlip RandomRotation RandomZoom RandomTranslation RandomContrast RandomCrop RandomBrightness
""".split())


@dataclasses.dataclass(frozen=True)
class _Input:
    """What a layer's weights can depend on: its input's first and last axis (after the batch
    axis), its largest axis and its size per example."""

    first: int
    last: int
    largest: int
    size: int

    @classmethod
    def of(cls, shapes: list[list[Any]]) -> "_Input":
        dims = [[_number(d) or 1 for d in shape[1:]] or [1] for shape in shapes]
        return cls(first=max(d[0] for d in dims), last=max(d[-1] for d in dims), largest=max(max(d) for d in dims),
                   size=max(math.prod(d) for d in dims))

    @classmethod
    def unknown(cls, bound: int) -> "_Input":
        return cls(first=bound, last=bound, largest=bound, size=bound)

    def channels(self, cfg: Mapping[str, Any]) -> int:
        """The channel axis by the layer's ``data_format``; the larger candidate without one."""
        fmt = cfg.get("data_format")
        return self.first if fmt == "channels_first" else self.last if fmt == "channels_last" else max(self.first,
                                                                                                         self.last)


def estimate(config: Mapping[str, Any]) -> int:
    """An upper estimate of the parameters Keras allocates loading the model ``config`` describes
    (the rules are in this module's docstring).

    Args:
        config: the parsed ``config.json`` of a ``.keras`` file.

    Raises:
        ConfigError: naming ``model`` when the config nests too deeply to walk.
    """
    try:
        bound = max(_sizes(config, deep=True), default=1)
        return _layer(config, None, bound)
    except RecursionError:
        raise ConfigError("`model`'s config.json nests too deeply to be a Keras model", field="model") from None


def _layer(obj: Any, inherited: _Input | None, bound: int) -> int:
    if not isinstance(obj, Mapping):
        return 0
    cls = obj.get("class_name")
    cfg = obj.get("config")
    if not isinstance(cfg, Mapping):
        cfg = {}
    layers = cfg.get("layers")
    if isinstance(layers, list):  # a model: each layer carries its own build_config
        return sum(_layer(layer, None, bound) for layer in layers)
    shapes = _shapes(obj.get("build_config"))
    inputs = _Input.of(shapes) if shapes else inherited or _Input.unknown(bound)
    nested = _nested(str(cls), cfg, inputs, bound)
    if cls in _WEIGHTLESS:
        return nested
    for pattern, rule in _RULES:
        match = pattern.fullmatch(str(cls))
        if match:
            return nested + rule(cfg, inputs, match)
    if nested:
        return nested  # a wrapper whose own weights are its layers'
    return _unknown(cfg, inputs)


def _nested(cls: str, cfg: Mapping[str, Any], inputs: _Input, bound: int) -> int:
    total = sum(_layer(cfg.get(key), inputs, bound) for key in _NESTED)
    cells = cfg.get("cells")
    if isinstance(cells, list):
        total += sum(_layer(cell, inputs, bound) for cell in cells)
    if cls == "Bidirectional":
        backward = cfg.get("backward_layer")
        total += _layer(backward, inputs, bound) if isinstance(backward, Mapping) else _layer(cfg.get("layer"), inputs,
                                                                                              bound)
    return total


def _unknown(cfg: Mapping[str, Any], inputs: _Input) -> int:
    numbers = sorted([*_sizes(cfg, deep=False), inputs.size], reverse=True)
    return numbers[0] * numbers[1] if len(numbers) > 1 else numbers[0]


def _number(value: Any) -> int | None:
    """``value`` as a size: a positive number rounded up (NaN and infinity: :data:`INFINITE`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return INFINITE
        return math.ceil(value) if value > 0 else None
    return None


def _sizes(value: Any, *, deep: bool) -> Iterator[int]:
    """The sizes in ``value``: its numbers, and the product of each list of numbers; with
    ``deep``, those of nested objects too."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key not in _NOT_SIZES and (deep or not isinstance(item, Mapping)):
                yield from _sizes(item, deep=deep)
    elif isinstance(value, list):
        numbers = [n for n in map(_number, value) if n is not None]
        if numbers:
            yield math.prod(numbers)
        for item in value:
            if isinstance(item, (list, Mapping)):
                yield from _sizes(item, deep=deep)
    else:
        number = _number(value)
        if number is not None:
            yield number


def _shapes(value: Any) -> list[list[Any]]:
    """Every shape (a list of numbers and nulls) in a ``build_config``."""
    if isinstance(value, Mapping):
        return [shape for item in value.values() for shape in _shapes(item)]
    if isinstance(value, list) and value:
        if all(item is None or _number(item) is not None for item in value):
            return [value]
        return [shape for item in value for shape in _shapes(item)]
    return []


def _int(cfg: Mapping[str, Any], key: str, default: int = 1) -> int:
    value = _number(cfg.get(key))
    return default if value is None else value


def _kernel(cfg: Mapping[str, Any], rank: int) -> int:
    size = cfg.get("kernel_size", 1)
    if isinstance(size, list):
        return math.prod(_number(k) or 1 for k in size)
    return (_number(size) or 1) ** rank


def _product(value: Any, default: int) -> int:
    if isinstance(value, list):
        return math.prod(_number(v) or 1 for v in value)
    return _number(value) or default


def _dense(cfg: Mapping[str, Any], x: _Input, _: Any) -> int:
    units = _int(cfg, "units")
    return x.last * units + units


def _einsum_dense(cfg: Mapping[str, Any], x: _Input, _: Any) -> int:
    out = _product(cfg.get("output_shape"), x.last)
    return x.size * out + out


def _convolution(cfg: Mapping[str, Any], x: _Input, match: re.Match[str]) -> int:
    filters = _int(cfg, "filters")
    return _kernel(cfg, int(match.group("rank"))) * x.channels(cfg) * filters + filters


def _depthwise(cfg: Mapping[str, Any], x: _Input, match: re.Match[str]) -> int:
    out = x.channels(cfg) * _int(cfg, "depth_multiplier")
    return _kernel(cfg, int(match.group("rank"))) * out + out


def _separable(cfg: Mapping[str, Any], x: _Input, match: re.Match[str]) -> int:
    filters, depth = _int(cfg, "filters"), x.channels(cfg) * _int(cfg, "depth_multiplier")
    return _kernel(cfg, int(match.group("rank"))) * depth + depth * filters + filters


def _conv_lstm(cfg: Mapping[str, Any], x: _Input, match: re.Match[str]) -> int:
    filters = _int(cfg, "filters")
    return 4 * filters * _kernel(cfg, int(match.group("rank"))) * (x.channels(cfg) + filters) + 4 * filters


def _recurrent(gates: int, biases: int) -> Callable[[Mapping[str, Any], _Input, Any], int]:
    def rule(cfg: Mapping[str, Any], x: _Input, _: Any) -> int:
        units = _int(cfg, "units")
        return gates * units * (x.last + units + biases)
    return rule


def _attention(cfg: Mapping[str, Any], x: _Input, _: Any) -> int:
    heads = max(_int(cfg, "num_heads"), _int(cfg, "num_query_heads"), _int(cfg, "num_key_value_heads"))
    key = max(_int(cfg, "key_dim"), _int(cfg, "head_dim"))
    value = _int(cfg, "value_dim", key)
    out = _product(cfg.get("output_shape"), x.largest)
    return heads * (2 * key + value) * (x.largest + 1) + heads * value * out + out


_RULES: tuple[tuple[re.Pattern[str], Callable[[Mapping[str, Any], _Input, Any], int]], ...] = tuple(
    (re.compile(pattern), rule) for pattern, rule in (
        (r"Dense", _dense),
        (r"EinsumDense", _einsum_dense),
        (r"Conv(olution)?(?P<rank>[123])D(Transpose)?", _convolution),
        (r"DepthwiseConv(?P<rank>[12])D", _depthwise),
        (r"SeparableConv(olution)?(?P<rank>[12])D", _separable),
        (r"ConvLSTM(?P<rank>[123])D", _conv_lstm),
        (r"Embedding", lambda cfg, x, _: _int(cfg, "input_dim") * _int(cfg, "output_dim")),
        (r"LSTM(Cell)?", _recurrent(4, 1)),
        (r"GRU(Cell)?", _recurrent(3, 2)),
        (r"SimpleRNN(Cell)?", _recurrent(1, 1)),
        (r"(Batch|Layer|Group|RMS)Normalization", lambda cfg, x, _: 4 * x.largest),
        (r"Normalization", lambda cfg, x, _: 2 * x.size + 1),
        (r"PReLU", lambda cfg, x, _: x.size),
        (r"(MultiHead|GroupedQuery)Attention|GroupQueryAttention", _attention),
    ))
