"""The artifact contract shared by training and serving: text pipeline, model definition, artifact I/O.

Training writes artifacts through it and the service reads them through it; neither half
imports the other.
"""
