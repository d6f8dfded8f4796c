"""preftune.service"""
