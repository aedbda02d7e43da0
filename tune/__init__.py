"""The sweep driver: imports search_spaces and trainables, never the reverse.

    run          the CLI (python tune/run.py)
    presets, smoke   named base configs; the --smoke runs
    sweep        SweepSettings and the Ray Tune wiring of one sweep; the training-stage bound
    study        the Optuna study, sampler and searcher (user attributes, resume cleanup)
    budget, warm_start   --budget constraints; earlier sweeps' trials added to a new study
    callbacks    the per-trial progress line and W&B logging
    stopping     stop the sweep on a missing input
    notes        dashboard notes on the study and its trials
    trials       what a finished study says about its trials: each one's config, the front, its predictions
    cluster      the Ray dashboard, Jobs and token checks
    report/      what a finished sweep writes: reports (compute_report, then the writers), summary,
                 verdicts, retime, replicates, compare, spectra, export
"""
