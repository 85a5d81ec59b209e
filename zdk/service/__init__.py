"""``zdk serve``: a job server that trains submitted Keras models on its Spark cluster.

A job is data, never code: a JSON spec (:mod:`zdk.jobs.spec`) and a ``.keras`` file.
``docs/architecture.md`` ("The job service") maps the modules and a submission's path through them.
"""
