"""Training one stage: the loop, where it runs, and what the workers import.

    loop       train_loop: optimiser, schedule, epochs, best-epoch checkpoints
    sessions   where the loop runs (this process or a Ray Train worker), devices, checkpoint I/O
    entry      what a Ray Train worker runs (the job as bytes, the per-epoch callback)
    features   head_only on cached frozen-backbone features; the collapse watch

Imports trainables.config, trainables.data, trainables.evaluate.metrics and compress; never tune.
trainables.job describes a stage and trainables.runner starts it (here or on Ray Train).
"""
