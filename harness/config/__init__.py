"""Configuration: the typed trial config, study files, named recipes. Validation here is complete: a
config that would fail later is refused here.
"""
