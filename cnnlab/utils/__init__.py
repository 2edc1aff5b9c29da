"""Small helpers every layer of cnnlab shares; each imports nothing of cnnlab but ``errors``.

- :mod:`cnnlab.utils.validation`: one validator per kind of argument (positive ints, pairs,
  float arrays, image batches), one message each;
- :mod:`cnnlab.utils.fileio`: ``atomic_write`` / ``write_json``, so a file a user keeps is
  never half-written;
- :mod:`cnnlab.utils.formatting`: ``format_shape``, how every message writes a shape;
- :mod:`cnnlab.utils.progress`: the progress bar (terminal, notebook, log file).
"""
