"""Scoring and timing a model: the metrics, their intervals, latency and cost, and the evaluate CLI.

    metrics      AUROC, AUPRC, accuracy, calibration (ECE, NLL, temperature) and TTA
    bootstrap    stratified bootstrap intervals and paired differences to a reference
    latency      latency (interleaved rounds, the least disturbed one), GFLOPs, device names
    evaluation   a split's predictions and metrics, cost metrics, the timing lock, the evaluate CLI
    runtime      the model a trial scores and times on eval.runtime (torch or ONNX Runtime)

Imports trainables.config, trainables.data, trainables.train.loop and compress; never tune.
`python -m trainables.evaluate MODEL_DIR` scores an exported model.
"""
