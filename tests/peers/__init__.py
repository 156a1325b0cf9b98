"""Peer Dice losses that do not install here, kept as small pure-torch modules for conformance tests.

See README.md in this folder for where each one comes from and under which license.
"""
