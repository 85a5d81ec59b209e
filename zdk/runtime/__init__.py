"""What runs on Spark executors: the worker loop, Arrow minibatches and the rows they spill, the
task's memory figures, model shipping, TensorFlow threads and warm-up."""
