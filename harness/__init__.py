"""Experiment machinery: data, studies, dispatch, evaluation and tracking."""
