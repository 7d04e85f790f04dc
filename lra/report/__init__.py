"""Result records -> a markdown report that answers "which attention?" first, seaborn figures and a tidy CSV.

The report reads records only (through :func:`lra.results.load`, or a previous report's ``tidy.csv``)
and writes into one output folder: ``report.md`` (``name=REPORT.md`` for the committed one), the same
as ``report.html``, ``tidy.csv`` (one row per record), ``compare.csv`` when a baseline was given, and
``figures/*.png`` (+ ``.svg``) linked by relative paths. Library entry point: :func:`build_report`;
command line: ``lra-report`` (:func:`main`, also ``python -m lra.report``).

Data flows one way through the package::

    frame.py            records -> one tidy DataFrame (load_frame, normalize, tidy)
    tables.py           DataFrame -> DataFrame of display strings: accuracy, speed, op-level, overhead, failures
    fits.py             exponents, crossovers, largest N that fit (derived_numbers)
    answer.py           "Which attention?": per device and length, from the frames above
    compare.py          against a baseline: every (case, metric) pair and its regression flag
    provenance.py       devices, threads and load, versions
    smoothness/         smoothness rows, tables, findings and figures (the place to add more of them)
    plotting.py         seaborn/matplotlib plumbing;  lines.py: line figures vs N
    summary_figure.py   the one-figure summary: accuracy vs time per step, memory as size (LRA Figure 3)
    figures.py          which evidence figures are drawn, per device
    document.py         markdown (DataFrame.to_markdown) and the HTML rendered from it
    sections.py         the answer and evidence sections;  appendix.py: failures, provenance, comparison
    build.py            build_report: the sections in order, the files written
    cli.py              lra-report
    labels.py, paper.py names, orders, number formats; the LRA paper's published numbers

To add a table: a DataFrame -> DataFrame function in ``tables.py`` (tested on a frame built in the test),
and one call in the section of ``sections.py`` that shows it. To add a figure: a function returning
``(path or None, note)`` and one line in :func:`lra.report.figures.make_figures`.
"""
from .answer import accuracy_evidence, answer_table, exact_variants, step_times
from .build import build_report, rebuild_command
from .cli import main
from .compare import COMPARE_KEYS, COMPARE_METRICS, HIGHER_IS_BETTER, LOWER_IS_BETTER, compare_frames
from .document import markdown_table
from .figures import make_figures
from .fits import crossover_length, derived_numbers, fit_exponent
from .frame import NoRecordsError, load_frame, normalize, tidy
from .labels import MODE_NAMES, OP_MODES, TASK_NAMES, TASKS, VARIANT_ORDER, length_label, memory_note, task_order, variant_order
from .paper import PAPER_CITATION, PAPER_LENGTHS, PAPER_NAMES, PAPER_TABLE1, paper_table
from .plotting import coinciding
from .provenance import host_table
from .summary_figure import summary_points
from .tables import (OVERHEAD_COLUMNS, accuracy_table, case_table, flops_conventions, gap_table, overhead_table,
                     speed_source, speed_table)

__all__ = [
    "build_report", "main", "rebuild_command", "load_frame", "normalize", "tidy", "NoRecordsError",
    "accuracy_table", "gap_table", "paper_table", "speed_source", "speed_table", "case_table", "overhead_table",
    "flops_conventions", "fit_exponent", "crossover_length", "derived_numbers", "compare_frames", "make_figures",
    "markdown_table", "answer_table", "accuracy_evidence", "exact_variants", "step_times", "summary_points",
    "host_table", "coinciding", "variant_order", "task_order", "length_label", "memory_note",
    "TASKS", "TASK_NAMES", "VARIANT_ORDER", "OP_MODES", "MODE_NAMES", "PAPER_CITATION", "PAPER_TABLE1",
    "PAPER_LENGTHS", "PAPER_NAMES", "COMPARE_KEYS", "COMPARE_METRICS", "LOWER_IS_BETTER", "HIGHER_IS_BETTER",
    "OVERHEAD_COLUMNS",
]
