"""Prefect flows: `rpo` (one subject, deployment rpo/subject) and `rpo-batch` (many subjects, rpo-batch/overnight)."""
