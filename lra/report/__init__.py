"""Result records -> a report a researcher reads in five minutes: the answer first, side pages one click
away, figures that tell variants apart, and a lean tidy CSV.

The report reads records only (through :func:`lra.results.load`, or a previous report's ``tidy.csv``)
and writes into one output folder: the main page ``report.md`` (``name=REPORT.md`` for the committed
one) and its side pages ``report-<page>.md``, the same as HTML (SVG figures, sortable tables, a print
stylesheet), ``tidy.csv`` (one row per record) with its data dictionary ``tidy.md``, ``compare.csv``
when a baseline was given, and ``figures/*.png`` + ``*.svg`` linked by relative paths. Library entry
point: :func:`build_report`; command line: ``lra-report`` (:func:`main`, also ``python -m lra.report``).

Data flows one way through the package::

    frame.py            records -> one tidy DataFrame (load_frame, normalize, tidy); dictionary.py: its columns
    tables.py           DataFrame -> DataFrame of display strings: op-level, accuracy, overhead, failures
    questions.py        the main page's time/memory tables (sorted, best in bold, relative column, gaps explained)
    accuracy.py         Table 1 blocks per protocol: accuracy and time per step, the learned rule and marks
    fits.py             exponents with their spread, crossovers (>= 3 lengths), ties (derived_numbers)
    answer.py           "Which attention?": per device and length;  causal.py: the decoder answer
    recall.py           "Which attention recalls?" (MQAR vs state size);  peers.py: ours vs public code
    compare.py          against a baseline: every (case, metric) pair and its regression flag
    provenance.py       devices, threads and load, versions
    smoothness/         smoothness rows, tables, findings and figures
    palette.py          12 colour-blind-safe colours + markers, one per variant everywhere
    plotting.py         seaborn/matplotlib plumbing: ticks, bounded axes, direct labels
    lines.py, summary_figure.py, curves.py   the figures;  figures.py: which figure per key and device
    document.py         pages: markdown, HTML (SVG, sortable tables, print CSS), numbered figures
    main_page.py        the main page;  side_pages.py, records_pages.py: the side pages
    build.py            build_report: the pages in order, the files written;  cli.py: lra-report
    labels.py, paper.py names, orders, number formats; the LRA paper's published numbers

To add a table: a DataFrame -> DataFrame function (tested on a frame built in the test) and one call in
the page that shows it. To add a figure: a function returning ``(path or None, note)``, a ``_<kind>``
method and a caption in :mod:`lra.report.figures`, and one ``place`` call in a page.
"""
from .answer import accuracy_evidence, answer_table, exact_variants, step_times
from .build import build_report, page_names, rebuild_command
from .cli import main
from .compare import COMPARE_KEYS, COMPARE_METRICS, HIGHER_IS_BETTER, LOWER_IS_BETTER, compare_frames
from .document import markdown_table
from .fits import crossover_length, derived_numbers, fit_exponent, fit_power, tied
from .frame import NoRecordsError, load_frame, normalize, tidy
from .labels import MODE_NAMES, OP_MODES, TASK_NAMES, TASKS, VARIANT_ORDER, length_label, memory_note, task_order, variant_order
from .paper import PAPER_CITATION, PAPER_LENGTHS, PAPER_NAMES, PAPER_TABLE1, paper_table
from .plotting import coinciding
from .provenance import host_table
from .summary_figure import summary_points
from .tables import (OVERHEAD_COLUMNS, accuracy_table, case_table, flops_conventions, gap_table, overhead_table,
                     speed_source, speed_table)

__all__ = [
    "build_report", "main", "rebuild_command", "page_names", "load_frame", "normalize", "tidy", "NoRecordsError",
    "accuracy_table", "gap_table", "paper_table", "speed_source", "speed_table", "case_table", "overhead_table",
    "flops_conventions", "fit_exponent", "fit_power", "tied", "crossover_length", "derived_numbers", "compare_frames",
    "markdown_table", "answer_table", "accuracy_evidence", "exact_variants", "step_times", "summary_points",
    "host_table", "coinciding", "variant_order", "task_order", "length_label", "memory_note",
    "TASKS", "TASK_NAMES", "VARIANT_ORDER", "OP_MODES", "MODE_NAMES", "PAPER_CITATION", "PAPER_TABLE1",
    "PAPER_LENGTHS", "PAPER_NAMES", "COMPARE_KEYS", "COMPARE_METRICS", "LOWER_IS_BETTER", "HIGHER_IS_BETTER",
    "OVERHEAD_COLUMNS",
]
