"""preftune.cli"""
