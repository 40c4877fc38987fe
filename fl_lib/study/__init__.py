"""The study layer, what the lessons and the report use: lesson parameters and folders (lesson),
measures read off runs (measures), partition and quantization analysis (analysis), plots,
widgets, the paper's traffic table (traffic), model mixing (mixing) and the report (report)."""
