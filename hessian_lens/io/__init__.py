"""Safe file reading: bounded I/O, no unpickling, .pt2 archives checked member by member.

files (bounded atomic I/O), pickles (read without unpickling), torchfiles (weights_only),
pt2 and pt2_graph (a .pt2 is validated before torch.export sees it).
"""
