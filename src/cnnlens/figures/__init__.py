"""Drawing: result values to matplotlib figures (on ``matplotlib.figure.Figure``, never pyplot).

One module per family; each imports :mod:`cnnlens.viz` and :mod:`cnnlens.registry` only (result types appear
in annotations alone). A result's ``figure()`` imports its drawing here when called, so no import circle; the
report, the CLI and the explorer draw through the same functions, so a map looks the same everywhere.
"""
