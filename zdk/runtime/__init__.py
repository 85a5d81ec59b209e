"""What runs inside Spark: the session, the executor worker loop, Arrow minibatches, model shipping, progress."""
