"""What runs inside one trial. Imports nothing from tune/.

A trial, top to bottom:
    config       the typed, validated TrialConfig built from the flat dotted-key dict (no torch)
    key_rules    how each config field keys the stage cache and when it applies (`setting`)
    backbones    the backbones a trial can name, as plain numbers (no torch)
    trial        run_trial / build_trial_model: the trial as its stages; tune_trainable; the debug CLI
    stages       each cached stage as a `Stage` record (key config, when it runs, what it writes,
                 its facts) and TrialRun (cache hits and seconds per stage); compress, prune_tokens
    job          TrainJob (stage + frozen TrialConfig + refs), StageSettings, the stage's starting model
    runner       a training stage in this process or as a Ray Train TorchTrainer
    model        the classifier on a DINOv3 backbone, fine-tune methods and LoRA

Rooms below it (each package's docstring says what it owns and may import):
    data/        HDF5 datasets, digits, PCam download, loaders, augmentation, stain, synthetic, input checks
    train/       the training loop, sessions (here or on a Ray Train worker), the worker entry, features
    evaluate/    the metrics (one implementation each), bootstrap, latency, evaluation, runtime, the CLI
    cache/       the content-addressed stage cache: keys, stores (local or pyarrow.fs), leases

Shared with the driver: refs (cache: references), storage (is_uri, atomic_write, the Ray Train
folder layout), writable (folder checks), report_keys (keys of a trial's report).
"""
