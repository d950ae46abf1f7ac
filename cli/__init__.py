"""run_study.py's commands that join harness/ and reports/ (harness/ never imports reports/)."""

EXIT_TRIALS_FAILED, EXIT_LOCKED, EXIT_UNWRITABLE = 3, 4, 5  # run_study.py's exit codes (its docstring)
