"""What the search trains: data sets, the search space, device-resident training, the
Optuna objective.

Layout, from the top: ``objective`` (the Optuna objective: suggest, build, train, report,
return) and ``recipe`` (params -> model -> trained, shared with retraining); ``space``
(the search space file); ``datasets/`` (one module per data set, each declaring its
record, and the registry that finds them); ``training/`` (the trainer, augmentation,
torch's fused kernels, the device); ``data`` (splits and records), ``errors``,
``safe_joblib``. This package imports ``models`` and never ``search``.

Importing the package, ``errors`` or the ``datasets`` registry loads no torch (the
command line lists the data sets, and the read-only commands run, without it).
"""
