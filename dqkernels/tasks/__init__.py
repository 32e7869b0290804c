"""Models as the trainer sees them: one module per model, each exposing ``TASK``, an
instance of :class:`dqkernels.trainer.Task`. ``dqkernels.train.TASKS`` lists them for
``dqk train <model>``."""
