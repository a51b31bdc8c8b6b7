"""The dashboard's Streamlit building blocks, one module per concern.

``common`` (page setup, error guard, run / analysis / epoch pickers), ``reads`` (cached,
read-only loading), and one renderer per view: ``home``, ``interactions``, ``blockdiag``,
``inspect``, ``optimizer``, ``paper``. The page list is ``app.py`` (``st.navigation``); the
pages in ``views/`` only lay these out; the math lives in the package and every figure
comes from :mod:`hessian_lens.plots`.
"""
