"""Reading finished or running runs: status, export, metrics, the gallery, failure reasons."""
