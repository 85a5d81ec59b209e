"""What runs on Spark executors: the worker loop, Arrow minibatches, model shipping, TensorFlow threads and warm-up."""
