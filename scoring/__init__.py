"""Offline scoring: a file of headlines in, the same rows with predictions out, on the serving Predictor."""
