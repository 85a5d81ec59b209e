"""zdk: asynchronous data-parallel Keras training on Spark through a sharded ZeroMQ parameter server."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
