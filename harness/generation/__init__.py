"""Generation: a checkpoint or a data baseline -> token samples (samplers built from models/, batched,
seeded).
"""
