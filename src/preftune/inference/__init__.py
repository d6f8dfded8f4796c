"""preftune.inference"""
