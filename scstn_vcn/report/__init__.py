"""The evaluation report: a folder with an offline HTML page where every query of an evaluation can be
looked at (its ranked list, AP and first-match rank, worst first, filtered by camera and identity), with
the results table, the CMC curves, rank-1 by camera pair and the SC-STN alignment; one model, or two
compared query by query. Written from the streaming evaluation's per-query records
(scstn_vcn.metrics.per_query), so its numbers are the evaluation's.

    write_report(folder, [ReportRun(...)], query_items, gallery_items)   -> path of index.html
    read_report(folder)                                                  -> the data of a report folder
"""

from .records import ReportError
from .writer import LoadedRun, ReportRun, read_report, write_report

__all__ = ["LoadedRun", "ReportError", "ReportRun", "read_report", "write_report"]
