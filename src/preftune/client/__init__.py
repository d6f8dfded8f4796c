"""preftune.client"""
