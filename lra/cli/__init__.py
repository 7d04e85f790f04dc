"""The command-line entry points, thin shells over the library (``pyproject.toml`` [project.scripts]).

=============  ==========================  ===========================================
command        module                      what it runs
=============  ==========================  ===========================================
``lra-train``  :mod:`lra.cli.train`        one training job (Hydra app, ``conf/train.yaml``)
``lra-bench``  :mod:`lra.cli.bench`        one benchmark grid (Hydra app, ``conf/bench.yaml``)
``lra-data``   :mod:`lra.cli.data`         prepare / describe / look at a task's data
``lra-report`` :mod:`lra.report.cli`       the report from result records
=============  ==========================  ===========================================

The two Hydra apps share :func:`lra.cli.app.hydra_app`, which owns the exit statuses
(:data:`~lra.cli.app.EXIT_OK` 0, :data:`~lra.cli.app.EXIT_FAILED` 1,
:data:`~lra.cli.app.EXIT_CONFIG` 2, :data:`~lra.cli.app.EXIT_PREEMPTED` 143).
This package sits on top: nothing in ``lra`` imports it.
"""
