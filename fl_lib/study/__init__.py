"""The study layer, what the lessons and the report use: lesson parameters and folders (lesson),
grids of runs as one table (sweep), measures read off runs (measures), leakage attacks in the
results cache (attacks), partition and quantization analysis (analysis), plots, widgets, the
paper's traffic table (traffic), model mixing (mixing) and the report (report)."""
