"""Reading finished or running runs: status, export, metrics, failure reasons."""
