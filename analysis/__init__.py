"""dicebench analysis: synthetic experiments, results storage, figures, the report and the CLI."""
