"""The data a trial reads: PCam-layout HDF5 splits and the embedded digits set.

    datasets       HDF5ImageDataset (the PCam-layout reader), the data fingerprint, the digits writer,
                   make_dataset (a config's split, stain-normalised, resized, augmented)
    loader         block reads and the augmentations run on the device (training loaders)
    augment        dihedral flips/rotations, colour jitter, the histology recipe
    stain          Macenko / Reinhard stain normalisation
    synthetic      a generated set in PCam's layout (smoke runs)
    pcam_download  PCam from its public mirror, checksummed
    inputs         a trial's data and weights checked before it starts (one line naming the file)
    cli            python -m trainables.data {download, digits, check}

Imports trainables.config and nothing else of trainables, no Ray, no tune: every other part reads
data through make_dataset and the loaders.
"""
