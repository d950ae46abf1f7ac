"""Tokenizers: images <-> token grids (grey levels, learned VQ, pretrained VQ checkpoints). A tokenizer
never imports a dataset.
"""
