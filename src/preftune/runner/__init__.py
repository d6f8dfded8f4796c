"""preftune.runner"""
