"""Ablation studies: a sweep file expanded into points, each checked and compiled before any trains, trained by an
executor into run directories keyed by the hash of the point's resolved spec, and reported across seeds.

``config.py`` (the sweep file's model), ``points.py`` (reading and expansion), ``plan.py`` (check, compile,
measure), ``run.py`` (the sweep directory, its state on disk and the local executor), ``report.py`` (tables and
plots). Nothing here imports torch until a point compiles or trains.
"""
