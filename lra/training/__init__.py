"""Training: ``lra-train``'s job, from the composed Hydra config to the result record.

One job trains and evaluates the common encoder on one LRA task with one attention variant
(configs in ``conf/``; groups ``task/ attention/ model/ trainer/ recipe/ pretrain/ experiment/``),
optionally after self-pretraining on the task's own inputs (``pretrain=mlm|causal``). It writes
one result record (``record.json``) into the job directory and, with ``results_dir=...``, a copy
there; it checkpoints into the job directory, and running the same job directory again
(``hydra.run.dir=<dir>``) resumes from the last checkpoint and ends in the same state as an
uninterrupted run. CPU threads: ``threads=auto`` gives the job its share of the cores
(:mod:`lra.devices`). Failures never raise out of a job (a sweep goes on and its report is
built): the record's status says ``nan``, ``oom`` or ``error``; the exit statuses of
``lra-train`` are :mod:`lra.cli.app`'s.

Modules, one job each; each imports only the ones above it in this list (no cycle)::

    state.py       RNG state, atomic checkpoints (LoopCheckpoint: save/restore for both loops), the best
                   validation's weights (BestWeights), preemption signals (Preempted), how a loop ended
                   (loop_failure, trained_and_evaluated)
    verdict.py     did the run learn: the binomial test against the majority class, the chance warning
    curves.py      curves.csv beside the record, TensorBoard / W&B loggers (logger=...)
    optim.py       AdamW and its learning-rate schedule (make_optimizer, lr_factor)
    step.py        one supervised optimizer step over trainer.accumulate micro-batches (TrainStep, also
                   timed by lra-bench) and evaluate
    token_task.py  token-level tasks (MQAR, text_lm): the token head's model, loss at the labelled
                   positions, metrics, and the decoding state size every record states
    config.py      the effective configuration: layering (merge_layers, recipe_of, resolve), the
                   self-pretraining settings, validate (before any data), device_of, effective_config
    pretrain.py    the self-pretraining loop (masking, checkpoint selection): state, optim
    finetune.py    the supervised loop (train, build_model, test_checkpoints): config, step, token_task,
                   state, optim, pretrain, verdict, curves
    lr_sweep.py    a learning-rate sweep's rule: a cell's other rates are skipped once one reached the target
    job.py         run: one job, its record written whatever happens: config, finetune, state, lr_sweep, verdict

Data flows one way::

    Hydra cfg --config.resolve/validate--> settings --finetune.train--> [pretrain.phase] --> TrainStep
    steps, evaluate (+ verdict, curves) --> record dict --job.run--> record.json (lra.results.write_record)

Nothing here imports :mod:`lra.cli` or :mod:`lra.bench`; the benchmark imports
:class:`~lra.training.step.TrainStep`, :func:`~lra.training.optim.make_optimizer` and
:func:`~lra.training.config.merge_layers` from here. This package re-exports nothing: import from
the module that defines a name.
"""
