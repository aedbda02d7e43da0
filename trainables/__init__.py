"""What runs inside one trial. Imports nothing from tune/.

The pipeline:
    trial        run_trial / build_trial_model: the trial as its list of stages; tune_trainable; the debug CLI
    stages       one function per stage (pretrain, finetune, calibrate, prehab, compress, recover, tokens),
                 each stage's cache-key config, and TrialRun (cache hits and seconds per stage)
    config       the typed, validated TrialConfig built from the flat dotted-key dict

Training one stage:
    job          TrainJob (stage + frozen TrialConfig + refs), StageSettings, the stage's starting model
    loop         train_loop: optimiser, schedule, epochs, best-epoch checkpoints
    sessions     where the loop runs (this process or a Ray Train worker), devices, checkpoint I/O
    runner       a stage in this process or as a Ray Train TorchTrainer
    features     head_only on cached frozen-backbone features; the collapse watch
    model        DINOv3 backbones by name, the classifier, fine-tune methods and LoRA

Data:
    data         the PCam-layout HDF5 reader, fingerprint, embedded digits set, make_dataset
    data_cli     python -m trainables.data {download, digits, check}
    pcam_download, synthetic, stain, augment, loader (block reads, transforms on the device)

Evaluation: evaluate (a split's predictions and metrics, costs), metrics (every metric formula),
bootstrap (stratified resampling, intervals), evaluate_cli (python -m trainables.evaluate), latency.

Shared with the driver: cache/ (keys, stores, leases, StageCache), refs (cache: references),
storage (is_uri, atomic_write, the Ray Train folder layout), report_keys (keys of a trial's
report), inputs (missing data or weights).
"""
