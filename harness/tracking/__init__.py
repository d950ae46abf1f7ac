"""The only code that talks to MLflow: one experiment per study, a parent run per invocation, a child
run per trial.

MLflow's usage telemetry is off in our processes unless the user set ``MLFLOW_DISABLE_TELEMETRY``
themselves: on its first tracked call MLflow would fetch a config from its servers and post usage
records there (a network call at run time), and write an installation id under ``~/.config``
(outside the runs root and the cache). Set here, before any module of this package imports MLflow,
which reads the variable once, at its own import.
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
