"""preftune.store"""
