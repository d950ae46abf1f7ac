"""The only code that talks to Ray: Tune dispatch of a study trials and Ray Train data-parallel
training.
"""
