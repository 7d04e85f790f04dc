"""Smoothness of attention as N grows (Castin, Ablin & Peyré, ICML 2024): tables, findings and figures
from the ``smoothness`` bench records.

Input: the report's frame (:mod:`lra.report.frame`); only ``kind == "bench"``, ``mode == "smoothness"``
rows are read. A record is one (variant, input pattern, radius R, causal, N) case with the local
Lipschitz constant ``lipschitz`` (L, the spectral norm of the attention map's Jacobian at the input)
and the closed-form softmax bound at the same input (``softmax_bound``, ``bound_ratio = L / bound``).
Records without a ``pattern`` (older ones) count as ``random``.

Data flows one way through the package::

    rows.py      smoothness_rows: those rows with ``label`` (variant, " (causal)" when causal), ``pattern``,
                 ``radius``, ``causal``, ``sweep`` normalised; the patterns, their order, slope (alpha);
                 how exponents, numbers, radii and data settings read
    tables.py    exponent_table: alpha of ``L ~ N^alpha`` per variant x pattern at each pattern's main
                 setting (the radius sweep left out); exponent_display: as display strings with the
                 worst-case growth class and the largest L / softmax bound; radius_table: alpha per
                 variant x pattern x radius over the radius sweep
    findings.py  findings: the section's sentences, every number read from the records
    figures.py   pattern_figure, radius_figure, smoothness_figures: L vs N per pattern (log-log, alpha
                 per variant, the softmax bound), alpha vs R

alpha is the least-squares slope of log L against log N over every measured N (the median L per N);
O(rows) per table. :mod:`lra.report.side_pages` shows the tables and findings, :mod:`lra.report.figures`
draws the figures.
"""
from .figures import pattern_figure, radius_figure, smoothness_figures
from .findings import coinciding_labels, findings
from .rows import (BOUND_VARIANT, CITATION, COINCIDE_RTOL, PATTERN_NAMES, PATTERNS, label_order, pattern_order, slope,
                   smoothness_rows)
from .tables import (GROWTH, RATIO_COLUMN, RATIO_NOTE, exponent_display, exponent_table, growth_class, growth_legend,
                     radius_table)

__all__ = ["CITATION", "PATTERNS", "PATTERN_NAMES", "BOUND_VARIANT", "COINCIDE_RTOL", "GROWTH", "RATIO_COLUMN",
           "RATIO_NOTE", "smoothness_rows", "exponent_table", "exponent_display", "radius_table", "growth_class",
           "growth_legend", "findings", "pattern_figure", "radius_figure", "smoothness_figures", "coinciding_labels",
           "slope", "label_order", "pattern_order"]
