"""The sweep driver: imports search_spaces and trainables, never the reverse.

    run          the CLI (python tune/run.py)
    presets, smoke   named base configs; the --smoke runs
    sweep        SweepSettings and the Ray Tune wiring of one sweep
    study        the Optuna study, sampler and searcher (user attributes, resume cleanup)
    callbacks    the per-trial progress line and W&B logging
    stopping     stop the sweep on a missing input
    trials       what a finished study says about its trials: each one's config, the front, its predictions
    reports, verdicts, retime, replicates, compare, spectra, summary   what a finished sweep writes
    export       one trial as a self-contained folder
    cluster      the Ray dashboard, Jobs and token checks
"""
