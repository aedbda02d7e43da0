"""What a finished sweep says: the front, its verdicts, re-timed latencies, replicates, exports.

    reports      the Pareto front, hypervolume, trials as a table, pareto.md / .csv, plots
    summary      the reports of a sweep: build_reports, final evaluation on test, the console summary
    verdicts     non-inferiority verdicts and the recommendation
    retime       the reference and the front re-timed in one process, interleaved
    replicates   front points re-run with other seeds
    compare      two sweeps on one hypervolume reference point
    spectra      singular-value spectra of the chosen trials' weights
    export       a trial rebuilt from its cached stages as a folder compress loads

Imports tune.study, tune.sweep, tune.trials, trainables and compress; nothing in tune/ outside this
folder imports it at module level except the CLI (tune/run.py).
"""
