"""preftune.api.routes"""
