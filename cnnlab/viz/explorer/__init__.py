"""The explorer: what each layer of a trained network computed, in one offline HTML page.

- :mod:`cnnlab.viz.explorer.data`: the model and a few images as the page's JSON (float32
  weights and layer inputs, base64);
- :mod:`cnnlab.viz.explorer.page`: the HTML (a report section, or ``RUN/explorer.html``);
- :mod:`cnnlab.viz.explorer.live`: ``RUN/live.js``, rewritten by ``cnnlab train`` for the live
  view;
- ``engine.js`` (forward and backward of every layer in the browser), ``prepare.js`` (an upload
  prepared as ``cnnlab predict`` prepares it), ``explorer.js`` (the page), ``live_view.js``.

See docs/explorer.md.
"""

from cnnlab.viz.explorer.data import explorer_payload, run_payload
from cnnlab.viz.explorer.live import read_live
from cnnlab.viz.explorer.page import build_explorer_page, explorer_section, write_explorer_page

__all__ = ["build_explorer_page", "explorer_payload", "explorer_section", "read_live",
           "run_payload", "write_explorer_page"]
