"""The only code that talks to MLflow: one experiment per study, a parent run per invocation, a child
run per trial.

MLflow's defaults for our processes, set here before any module of this package imports MLflow
(each unless the user set it): no usage telemetry (on its first tracked call MLflow would fetch a
config from its servers and post usage records there, a network call at run time, and write an
installation id under ``~/.config``, outside the runs root and the cache; MLflow reads the
variable once, at its own import), and no progress bar per artifact download (a report downloads
many).
"""

import os

MLFLOW_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

for _key, _value in MLFLOW_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
