"""Each transformer on small hand-computed cases; vector, array and scalar columns; persistence."""

from __future__ import annotations

import pytest

pytest.importorskip("pyspark")

from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.linalg import DenseVector, SparseVector, Vectors  # noqa: E402

from zdk.errors import ConfigError  # noqa: E402
from zdk.transformers import (  # noqa: E402
    BinaryLabelTransformer, DenseTransformer, LabelIndexTransformer, MinMaxTransformer, OneHotTransformer,
    ReshapeTransformer, StandardTransformer,
)

pytestmark = pytest.mark.spark


def column(df, name):
    return [row[name] for row in df.orderBy("id").collect()]


@pytest.fixture(scope="module")
def frame(spark):
    return spark.createDataFrame(
        [(0, Vectors.dense([0.0, 125.0, 250.0]), [0.0, 50.0], 10.0, 3, Vectors.sparse(3, {1: 2.0})),
         (1, Vectors.dense([250.0, 0.0, 25.0]), [100.0, 25.0], 20.0, 0, Vectors.sparse(3, {0: 1.0, 2: 5.0}))],
        ["id", "vec", "arr", "num", "cls", "sparse"])


def test_minmax_on_vector_array_and_scalar(frame):
    vec = MinMaxTransformer(o_min=0.0, o_max=250.0, n_min=0.0, n_max=1.0, input_col="vec", output_col="out")
    assert column(vec.transform(frame), "out") == [DenseVector([0.0, 0.5, 1.0]), DenseVector([1.0, 0.0, 0.1])]
    arr = MinMaxTransformer(o_min=0.0, o_max=100.0, n_min=-1.0, n_max=1.0, input_col="arr", output_col="out")
    assert column(arr.transform(frame), "out") == [[-1.0, 0.0], [1.0, -0.5]]
    num = MinMaxTransformer(o_min=10.0, o_max=20.0, n_min=0.0, n_max=2.0, input_col="num", output_col="out",
                            is_vector=False)
    assert column(num.transform(frame), "out") == [0.0, 2.0]


def test_minmax_errors_name_the_field(frame):
    with pytest.raises(ConfigError, match="`o_max` must differ from `o_min`"):
        MinMaxTransformer(o_min=1.0, o_max=1.0, n_min=0.0, n_max=1.0, input_col="vec", output_col="o")
    with pytest.raises(ConfigError, match="`is_vector` must be False for the numeric column `num`"):
        MinMaxTransformer(o_min=0.0, o_max=1.0, n_min=0.0, n_max=1.0, input_col="num", output_col="o").transform(frame)
    with pytest.raises(ConfigError, match="`n_max` must be set"):
        MinMaxTransformer(o_min=0.0, o_max=1.0, n_min=0.0, input_col="vec", output_col="o").transform(frame)


def test_binary_label(frame):
    out = BinaryLabelTransformer(input_column="cls", output_column="bin", label=3).transform(frame)
    assert column(out, "bin") == [DenseVector([1.0, 0.0]), DenseVector([0.0, 1.0])]


def test_standard_uses_population_stddev(frame):
    out = StandardTransformer(columns=["num"]).transform(frame)
    assert column(out, "num_normalized") == [-1.0, 1.0]  # mean 15, population stddev 5
    out = StandardTransformer(columns=["num", "cls"], suffix="_z").transform(frame)
    assert column(out, "cls_z") == [1.0, -1.0]


def test_dense_from_sparse(frame):
    out = DenseTransformer(input_col="sparse", output_col="dense").transform(frame)
    assert column(out, "dense") == [DenseVector([0.0, 2.0, 0.0]), DenseVector([1.0, 0.0, 5.0])]
    assert all(isinstance(v, DenseVector) for v in column(out, "dense"))


def test_reshape_to_nested_lists(spark):
    df = spark.createDataFrame([(0, Vectors.dense(list(range(12))))], ["id", "vec"])
    out = ReshapeTransformer(input_col="vec", output_col="img", shape=(2, 3, 2)).transform(df)
    assert column(out, "img") == [[[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [[6.0, 7.0], [8.0, 9.0], [10.0, 11.0]]]]
    out = ReshapeTransformer(input_col="vec", output_col="m", shape=(3, 4)).transform(df)
    assert column(out, "m")[0][2] == [8.0, 9.0, 10.0, 11.0]


def test_reshape_of_the_wrong_size_fails_naming_sizes(spark):
    df = spark.createDataFrame([(0, [1.0, 2.0, 3.0])], "id int, arr array<double>")
    with pytest.raises(Exception, match="must hold 4 values for shape \\(2, 2\\). Received: 3 values"):
        column(ReshapeTransformer(input_col="arr", output_col="m", shape=(2, 2)).transform(df), "m")


def test_one_hot(frame):
    out = OneHotTransformer(output_dim=4, input_col="cls", output_col="hot").transform(frame)
    assert column(out, "hot") == [[0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(Exception, match=r"must hold integers in \[0, 3\). Received: 3"):
        column(OneHotTransformer(output_dim=3, input_col="cls", output_col="hot").transform(frame), "hot")


def test_label_index_threshold_argmax_and_default(spark):
    df = spark.createDataFrame(
        [(0, Vectors.dense([0.1, 0.6, 0.7])),   # first ≥ 0.55 is index 1
         (1, Vectors.dense([0.2, 0.5, 0.3])),   # none ≥ 0.55: argmax 1
         (2, Vectors.dense([0.0, -1.0, 0.0])),  # nothing above 0: default
         (3, Vectors.dense([0.4, 0.1, 0.4]))],  # tie: first argmax
        ["id", "prediction"])
    out = LabelIndexTransformer(output_dim=3, default_index=2).transform(df)
    assert column(out, "prediction_index") == [1.0, 1.0, 2.0, 0.0]


def test_transformers_persist_in_a_pipeline(frame, tmp_path):
    stages = [MinMaxTransformer(o_min=0.0, o_max=250.0, n_min=0.0, n_max=1.0, input_col="vec", output_col="mm"),
              OneHotTransformer(output_dim=4, input_col="cls", output_col="hot"),
              LabelIndexTransformer(output_dim=4, input_col="hot", output_col="idx"),
              ReshapeTransformer(input_col="mm", output_col="rs", shape=(3, 1)),
              StandardTransformer(columns=["num"]),
              BinaryLabelTransformer(input_column="cls", output_column="bin", label=0),
              DenseTransformer(input_col="sparse", output_col="dense")]
    model = Pipeline(stages=stages).fit(frame)
    path = "file://" + str(tmp_path / "pipe")
    model.save(path)
    loaded = PipelineModel.load(path)
    assert [type(s).__name__ for s in loaded.stages] == [type(s).__name__ for s in stages]
    assert loaded.transform(frame).orderBy("id").collect() == model.transform(frame).orderBy("id").collect()
    assert column(loaded.transform(frame), "idx") == [3.0, 0.0]
