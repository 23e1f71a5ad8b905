"""Prefect tasks: one thin task per pipeline stage, each running its DVC stage in the run's workspace."""
