"""Front door: pictures of retrieval results (worst queries with their top-k and missed relevant items)."""

from lookalike.viz.retrieval_plots import load_image_array, plot_retrieval, plot_worst_queries

__all__ = ["load_image_array", "plot_retrieval", "plot_worst_queries"]
