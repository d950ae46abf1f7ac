"""Task families: what differs between class-conditional generation, text conditioning, joint
generation / segmentation and video (checks, model config, conditions, generation inputs, scoring,
preview).
"""
