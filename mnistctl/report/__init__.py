"""Reading runs back, without TensorFlow where it can: ``compare``'s table, the dashboard and
its plots, and ``eval``'s report (which restores a checkpoint)."""
