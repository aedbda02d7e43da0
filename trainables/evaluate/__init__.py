"""Scoring and timing a model: the metrics, their intervals, latency and cost, and the evaluate CLI.

    metrics      the one implementation of each metric (AUROC, AUPRC, accuracy, Sens@95%Spec, ECE; weighted,
                 so the bootstrap scores every resample at once), calibration (temperature) and TTA
    bootstrap    resampling only: stratified intervals and paired differences to a reference
    latency      latency (interleaved rounds, the least disturbed one), GFLOPs, device names
    evaluation   a split's predictions and metrics, cost metrics, TTA as deployed, the timing lock
    cli          python -m trainables.evaluate MODEL_DIR: an exported model scored with the sweep's metrics
    runtime      the model a trial scores and times on eval.runtime (torch or ONNX Runtime)

Imports trainables.config, trainables.data, trainables.train.loop and compress; never tune.
`python -m trainables.evaluate MODEL_DIR` scores an exported model.
"""
