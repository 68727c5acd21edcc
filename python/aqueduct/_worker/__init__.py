"""A worker process: its first steps in a fresh interpreter and its
``__main__`` (``bootstrap``), and its loop over its step's batches
(``loop``). It never imports the parent's runtime."""
