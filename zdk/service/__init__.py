"""``zdk serve``: a job server that trains submitted Keras models on its Spark cluster.

A job is data, never code: a JSON spec (:mod:`zdk.service.spec`) and a ``.keras`` file.
"""
