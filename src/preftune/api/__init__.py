"""preftune.api"""
